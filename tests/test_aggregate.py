"""Pooled tests over many texts: tuple sets, accumulators, merging, calibration, power statement."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from distillmark.verify import (
    AggregateAccumulator,
    TupleSet,
    Verdict,
    detect_ids,
    unique_keys,
)
from distillmark.verify.aggregate import pool
from distillmark.watermark import ParameterError, WatermarkSpec, scheme_for
from distillmark.watermark.keys import new_spec
from distillmark.watermark.tokenizer import BUILTIN_SMOLLM2, TokenizerInfo, load_tokenizer

V = 49152
SpecFactory = Callable[..., WatermarkSpec]


@pytest.fixture(scope="module")
def human_ids(human_texts: list[str]) -> list[np.ndarray]:
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    return [np.asarray(tok.encode(t, add_special_tokens=False).ids) for t in human_texts[:200]]


def _random_texts(rng: np.random.Generator, n: int, vocab: int = 3000) -> list[np.ndarray]:
    return [rng.integers(0, vocab, size=int(rng.integers(5, 120))) for _ in range(n)]


@pytest.mark.parametrize("n_cells", [1000, None])
def test_tuple_set_add_contains_keys(n_cells: int | None) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, size=500).astype(np.uint64)
    b = rng.integers(0, 1000, size=700).astype(np.uint64)
    s = TupleSet(n_cells)
    assert s.is_bitmap == (n_cells is not None)
    s.add(a)
    s.add(b)
    expected = unique_keys(np.concatenate([a, b]))
    assert np.array_equal(s.keys(), expected)
    assert len(s) == expected.size
    probe = np.arange(1000, dtype=np.uint64)
    assert np.array_equal(s.contains(probe), np.isin(probe, expected))
    back = TupleSet.from_arrays(s.to_arrays())
    assert np.array_equal(back.keys(), expected)


def test_large_key_spaces_are_sorted_arrays_and_read_old_bitmaps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A key space past 2**28 cells (65,536 lists x 49,152 tokens) is a sorted array, not a
    bitmap of hundreds of MB; a bitmap saved for such a space (a scan checkpoint) reads back as
    the same keys."""
    import distillmark.verify.aggregate as agg

    assert TupleSet(1 << 28).is_bitmap
    big = TupleSet(65536 * V)
    assert not big.is_bitmap and big.n_cells is None
    keys = np.array([3, 17, 999, 65536 * V - 1], dtype=np.uint64)
    big.add(keys)
    assert np.array_equal(big.keys(), keys) and len(big) == 4
    old = TupleSet(1000)
    old.add(keys[:3])
    saved = old.to_arrays()
    monkeypatch.setattr(agg, "_MAX_BITMAP_CELLS", 100)
    back = TupleSet.from_arrays(saved)
    assert not back.is_bitmap
    assert np.array_equal(back.keys(), keys[:3])
    back.update(TupleSet.from_arrays({"n_cells": np.array([-1]), "keys": keys[3:]}))
    assert np.array_equal(back.keys(), keys)


def test_tuple_set_merge_is_order_free_and_checks_spaces() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 5000, size=300).astype(np.uint64) for _ in range(4)]
    for n_cells in (5000, None):
        left, right = TupleSet(n_cells), TupleSet(n_cells)
        for p in parts[:2]:
            left.add(p)
        for p in parts[2:]:
            right.add(p)
        right.update(left)
        assert np.array_equal(right.keys(), unique_keys(np.concatenate(parts)))
    with pytest.raises(ParameterError, match="different key spaces"):
        TupleSet(10).update(TupleSet(None))
    with pytest.raises(ParameterError, match="outside the key space"):
        TupleSet(10).add(np.array([10], dtype=np.uint64))


def test_pooled_test_is_the_test_of_the_distinct_union(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory())
    rng = np.random.default_rng(2)
    texts = _random_texts(rng, 40)
    acc = AggregateAccumulator(scheme)
    acc.add_batch(texts)
    res = acc.result()
    union = unique_keys(np.concatenate([scheme.tuple_keys(t) for t in texts]))
    greens = int(scheme.key_scores(union).sum())
    assert res.n_scored == union.size and res.statistic == greens
    assert res.n_texts == 40 and res.n_tokens == sum(t.size for t in texts)
    assert res.n_repeated == sum(t.size - 1 for t in texts) - union.size
    # one long text made of all of them scores the same distinct tuples, plus the seams
    single = detect_ids(np.concatenate(texts), scheme)
    assert abs(single.n_scored - res.n_scored) <= len(texts)


def test_repeating_texts_adds_no_evidence(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory())
    texts = _random_texts(np.random.default_rng(3), 30)
    once = pool(texts, scheme).result()
    twice = pool(texts + texts, scheme).result()
    assert twice.n_scored == once.n_scored and twice.pvalue == once.pvalue
    assert twice.n_repeated == 2 * once.n_repeated + once.n_scored


