"""The transformers adapter: the logits processor equals the numpy reference, generation with it
is detected (and without it is not), the prompt is never scored, and models load offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from distillmark.verify import Detector, detect_ids
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    GreenList,
    InputError,
    ModelNotFoundError,
    ParameterError,
    TokenizerInfo,
    hf,
    load_tokenizer,
    new_spec,
    scheme_for,
)
from distillmark.watermark.tokenizer import builtin_tokenizer_path, fingerprint

#: Fixed key of this module (every test here is deterministic).
HF_SECRET = bytes(range(7, 39))
VOCAB = 49152
IM_END = "<|im_end|>"


def make_scheme(secret: bytes = HF_SECRET, **params: Any) -> GreenList:
    """A greenlist scheme for the builtin SmolLM2 tokenizer with ``params``."""
    return scheme_for(new_spec("greenlist", params, load_tokenizer(BUILTIN_SMOLLM2)[1],
                               secret=secret))


def make_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """The real builtin SmolLM2 tokenizer as a transformers tokenizer."""
    return PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                   eos_token=IM_END, pad_token=IM_END,
                                   padding_side=padding_side)


@pytest.fixture(scope="module")
def hf_tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    """A random-init 2-layer Llama over the SmolLM2 vocabulary (near-uniform next-token
    distributions: the watermark's effect on them is easy to predict)."""
    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


# --------------------------------------------------------------------------------------------
# The processor equals GreenList.bias


PROCESSOR_CONFIGS = [
    pytest.param({"context_width": 0}, id="h0"),
    pytest.param({"context_width": 1}, id="h1"),
    pytest.param({"context_width": 2, "combine": "hash"}, id="h2-hash"),
    pytest.param({"context_width": 2, "combine": "min"}, id="h2-min"),
    pytest.param({"context_width": 4, "combine": "hash"}, id="h4-hash"),
    pytest.param({"context_width": 4, "combine": "min"}, id="h4-min"),
    pytest.param({"context_width": 3, "seeding": "selfhash", "combine": "min"}, id="selfhash3"),
    pytest.param({"context_width": 3, "seeding": "selfhash", "combine": "hash"},
                 id="selfhash3-hash"),
]


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("params", PROCESSOR_CONFIGS)
def test_processor_equals_numpy_bias(params: dict[str, Any], batch: int) -> None:
    scheme = make_scheme(delta=2.5, **params)
    proc = hf.WatermarkLogitsProcessor(scheme)
    gen = torch.Generator().manual_seed(100 * batch + scheme.window)
    for step in range(3):  # several steps: the processor's cached tables must stay right
        ids = torch.randint(0, VOCAB, (batch, 6 + step), generator=gen)
        scores = torch.randn(batch, VOCAB, generator=gen)
        expected = scheme.bias(scores.numpy(), ids.numpy())
        before = scores.clone()
        got = proc(ids, scores.clone())
        assert got.shape == (batch, VOCAB) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
        # the bias is really there: about gamma * V columns per row (lefthash) or a few of the
        # top-k candidates (selfhash) moved up by exactly delta
        moved = (got - before).numpy()
        assert set(np.round(np.unique(moved), 4)) == {0.0, 2.5}
        n_moved = (moved > 0).sum(axis=1)
        if params.get("seeding") == "selfhash":
            assert (n_moved <= 40).all() and n_moved.sum() > 0
        else:
            assert np.all(np.abs(n_moved / VOCAB - 0.25) < 0.02)


@pytest.mark.parametrize("params", PROCESSOR_CONFIGS[1::2])
def test_processor_leaves_padded_logit_columns_alone(params: dict[str, Any]) -> None:
    """Models whose logits are wider than the tokenizer (padded embeddings): columns >= V are
    never touched, the others get exactly the reference bias."""
    scheme = make_scheme(**params)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (4, 9), generator=gen)
    scores = torch.randn(4, VOCAB + 64, generator=gen)
    expected = scheme.bias(scores.numpy(), ids.numpy())
    got = hf.WatermarkLogitsProcessor(scheme)(ids, scores.clone())
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
    assert torch.equal(got[:, VOCAB:], scores[:, VOCAB:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("params", PROCESSOR_CONFIGS[:6])
def test_processor_keeps_half_precision_dtype(params: dict[str, Any], dtype: torch.dtype) -> None:
    """Half precision takes the all-torch path (as on a GPU): rows hashed in torch, table
    gathered as a tensor; the same bias as the numpy reference, in the logits' dtype."""
    scheme = make_scheme(**params)
    gen = torch.Generator().manual_seed(8)
    ids = torch.randint(0, VOCAB, (3, 5), generator=gen)
    scores = torch.randn(3, VOCAB, generator=gen).to(dtype)
    got = hf.WatermarkLogitsProcessor(scheme)(ids, scores.clone())
    assert got.dtype == dtype
    expected = scheme.bias(scores.float().numpy(), ids.numpy())
    np.testing.assert_allclose(got.float().numpy(), expected, rtol=0, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("params", [{"context_width": 1, "n_lists": 65536},
                                    {"context_width": 2, "n_lists": 8192}], ids=["h1", "h2"])
def test_processor_with_many_lists(params: dict[str, Any], dtype: torch.dtype) -> None:
    """A table too large to hold (65,536 lists x 49,152 tokens): both the numpy (float32 CPU)
    and the torch path add the rows they meet, the same bias as the numpy reference, and no
    whole table is built."""
    scheme = make_scheme(**params)
    assert not scheme.dense
    gen = torch.Generator().manual_seed(9)
    ids = torch.randint(0, VOCAB, (3, 5), generator=gen)
    scores = torch.randn(3, VOCAB, generator=gen).to(dtype)
    got = hf.WatermarkLogitsProcessor(scheme)(ids, scores.clone())
    expected = scheme.bias(scores.float().numpy(), ids.numpy())
    np.testing.assert_allclose(got.float().numpy(), expected, rtol=0,
                               atol=0 if dtype == torch.float32 else 0.05)
    assert "table" not in scheme.__dict__ and "delta_table" not in scheme.__dict__


def test_processor_with_fewer_than_h_tokens_is_a_no_op() -> None:
    scheme = make_scheme(context_width=4)
    ids = torch.tensor([[5, 6, 7]])
    scores = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(3))
    got = hf.WatermarkLogitsProcessor(scheme)(ids, scores.clone())
    assert torch.equal(got, scores)
    np.testing.assert_array_equal(scheme.bias(scores.numpy(), ids.numpy()), scores.numpy())


def test_processor_rejects_bad_arguments() -> None:
    with pytest.raises(ParameterError, match=r"^`scheme` must be a distillmark scheme, got str$"):
        hf.WatermarkLogitsProcessor("greenlist")  # type: ignore[arg-type]
    proc = hf.WatermarkLogitsProcessor(make_scheme())
    with pytest.raises(ParameterError, match=r"^logits width 1000 is smaller than the spec's "
                                             r"vocab_size 49152 \(wrong model or tokenizer\?\)$"):
        proc(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 1000))


@pytest.mark.parametrize("params", [
    pytest.param({"context_width": 1}, id="h1"),
    pytest.param({"context_width": 2}, id="h2"),
    pytest.param({"context_width": 4, "combine": "min"}, id="h4-min"),
    pytest.param({"context_width": 3, "seeding": "selfhash", "combine": "min"}, id="selfhash3"),
])
def test_processor_left_padded_batch_equals_rows_alone(params: dict[str, Any]) -> None:
    scheme = make_scheme(**params)
    proc = hf.WatermarkLogitsProcessor(scheme)
    rng = np.random.default_rng(11)
    prompts = [rng.integers(3, VOCAB, size=n) for n in (4, 9, 15, 6)]
    width = max(p.size for p in prompts)
    pad = 2
    batch = torch.tensor(np.stack([np.concatenate([np.full(width - p.size, pad), p])
                                   for p in prompts]))
    scores = torch.from_numpy(rng.standard_normal((len(prompts), VOCAB)).astype(np.float32))
    got = proc(batch, scores.clone())
    for i, p in enumerate(prompts):
        alone = proc(torch.tensor(p)[None, :], scores[i:i + 1].clone())
        torch.testing.assert_close(got[i:i + 1], alone, rtol=0, atol=1e-6)
        assert not torch.equal(alone, scores[i:i + 1])


# --------------------------------------------------------------------------------------------
# Generation with model.generate


def _sample(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, prompts: list[str],
            processors: list[Any], *, seed: int, n_new: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids without pads, completion ids) per prompt, sampled with ``processors``."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(**enc, logits_processor=processors, do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0, max_new_tokens=n_new,
                             min_new_tokens=n_new, pad_token_id=tok.pad_token_id)
    width = enc["input_ids"].shape[1]
    rows = []
    for row, mask in zip(out.tolist(), enc["attention_mask"].tolist()):
        prompt = [t for t, m in zip(row[:width], mask) if m]
        rows.append((prompt, row[width:]))
    return rows


