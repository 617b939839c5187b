"""DiPmark through the engines: transformers' generate, the transformers logits processor and
the llama.cpp adapter give ``process``'s distribution, and the mark is found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dipmark_helpers import V, make
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distillmark.verify import detect_ids
from distillmark.watermark import BUILTIN_SMOLLM2, hf, load_tokenizer, new_spec, scheme_for
from distillmark.watermark.llamacpp import LlamaCppWatermark
from distillmark.watermark.tokenizer import builtin_tokenizer_path

# -- transformers' generate ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm() -> hf.LoadedModel:
    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                  eos_token="<|im_end|>", pad_token="<|im_end|>")
    return hf.LoadedModel(model=LlamaForCausalLM(cfg).eval(), tokenizer=tok, source="tiny")


def test_hf_generate_is_detected_and_another_key_is_not(tiny_lm: hf.LoadedModel) -> None:
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    scheme = scheme_for(new_spec("dipmark", {}, info, secret=bytes(range(5, 37))))
    other = scheme_for(new_spec("dipmark", {}, info, secret=bytes(range(50, 82))))
    outs = hf.generate(tiny_lm, ["Write a poem about the sea and the sky", "Tell me a joke"],
                       scheme=scheme, max_new_tokens=120, temperature=1.0, seed=0)
    for out in outs:
        assert len(out.completion_ids) >= 80
        ids = np.array(out.prompt_ids + out.completion_ids)
        r = detect_ids(ids, scheme, prompt_len=len(out.prompt_ids))
        assert r.pvalue < 1e-6, r
        assert detect_ids(ids, other, prompt_len=len(out.prompt_ids)).pvalue > 1e-4
    plain = hf.generate(tiny_lm, ["Write a poem about the sea and the sky"], scheme=None,
                        max_new_tokens=120, temperature=1.0, seed=0)[0]
    ids = np.array(plain.prompt_ids + plain.completion_ids)
    assert detect_ids(ids, scheme, prompt_len=len(plain.prompt_ids)).pvalue > 1e-4


# -- adapters ----------------------------------------------------------------------------------------

def test_hf_processor_equals_process() -> None:
    d = make(context_width=2, n_lists=32)
    rng = np.random.default_rng(4)
    proc = hf.WatermarkLogitsProcessor(d, temperature=0.8, top_p=0.9)
    ids = torch.tensor([[2, 2, 50, 60, 70], [11, 12, 13, 14, 15]])  # row 0 left-padded
    for step in range(3):
        scores = torch.from_numpy(rng.normal(size=(2, V + 8)).astype(np.float32))
        want = d.process(scores.numpy()[:, :V], ids.numpy(), prompt_width=5, temperature=0.8,
                         top_p=0.9)
        got = proc(ids, scores.clone())
        np.testing.assert_array_equal(got.numpy()[:, :V], want.astype(np.float32))
        assert np.isneginf(got.numpy()[:, V:]).all()  # padded columns never sampled
        ids = torch.cat([ids, ids[:, 2:3]], dim=1)


def test_llamacpp_adapter_equals_process() -> None:
    d = make(context_width=2, n_lists=32)
    rng = np.random.default_rng(5)
    proc = LlamaCppWatermark(d, temperature=1.2, top_p=0.95)
    prompt = [5, 6, 7, 8]
    for ids in (prompt, prompt + [9], prompt + [9, 7, 8]):
        scores = rng.normal(size=V).astype(np.float32)
        got = proc(np.array(ids, dtype=np.intc), scores.copy())
        want = d.process(scores[None, :], np.array([ids]), prompt_width=len(prompt),
                         temperature=1.2, top_p=0.95)[0]
        np.testing.assert_array_equal(got, want)
