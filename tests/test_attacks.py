"""Attacks: token edits at their rates, dilution at its share, paraphrase's chunking, and watermark
stealing that spoofs and scrubs a green-list mark on a low-entropy stand-in model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from toy_model import BigramModel

from distillmark.verify import detect_ids_batch
from distillmark.verify.attacks import (
    StolenBias,
    StolenLists,
    chunk_text,
    delete,
    dilute,
    edit_text,
    insert,
    paraphrase,
    rewrite_ids,
    substitute,
)
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    InputError,
    ParameterError,
    load_tokenizer,
    new_spec,
    scheme_for,
)
from distillmark.watermark.engine_types import Completion

V = 49152
VOCAB = np.arange(V)
ALPHA = 1e-5


def _binomial_ok(k: int, n: int, p: float) -> bool:
    """``k`` within 5 standard deviations of Binomial(n, p)'s mean."""
    return abs(k - n * p) <= 5 * (n * p * (1 - p)) ** 0.5


def _is_subsequence(small: np.ndarray, big: np.ndarray) -> bool:
    it = iter(big.tolist())
    return all(any(x == y for y in it) for x in small.tolist())


IDS = np.random.default_rng(3).integers(0, V, size=20_000)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 0.5])
def test_substitution_replaces_at_its_rate_and_never_with_the_same_token(rate: float) -> None:
    out, n = substitute(IDS, rate, np.random.default_rng(0), VOCAB)
    changed = out != IDS
    assert out.size == IDS.size and int(changed.sum()) == n
    assert _binomial_ok(n, IDS.size, rate)
    again, _ = substitute(IDS, rate, np.random.default_rng(0), VOCAB)
    assert np.array_equal(out, again)  # seeded: reproducible


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_deletion_removes_at_its_rate(rate: float) -> None:
    out, n = delete(IDS, rate, np.random.default_rng(1))
    assert out.size == IDS.size - n and _binomial_ok(n, IDS.size, rate)
    assert _is_subsequence(out, IDS)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_insertion_adds_at_its_rate(rate: float) -> None:
    out, n = insert(IDS, rate, np.random.default_rng(2), VOCAB)
    assert out.size == IDS.size + n and _binomial_ok(n, IDS.size, rate)
    assert _is_subsequence(IDS, out)


def test_another_seed_gives_another_edit() -> None:
    a, _ = substitute(IDS, 0.2, np.random.default_rng(0), VOCAB)
    b, _ = substitute(IDS, 0.2, np.random.default_rng(1), VOCAB)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("share", [1.0, 0.5, 0.1, 0.03])
def test_dilution_pastes_the_marked_text_whole_at_its_share(share: float) -> None:
    marked = np.arange(100, 300)
    human = np.arange(1000, 20000)
    out, n_human = dilute(marked, human, share, np.random.default_rng(4))
    assert out.size == marked.size + n_human
    assert abs(marked.size / out.size - share) < 1 / out.size + 1e-12
    start = int(np.flatnonzero(out == marked[0])[0])
    assert np.array_equal(out[start:start + marked.size], marked)
    rest = np.concatenate([out[:start], out[start + marked.size:]])
    assert np.array_equal(rest, human[:n_human])


def test_dilution_refuses_a_human_text_too_short() -> None:
    with pytest.raises(InputError, match="has 50 tokens; a marked share of 0.1 needs 1800"):
        dilute(np.arange(200), np.arange(50), 0.1, np.random.default_rng(0))


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ParameterError, match=r"`rate` must be in \[0, 1\], got 1.5"):
        substitute(IDS, 1.5, np.random.default_rng(0), VOCAB)
    with pytest.raises(ParameterError, match=r"`share` must be in \(0, 1\]"):
        dilute(IDS, IDS, 0.0, np.random.default_rng(0))


def test_text_edits_decode_and_rate_zero_keeps_the_text() -> None:
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    text = "The quick brown fox jumps over the lazy dog, and the dog does not mind at all."
    assert edit_text(text, "substitute", 0.0, seed=0, tokenizer=tok).text == text
    r = edit_text(text, "delete", 0.5, seed=0, tokenizer=tok)
    assert r.text != text and r.n_tokens_out == r.n_tokens_in - r.n_edited


def test_chunks_cut_at_sentence_ends_and_stay_under_the_limit() -> None:
    text = " ".join(f"Sentence number {i} has a few words." for i in range(30))
    words = (lambda s: len(s.split()))
    chunks = chunk_text(text, words, 20)
    assert len(chunks) > 1 and all(words(c) <= 20 for c in chunks)
    assert " ".join(chunks).split() == text.split()


class _EchoModel:
    """A generator that answers each prompt with its last line upper-cased."""

    engine, source = "echo", "echo"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def check_tokenizer(self, spec: Any) -> None:
        pass

    def generate(self, prompts: Sequence[Any], *, scheme: Any, **kw: Any) -> list[Completion]:
        self.calls.append({"prompts": list(prompts), "scheme": scheme, **kw})
        return [Completion(prompt=p, text=p.splitlines()[-1].upper(), prompt_ids=(1,),
                           completion_ids=(1, 2)) for p in prompts]


