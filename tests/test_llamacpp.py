"""The llama.cpp adapter on the real embedded SmolLM2 GGUF."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from distillmark.verify import Detector
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    InputError,
    TokenizerMismatchError,
    llamacpp,
    load_tokenizer,
    new_spec,
    scheme_for,
)
from distillmark.watermark.engines import load_generator, resolve_engine
from distillmark.watermark.errors import ModelNotFoundError

PROMPTS = ["Write a short story about a robot who learns to paint.",
           "Explain how a refrigerator keeps food cold.",
           "Describe a busy market in a coastal town."]


@pytest.fixture(scope="module")
def model():
    return llamacpp.load_model()


@pytest.fixture(scope="module")
def spec():
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    # 256 lists: a test below reads the whole table
    return new_spec("greenlist", {"n_lists": 256}, info, secret=bytes(range(32)))


def test_auto_engine_picks_llamacpp_for_gguf():
    assert resolve_engine("auto", None) == "llama.cpp"
    assert resolve_engine("auto", "some/hf-dir") == "transformers"
    assert load_generator("auto", None).engine == "llama.cpp"


def test_processor_sees_the_context_llamacpp_passes(spec):
    scheme = scheme_for(spec)
    proc = llamacpp.LlamaCppWatermark(scheme)
    ids = np.array([5, 9, 700], dtype=np.intc)
    scores = np.zeros(scheme.vocab_size, dtype=np.float32)
    out = proc(ids, scores)
    assert out.dtype == np.float32 and out.shape == scores.shape
    expected = scheme.table[scheme.rows(np.array([[700]]))[0]] * np.float32(2.0)
    np.testing.assert_array_equal(out, expected)


def test_watermarked_llamacpp_text_is_detected_and_plain_text_is_not(model, spec):
    model.check_tokenizer(spec)
    detector = Detector(spec)
    marked = model.generate(PROMPTS, scheme=scheme_for(spec), max_new_tokens=80,
                            temperature=1.0, seed=3)
    plain = model.generate(PROMPTS, scheme=None, max_new_tokens=80, temperature=1.0, seed=3)
    # Each answer alone can be short; the three together hold ~200 scored tokens.
    joined = "\n\n".join(o.text for o in marked)
    assert detector.detect(joined).pvalue < 1e-6
    for o in marked:
        assert len(o.completion_ids) > 0
        assert detector.detect_ids(np.array(o.prompt_ids + o.completion_ids),
                                   prompt_len=len(o.prompt_ids)).score_mean > 0.25
    plain_result = detector.detect("\n\n".join(o.text for o in plain))
    assert plain_result.n_scored >= 100
    assert plain_result.pvalue > 1e-3


def test_llamacpp_and_transformers_tokenise_alike(model, spec):
    tok = Detector(spec).tokenizer
    text = "Watermarks survive re-tokenisation: naïve café, 東京, x**2 == 4."
    assert model.tokenize(text) == tok.encode(text, add_special_tokens=False).ids


def test_mismatched_tokenizer_is_refused(model, spec, tmp_path):
    from dataclasses import replace

    bad = replace(spec.tokenizer, vocab_size=spec.tokenizer.vocab_size + 1)
    object.__setattr__(bad, "source", BUILTIN_SMOLLM2)
    other = new_spec("greenlist", {}, bad, secret=bytes(range(32)))
    with pytest.raises(TokenizerMismatchError, match="tokenises differently"):
        model.check_tokenizer(other)


def test_not_a_gguf_is_refused(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFoundError, match="is not a .gguf file"):
        llamacpp.load_model(p)


def test_unseeded_answers_are_independent_and_seeded_ones_repeat(model):
    """Without a seed, the same prompt twice gets two samples (a server's n > 1, a probe
    asking again); with one, the answer repeats."""
    twice = model.generate([PROMPTS[0]] * 2, scheme=None, max_new_tokens=24, temperature=1.0)
    again = model.generate([PROMPTS[0]], scheme=None, max_new_tokens=24, temperature=1.0)
    assert len({o.completion_ids for o in twice + again}) == 3
    a = model.generate(PROMPTS[:2], scheme=None, max_new_tokens=24, temperature=1.0, seed=5)
    b = model.generate(PROMPTS[:2], scheme=None, max_new_tokens=24, temperature=1.0, seed=5)
    assert a == b and a[0].completion_ids != a[1].completion_ids


@pytest.mark.parametrize("scheme_name", ["gumbel", "tournament"])
def test_sampling_schemes_on_llamacpp_are_detected(model, scheme_name):
    """Sampling schemes choose the token themselves: llama.cpp then samples at temperature 1
    with no top-k from the scheme's distribution, and the mark is there."""
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec(scheme_name, {}, info, secret=bytes(range(1, 33)))
    other = new_spec(scheme_name, {}, info, secret=bytes(range(2, 34)))
    marked = model.generate(PROMPTS[:2], scheme=scheme_for(spec), max_new_tokens=60,
                            temperature=1.0, seed=5)
    joined = "\n\n".join(o.text for o in marked)
    assert Detector(spec).detect(joined).pvalue < 1e-6
    assert Detector(other).detect(joined).pvalue > 1e-3


def test_dipmark_on_llamacpp_is_detected(model):
    """DiPmark reweights the distribution itself: llama.cpp samples it at temperature 1. It reads
    one bit per token, so it gets three answers of 100 tokens (about 280 scored tuples)."""
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec("dipmark", {}, info, secret=bytes(range(1, 33)))
    other = new_spec("dipmark", {}, info, secret=bytes(range(50, 82)))
    marked = model.generate(PROMPTS, scheme=scheme_for(spec), max_new_tokens=100,
                            temperature=1.0, seed=5)
    joined = "\n\n".join(o.text for o in marked)
    assert Detector(spec).detect(joined).pvalue < 1e-6
    assert Detector(other).detect(joined).pvalue > 1e-3


def test_prompts_are_counted_exactly_and_in_linear_time(model):
    from distillmark.watermark.serve.limits import prompt_counter

    count = prompt_counter(model)
    for n in (1, 2, 7, 300):
        msgs = [{"role": ("user", "assistant")[i % 2],
                 "content": f"turn {i}: <|im_end|> and <|not_a_token|>\n\n  end"}
                for i in range(n)]
        assert count(msgs) == len(model.tokenize(model._prompt_text(msgs), special=True))
    huge = [{"role": "user", "content": "hello there"}] * 20_000
    assert 8192 < count(huge, 8192) < 8192 + 64  # stops soon after the limit


def test_an_empty_prompt_is_refused(model):
    """No tokens to answer from (no chat template, no text): one InputError, not llama.cpp's
    own assertion."""
    plain = dataclasses.replace(model, chat_template=None)
    with pytest.raises(InputError, match=r"^prompt 1 is empty: the model needs at least one "
                                         r"token to answer from$"):
        plain.generate(["Hi", [{"role": "user", "content": ""}]], scheme=None,
                       max_new_tokens=2)