GEN_PROMPTS = [
    "Explain why the sky is blue.",
    "Write a poem about the sea",
    "What is two plus two?",
    "Tell me a story about a lighthouse keeper who finds a message in a bottle.",
    "Hi",
    "List three prime numbers and explain why each is prime.",
    "Summarise the plot of Hamlet",
    "Why do cats purr?",
    "Describe a sunset over the mountains in three sentences.",
    "Translate 'good morning' into French",
]


def test_generate_with_processor_is_detected_and_without_is_not(
        tiny_model: LlamaForCausalLM, hf_tok: PreTrainedTokenizerFast) -> None:
    scheme = make_scheme(delta=4.0)
    marked = _sample(tiny_model, hf_tok, GEN_PROMPTS, [hf.WatermarkLogitsProcessor(scheme)],
                     seed=0, n_new=100)
    plain = _sample(tiny_model, hf_tok, GEN_PROMPTS, [], seed=0, n_new=100)
    assert len(marked) == len(plain) == len(GEN_PROMPTS)

    def results(rows: list[tuple[list[int], list[int]]]) -> list[Any]:
        out = []
        for prompt, comp in rows:
            assert len(comp) == 100 and hf_tok.pad_token_id not in comp
            out.append(detect_ids(np.array(prompt + comp), scheme, prompt_len=len(prompt)))
        return out

    marked_r, plain_r = results(marked), results(plain)
    assert all(r.n_tokens == 100 for r in marked_r + plain_r)
    assert sum(r.pvalue < 1e-6 for r in marked_r) >= 0.9 * len(marked_r)
    assert np.mean([r.score_mean for r in marked_r]) > 0.8  # ~0.25 e^4 / (0.25 e^4 + 0.75)
    assert not any(r.is_watermarked(1e-3) for r in plain_r)
    assert abs(np.mean([r.score_mean for r in plain_r]) - 0.25) < 0.08