def test_merge_equals_one_accumulator_in_any_order(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory(context_width=2))
    texts = _random_texts(np.random.default_rng(4), 60)
    whole = pool(texts, scheme, batch=7).result()
    parts = [pool(texts[i::3], scheme) for i in range(3)]
    merged = parts[2]
    merged.merge(parts[0])
    merged.merge(parts[1])
    assert merged.result() == whole
    other = AggregateAccumulator(scheme_for(spec_factory(secret=bytes(32))))
    with pytest.raises(ParameterError, match="cannot merge"):
        other.merge(parts[0])


def test_prompts_are_context_not_evidence(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory())
    rng = np.random.default_rng(5)
    prompt, answer = rng.integers(0, V, 30), rng.integers(0, V, 50)
    acc = AggregateAccumulator(scheme)
    acc.add(np.concatenate([prompt, answer]), prompt_len=30)
    res = acc.result()
    assert res.n_tokens == 50
    assert res.n_scored == detect_ids(np.concatenate([prompt, answer]), scheme,
                                      prompt_len=30).n_scored


def test_reference_filter_keeps_only_reference_tuples(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory())
    rng = np.random.default_rng(6)
    texts = _random_texts(rng, 50)
    reference = TupleSet.for_scheme(scheme)
    ref_keys = unique_keys(np.concatenate([scheme.tuple_keys(t) for t in texts[:10]]))
    reference.add(ref_keys)
    res = pool(texts, scheme).result(reference=reference)
    everything = pool(texts, scheme).result()
    assert res.n_scored == ref_keys.size
    assert res.n_filtered == everything.n_scored - ref_keys.size
    assert res.n_reference == ref_keys.size
    assert res.statistic == int(scheme.key_scores(ref_keys).sum())


@pytest.mark.parametrize("scheme_name", ["greenlist", "gumbel", "tournament"])
def test_pooled_null_is_calibrated_over_keys(scheme_name: str, tokenizer_info: TokenizerInfo,
                                             human_ids: list[np.ndarray]) -> None:
    pvalues = []
    rng = np.random.default_rng(7)
    for _ in range(40):
        spec = new_spec(scheme_name, {}, tokenizer_info, secret=os.urandom(32))
        picks = rng.choice(len(human_ids), size=8, replace=False)
        pvalues.append(pool([human_ids[i] for i in picks], scheme_for(spec)).result().pvalue)
    # discrete nulls: the p-value is stochastically no smaller than uniform
    assert stats.kstest(pvalues, "uniform", alternative="greater").pvalue > 1e-3
    assert min(pvalues) > 1e-4


def test_detectable_fraction_is_a_power_statement(spec_factory: SpecFactory) -> None:
    scheme = scheme_for(spec_factory())
    acc = pool(_random_texts(np.random.default_rng(8), 400, vocab=V), scheme)
    res = acc.result()
    alpha = 1e-3
    f = res.detectable_fraction(alpha)
    assert 0 < f < 1 and res.verdict(alpha) in (Verdict.NOT_WATERMARKED, Verdict.WATERMARKED)
    # simulate the alternative it describes: a share f of tuples green with the assumed effect
    n, gamma = res.n_scored, 0.25
    sd = math.sqrt(gamma * (1 - gamma))
    rng = np.random.default_rng(9)
    n_marked = round(f * n)
    p_marked = gamma + res.effect * sd
    greens = (rng.binomial(n_marked, p_marked, size=2000)
              + rng.binomial(n - n_marked, gamma, size=2000))
    crit = stats.binom.isf(alpha, n, gamma)
    rate = float(np.mean(greens > crit))
    assert 0.4 < rate < 0.6, rate
    # more evidence, smaller detectable share; too little, none
    assert pool(_random_texts(np.random.default_rng(8), 1600, vocab=V),
                scheme).result().detectable_fraction(alpha) < f
    tiny = pool([np.arange(12)], scheme).result()
    assert tiny.detectable_fraction(alpha) == math.inf
    assert tiny.to_dict(alpha)["detectable_fraction"] is None
    assert tiny.verdict(alpha) == Verdict.INSUFFICIENT
    with pytest.raises(ParameterError, match="`power`"):
        res.detectable_fraction(alpha, power=1.0)


def test_power_on_pooled_watermarked_texts(spec_factory: SpecFactory) -> None:
    """Many short answers, each too short to convict alone, convict together."""
    spec = spec_factory(n_lists=256)  # reads the whole table
    scheme = scheme_for(spec)
    rng = np.random.default_rng(10)
    texts = []
    for _ in range(60):
        ids = [int(rng.integers(0, V))]
        for _ in range(12):
            row_green = np.flatnonzero(scheme.table[scheme.rows(np.array([ids[-1:]]))[0]])
            # a weak mark: a green token 40% of the time instead of 25%
            ids.append(int(rng.choice(row_green)) if rng.random() < 0.2
                       else int(rng.integers(0, V)))
        texts.append(np.array(ids))
    singles = [detect_ids(t, scheme) for t in texts]
    assert not any(r.is_watermarked(1e-3) for r in singles)
    pooled = pool(texts, scheme).result()
    assert pooled.is_watermarked(1e-3), pooled
