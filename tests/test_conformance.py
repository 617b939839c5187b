"""Cross-engine conformance: every engine adapter applies exactly the recorded watermark.

The vectors (tests/vectors/greenlist.json, dipmark.json) were written from the numpy reference
by tests/vectors/make_vectors.py; each adapter must reproduce the green-list's bias bit for bit,
and DiPmark's reweighted distribution: the same tokens at probability 0, the recorded
probabilities to 1e-6 (exp and log may round differently on another machine).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for
from distillmark.watermark.hf import WatermarkLogitsProcessor
from distillmark.watermark.llamacpp import LlamaCppWatermark

VECTORS = json.loads((Path(__file__).parent / "vectors" / "greenlist.json").read_text())
DIPMARK = json.loads((Path(__file__).parent / "vectors" / "dipmark.json").read_text())
_spec = importlib.util.spec_from_file_location(
    "make_vectors", Path(__file__).parent / "vectors" / "make_vectors.py")
assert _spec is not None and _spec.loader is not None
make_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_vectors)


def _numpy_engine(scheme, ctx, logits):
    return scheme.bias(logits[None, :], np.array([ctx]))[0]


def _torch_engine(scheme, ctx, logits):
    proc = WatermarkLogitsProcessor(scheme)
    out = proc(torch.tensor([ctx]), torch.from_numpy(logits.copy())[None, :])
    return out[0].numpy()


def _llama_engine(scheme, ctx, logits):
    return LlamaCppWatermark(scheme)(np.array(ctx, dtype=np.intc), logits.copy())


ENGINES = {"numpy": _numpy_engine, "transformers": _torch_engine, "llama.cpp": _llama_engine}


@pytest.fixture(scope="module")
def tokenizer_info():
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    assert info.sha256 == VECTORS["tokenizer_sha256"]
    return info


@pytest.fixture(scope="module", params=[c["name"] for c in VECTORS["cases"]])
def case(request, tokenizer_info):
    case = next(c for c in VECTORS["cases"] if c["name"] == request.param)
    spec = new_spec("greenlist", case["params"], tokenizer_info,
                    secret=bytes.fromhex(VECTORS["secret_hex"]))
    assert spec.key_id == case["key_id"]
    return case, scheme_for(spec)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_applies_the_recorded_bias(case, engine):
    vec, scheme = case
    for step in vec["steps"]:
        logits = make_vectors.logits_for(step["logits_case"], scheme.vocab_size)
        biased = np.asarray(ENGINES[engine](scheme, step["context"], logits), dtype=np.float32)
        bump = biased != logits
        assert int(bump.sum()) == step["n_biased"]
        assert np.flatnonzero(bump)[:16].tolist() == step["first_biased"]
        assert make_vectors.mask_digest(bump) == step["biased_sha256"]
        assert hashlib.sha256(biased.tobytes()).hexdigest() == step["biased_logits_sha256"]


def test_detection_green_indicators_match_vectors(case):
    vec, scheme = case
    got = scheme.green_indicators(np.array(vec["ids"])).astype(int).tolist()
    assert got == vec["green_indicators"]


def _dipmark_numpy(scheme, ctx, logits, temperature, top_p):
    return scheme.process(logits[None, :], np.array([ctx]), prompt_width=2,
                          temperature=temperature, top_p=top_p)[0]


def _dipmark_torch(scheme, ctx, logits, temperature, top_p):
    proc = WatermarkLogitsProcessor(scheme, temperature=temperature, top_p=top_p)
    out = proc(torch.tensor([ctx]), torch.from_numpy(logits.copy())[None, :])
    return out[0].numpy()


def _dipmark_llama(scheme, ctx, logits, temperature, top_p):
    proc = LlamaCppWatermark(scheme, temperature=temperature, top_p=top_p)
    return proc(np.array(ctx, dtype=np.intc), logits.copy())


DIPMARK_ENGINES = {"numpy": _dipmark_numpy, "transformers": _dipmark_torch,
                   "llama.cpp": _dipmark_llama}


@pytest.fixture(scope="module", params=[c["name"] for c in DIPMARK["cases"]])
def dipmark_case(request, tokenizer_info):
    assert DIPMARK["tokenizer_sha256"] == tokenizer_info.sha256
    case = next(c for c in DIPMARK["cases"] if c["name"] == request.param)
    spec = new_spec("dipmark", case["params"], tokenizer_info,
                    secret=bytes.fromhex(DIPMARK["secret_hex"]))
    assert spec.key_id == case["key_id"]
    return case, scheme_for(spec)


@pytest.mark.parametrize("engine", list(DIPMARK_ENGINES))
def test_engine_applies_the_recorded_dipmark_reweight(dipmark_case, engine):
    vec, scheme = dipmark_case
    for step in vec["steps"]:
        logits = make_vectors.logits_for(step["logits_case"], scheme.vocab_size)
        out = np.asarray(DIPMARK_ENGINES[engine](scheme, step["context"], logits,
                                                 step["temperature"], step["top_p"]),
                         dtype=np.float32)
        zero = np.isneginf(out)
        assert int(zero.sum()) == step["n_zero"]
        assert make_vectors.mask_digest(zero) == step["zero_sha256"]
        probs = np.exp(out.astype(np.float64))
        np.testing.assert_allclose(probs[step["top_tokens"]], step["top_probs"], rtol=1e-6)
        assert probs.max() == pytest.approx(step["top_probs"][0], rel=1e-6)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_dipmark_green_indicators_match_vectors(dipmark_case):
    vec, scheme = dipmark_case
    got = scheme.green_indicators(np.array(vec["ids"])).astype(int).tolist()
    assert got == vec["green_indicators"]