def _green_chain(scheme: GreenList, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` token ids, each green in the list chosen by the ``h`` tokens before it."""
    h = scheme.context_width
    ids = [int(t) for t in rng.integers(1000, 20000, size=h)]
    while len(ids) < n:
        row = int(scheme.rows(np.array(ids[len(ids) - h:]))) if h else 0
        green = np.flatnonzero(scheme.table[row, 1000:20000]) + 1000
        ids.append(int(rng.choice(green)))
    return ids


@pytest.mark.parametrize("h", [1, 2])
def test_prompt_is_never_scored(h: int, tiny_model: LlamaForCausalLM,
                                hf_tok: PreTrainedTokenizerFast) -> None:
    scheme = make_scheme(context_width=h, n_lists=256)  # _green_chain reads the whole table
    rng = np.random.default_rng(5 + h)
    prompt = _green_chain(scheme, 40, rng)
    assert scheme.green_indicators(np.array(prompt)).all()  # all green: it would count
    torch.manual_seed(h)
    with torch.inference_mode():
        out = tiny_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 40,
                                  dtype=torch.long), do_sample=True, top_k=0, max_new_tokens=60,
                                  min_new_tokens=60, pad_token_id=2)
    ids = np.array(out[0].tolist())
    comp = ids[40:]
    assert comp.size == 60

    # the count over completion tokens only, by hand: context = the h tokens before each one
    # (the prompt's last tokens for the first ones), distinct (row, token) tuples counted once
    tuples = {(int(scheme.rows(ids[i - h:i])), int(ids[i])) for i in range(40, ids.size)}
    expected_green = sum(bool(scheme.table[r, t]) for r, t in tuples)

    r = detect_ids(ids, scheme, prompt_len=40)
    assert (r.n_tokens, r.n_scored, r.statistic) == (60, len(tuples), expected_green)
    assert not r.is_watermarked(1e-3)
    # scoring the prompt too would have added its ~40 green tuples and "found" a watermark
    whole = detect_ids(ids, scheme, prompt_len=0)
    assert whole.statistic >= expected_green + 40 - h - 1
    assert whole.is_watermarked(1e-3)


# --------------------------------------------------------------------------------------------
# hf.generate


HF_PROMPTS = ["Hi", "Write a long poem about the sea and the sky and the ships upon it",
              "Why is the sky blue?"]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_hf_generate_batches_prompts_of_different_lengths(
        padding_side: str, tiny_model: LlamaForCausalLM) -> None:
    """Every completion is watermarked in the context of its own prompt (with a huge delta each
    completion token is green after the tokens really before it), pads never leak into
    prompt_ids or completion_ids, and whatever padding side the tokenizer came with."""
    tok = make_tokenizer(padding_side)
    lm = hf.LoadedModel(model=tiny_model, tokenizer=tok, source="tiny")
    scheme = make_scheme(delta=30.0)
    outs = hf.generate(lm, HF_PROMPTS, scheme=scheme, max_new_tokens=12, temperature=1.0,
                       batch_size=2, seed=3)
    assert [o.prompt for o in outs] == HF_PROMPTS
    for o in outs:
        assert list(o.prompt_ids) == tok(o.prompt, add_special_tokens=False)["input_ids"]
        assert 1 <= len(o.completion_ids) <= 12
        assert tok.pad_token_id not in o.completion_ids
        assert o.text == tok.decode(list(o.completion_ids), skip_special_tokens=True)
        ids = np.array(o.prompt_ids + o.completion_ids)
        r = detect_ids(ids, scheme, prompt_len=len(o.prompt_ids), min_scored=1)
        assert r.n_tokens == len(o.completion_ids)
        assert r.n_scored >= 1 and r.statistic == r.n_scored


def test_hf_generate_unwatermarked_and_greedy(tiny_model: LlamaForCausalLM,
                                              hf_tok: PreTrainedTokenizerFast) -> None:
    lm = hf.LoadedModel(model=tiny_model, tokenizer=hf_tok, source="tiny")
    a = hf.generate(lm, HF_PROMPTS, scheme=None, max_new_tokens=8, temperature=0.0)
    b = hf.generate(lm, HF_PROMPTS[::-1], scheme=None, max_new_tokens=8, temperature=0.0,
                    batch_size=1)
    assert [o.completion_ids for o in a] == [o.completion_ids for o in b[::-1]]
    s1 = hf.generate(lm, HF_PROMPTS, scheme=None, max_new_tokens=8, seed=9)
    s2 = hf.generate(lm, HF_PROMPTS, scheme=None, max_new_tokens=8, seed=9)
    assert s1 == s2


def test_hf_generate_rejects_bad_arguments(tiny_model: LlamaForCausalLM,
                                           hf_tok: PreTrainedTokenizerFast) -> None:
    lm = hf.LoadedModel(model=tiny_model, tokenizer=hf_tok, source="tiny")
    scheme = make_scheme()
    cases = [
        ({"prompts": []}, "^no prompts given$"),
        ({"max_new_tokens": 0}, r"^`max_new_tokens` must be >= 1, got 0$"),
        ({"temperature": -1.0}, r"^need temperature >= 0 and 0 < top_p <= 1, got -1.0, 1.0$"),
        ({"top_p": 0.0}, r"^need temperature >= 0 and 0 < top_p <= 1, got 1.0, 0.0$"),
        ({"batch_size": 0}, r"^`batch_size` must be >= 1, got 0$"),
    ]
    for kwargs, message in cases:
        args: dict[str, Any] = {"prompts": ["Hi"], "scheme": scheme, **kwargs}
        with pytest.raises(ValueError, match=message):
            hf.generate(lm, args.pop("prompts"), **args)
    # a key made for a larger vocabulary than the model's logits
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    bigger = TokenizerInfo(source=info.source, sha256=info.sha256, vocab_size=VOCAB + 1)
    big = scheme_for(new_spec("greenlist", {}, bigger, secret=HF_SECRET))
    with pytest.raises(ParameterError, match=r"^the model's 49152 logits are fewer than the "
                                             r"spec's vocab_size 49153 \(key made for another "
                                             r"model\?\)$"):
        hf.generate(lm, ["Hi"], scheme=big)


def test_hf_generate_refuses_an_empty_prompt(tiny_model: LlamaForCausalLM,
                                            hf_tok: PreTrainedTokenizerFast) -> None:
    """A prompt of no tokens (messages without text, no chat template) is one InputError
    naming it, not a failure deep inside the model."""
    lm = hf.LoadedModel(model=tiny_model, tokenizer=hf_tok, source="tiny")
    empty_chat = [{"role": "user", "content": ""}]
    for prompts, index in (([""], 0), ([empty_chat], 0), (["Hi", ""], 1)):
        with pytest.raises(InputError, match=rf"^prompt {index} is empty: the model needs at "
                                             "least one token to answer from$"):
            hf.generate(lm, prompts, scheme=make_scheme(), max_new_tokens=4)


# --------------------------------------------------------------------------------------------
# Loading models


def test_default_model_path_is_the_embedded_gguf() -> None:
    path = hf.default_model_path()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_real_smollm2_generation_is_detected() -> None:
    """The embedded SmolLM2 (converted from GGUF once, then cached): its tokenizer is the one
    the default spec is made for, and its watermarked answers at temperature 1 are detected
    while its unwatermarked ones are not."""
    lm = hf.load_model()
    assert lm.tokenizer.padding_side == "left"
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    assert fingerprint(lm.tokenizer_json()) == info.sha256
    spec = new_spec("greenlist", {}, info, secret=HF_SECRET)
    prompts = ["Explain why the sky is blue.", "Invent five names for new colours."]
    outs = hf.generate(lm, prompts, scheme=scheme_for(spec), max_new_tokens=60,
                       temperature=1.0, seed=0)
    detector = Detector(spec)
    results = [detector.detect(o.text) for o in outs]
    for o, r in zip(outs, results):
        assert len(o.completion_ids) >= 20, o.text
        assert r.statistic > 0.25 * r.n_scored, (r, o.text)  # more green than chance, each
    # ~120 tokens of answers: far below 1e-3 (one 60-token answer alone usually is too, but
    # a low-entropy answer can fall short)
    both = detector.detect("\n\n".join(o.text for o in outs))
    assert both.pvalue < 1e-3, (both, [o.text for o in outs])


def test_load_model_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError) as exc:
        hf.load_model(missing)
    assert str(exc.value) == (f"model {missing} does not exist (give a GGUF file or a local "
                              "Hugging Face model directory)")


def test_load_model_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelNotFoundError) as exc:
        hf.load_model(tmp_path)
    assert str(exc.value) == f"model directory {tmp_path} has no config.json (not a model)"


def test_load_model_file_that_is_not_gguf(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"\0" * 64)
    with pytest.raises(ModelNotFoundError) as exc:
        hf.load_model(f)
    assert str(exc.value) == f"model {f} is a file but not a .gguf model"
    assert isinstance(exc.value, FileNotFoundError)


def test_load_model_directory_with_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelNotFoundError) as exc:
        hf.load_model(tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"cannot load model {tmp_path}: ") and "\n" not in msg


def test_load_model_local_directory(tmp_path: Path, tiny_model: LlamaForCausalLM,
                                    hf_tok: PreTrainedTokenizerFast) -> None:
    tiny_model.save_pretrained(tmp_path)
    make_tokenizer("right").save_pretrained(tmp_path)
    lm = hf.load_model(tmp_path)
    assert lm.source == str(tmp_path)
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token == IM_END
    assert not lm.model.training
    assert fingerprint(lm.tokenizer_json()) == load_tokenizer(BUILTIN_SMOLLM2)[1].sha256
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(ids).logits, tiny_model(ids).logits)


# --------------------------------------------------------------------------------------------
# The sampler generate() uses


def _sampler_frequencies(logits: torch.Tensor, n: int, **kw: Any) -> np.ndarray:
    from distillmark.watermark.hf import InverseCDFSampler

    sampler = InverseCDFSampler(**kw)
    rows = logits.expand(500, -1).contiguous()
    counts = np.zeros(logits.shape[1], dtype=np.int64)
    for _ in range(n // 500):
        out = sampler(None, rows.clone())  # type: ignore[arg-type]
        assert bool((torch.isfinite(out).sum(dim=1) == 1).all())  # exactly one token left
        counts += np.bincount(out.argmax(dim=1).numpy(), minlength=logits.shape[1])
    return counts


def _warped(logits: torch.Tensor, temperature: float, top_p: float) -> np.ndarray:
    """transformers' own temperature and top-p warpers: the distribution to match."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    s = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_p < 1:
        s = TopPLogitsWarper(top_p)(None, s)
    return torch.softmax(s.double(), dim=-1)[0].numpy()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_inverse_cdf_sampler_draws_the_warped_distribution(temperature: float,
                                                           top_p: float) -> None:
    from scipy import stats

    torch.manual_seed(7)
    logits = torch.randn(1, 40) * 2
    p = _warped(logits, temperature, top_p)
    counts = _sampler_frequencies(logits, 60_000, temperature=temperature, top_p=top_p)
    assert counts[p == 0].sum() == 0  # nothing outside the nucleus
    keep = p > 0
    assert stats.chisquare(counts[keep], p[keep] * counts.sum()).pvalue > 1e-3


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_inverse_cdf_sampler_across_blocks(temperature: float) -> None:
    """A row wider than one block of the two-level search, not a multiple of it, with a whole
    block and scattered columns at -inf: the draws follow the warped distribution, and no
    -inf column (nor a padding column past the row's end) is ever drawn."""
    from scipy import stats

    torch.manual_seed(11)
    logits = torch.randn(1, 1000) * 1.5
    logits[0, 256:512] = -torch.inf
    logits[0, ::7] = -torch.inf
    logits[0, 999] = 4.0  # the last column, in the part-filled block, is likely
    p = _warped(logits, temperature, 1.0)
    counts = _sampler_frequencies(logits, 100_000, temperature=temperature)
    assert counts[p == 0].sum() == 0
    assert counts[999] > 0
    # chi-square over the columns expected often enough, the rest pooled
    big = p * counts.sum() >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(p[big], p[~big].sum()) * counts.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_inverse_cdf_sampler_is_not_greedy() -> None:
    """A broken sampler that returned the argmax would pass a one-token check: the least
    likely of two near-equal tokens must come out about as often as the other."""
    logits = torch.tensor([[0.0, 0.1] + [-50.0] * 30])
    counts = _sampler_frequencies(logits, 10_000)
    assert 4_000 < counts[0] < 5_500 and counts[0] + counts[1] == 10_000


def test_generate_samples_differ_between_seeds(tiny_model: LlamaForCausalLM,
                                              hf_tok: PreTrainedTokenizerFast) -> None:
    lm = hf.LoadedModel(model=tiny_model, tokenizer=hf_tok, source="tiny")
    a = hf.generate(lm, HF_PROMPTS, scheme=None, max_new_tokens=12, seed=5)
    b = hf.generate(lm, HF_PROMPTS, scheme=None, max_new_tokens=12, seed=6)
    assert [x.completion_ids for x in a] != [x.completion_ids for x in b]