def test_paraphrase_rewrites_every_chunk_unwatermarked_and_joins_them() -> None:
    model = _EchoModel()
    text = "One two three. Four five six. Seven eight nine."
    [r] = paraphrase([text], model, count=lambda s: len(s.split()), chunk_tokens=6)
    assert model.calls[0]["scheme"] is None
    assert all(p.startswith("Rewrite the following text in your own words")
               for p in model.calls[0]["prompts"])
    assert r.n_chunks == 2 and r.text == "ONE TWO THREE. FOUR FIVE SIX.\nSEVEN EIGHT NINE."


# --------------------------------------------------------------------------------------------
# Stealing, on a low-entropy bigram stand-in with a few-list green-list mark


@pytest.fixture(scope="module", params=[(0, 1), (1, 4)], ids=["h0", "h1-4lists"])
def stolen_setup(request: Any) -> dict[str, Any]:
    h, n_lists = request.param
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec("greenlist", {"context_width": h, "n_lists": n_lists}, info,
                    secret=bytes(range(32)))
    scheme = scheme_for(spec)
    model = BigramModel(5)
    marked = model.sample(scheme, 1, n_seqs=48, n_tokens=150)
    base = model.sample(None, 2, n_seqs=48, n_tokens=150)
    human = model.sample(None, 3, n_seqs=12, n_tokens=150)
    return {"scheme": scheme, "model": model, "marked": marked, "base": base, "human": human,
            "h": h}


def _detected(seqs: list[np.ndarray], scheme: Any, alpha: float = ALPHA) -> float:
    return float(np.mean([r.pvalue < alpha for r in detect_ids_batch(seqs, scheme)]))


def test_stolen_lists_spoof_human_text_and_guessing_does_not(stolen_setup: dict[str, Any]
                                                             ) -> None:
    s = stolen_setup
    assert _detected(s["human"], s["scheme"]) == 0.0
    stolen = StolenLists(s["marked"], s["base"], vocab_size=V, context_width=s["h"])
    spoofed = [rewrite_ids(x, stolen, "spoof", rate=1.0)[0] for x in s["human"]]
    assert _detected(spoofed, s["scheme"]) >= 0.75
    # the same attack learnt from unwatermarked answers (an estimator that can only guess)
    guess = StolenLists(s["model"].sample(None, 9, n_seqs=48, n_tokens=150), s["base"],
                        vocab_size=V, context_width=s["h"])
    guessed = [rewrite_ids(x, guess, "spoof", rate=1.0)[0] for x in s["human"]]
    assert _detected(guessed, s["scheme"]) <= 0.25


def test_stolen_lists_scrub_better_than_random_edits(stolen_setup: dict[str, Any]) -> None:
    s = stolen_setup
    marked = s["marked"][:12]
    assert _detected(marked, s["scheme"]) >= 0.75
    stolen = StolenLists(s["marked"][12:], s["base"], vocab_size=V, context_width=s["h"])
    scrubbed = [rewrite_ids(x, stolen, "scrub", rate=0.3)[0] for x in marked]
    rng = np.random.default_rng(0)
    randomised = [substitute(x, 0.3, rng, VOCAB)[0] for x in marked]
    assert _detected(scrubbed, s["scheme"]) <= 0.25
    assert _detected(scrubbed, s["scheme"]) < _detected(randomised, s["scheme"])


def test_stolen_bias_writes_text_the_detector_calls_watermarked(stolen_setup: dict[str, Any]
                                                                ) -> None:
    s = stolen_setup
    stolen = StolenLists(s["marked"], s["base"], vocab_size=V, context_width=s["h"])
    written = s["model"].sample(StolenBias(stolen, 3.0), 7, n_seqs=8, n_tokens=150)
    assert _detected(written, s["scheme"], 1e-3) >= 0.75
    plain = s["model"].sample(None, 7, n_seqs=8, n_tokens=150)
    assert _detected(plain, s["scheme"], 1e-3) == 0.0


def test_context_scores_agree_with_scores() -> None:
    model = BigramModel(1)
    a = model.sample(None, 1, n_seqs=4, n_tokens=60)
    b = model.sample(None, 2, n_seqs=4, n_tokens=60)
    for h in (0, 1, 2):
        stolen = StolenLists(a, b, vocab_size=V, context_width=h)
        ids = a[0]
        s = stolen.scores(ids)
        row = [stolen.context_scores(ids[:h + i])[ids[h + i]] for i in range(s.size)]
        np.testing.assert_allclose(s, row, atol=1e-12)


def test_stealing_refuses_bad_settings() -> None:
    ids = [np.arange(10)]
    with pytest.raises(ParameterError, match="`context_width` must be in 0..3, got 4"):
        StolenLists(ids, ids, vocab_size=V, context_width=4)
    with pytest.raises(ParameterError, match="needs watermarked answers and a base corpus"):
        StolenLists([], ids, vocab_size=V)
    with pytest.raises(ParameterError, match="`attack` must be one of spoof, scrub"):
        rewrite_ids(ids[0], StolenLists(ids, ids, vocab_size=V), "steal", rate=0.1)
