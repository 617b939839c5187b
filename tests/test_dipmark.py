"""DiPmark (the α-reweight): known answers, the documented construction, exact distribution
preservation, parameters, and the CLI's keygen. Unbiasedness over keys, the exact null and power
are in test_dipmark_statistics.py, the transformers and llama.cpp adapters in
test_dipmark_engines.py."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dipmark_helpers import SECRET, V, make
from scipy import stats
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    SCHEMES,
    DiPmark,
    DiPmarkParams,
    ParameterError,
    SpecError,
    load_spec,
    load_tokenizer,
    new_spec,
    prf,
    scheme_for,
)
from distillmark.watermark.dipmark import reweight_factors, reweight_log_factors

KAT_IDS = [0, 1, 2, 100, 49151, 7, 7, 7, 12345, 100, 49151]

# Known answers, recorded from the implementation for SECRET and V = 49152 (parameters pinned:
# a change of the defaults must not silently change the vectors). ``green``: green bit of each
# tuple key; ``perm``: first and last tokens of the permutation of the first key's row.
KAT: dict[str, dict[str, Any]] = {
    "default": {
        "params": {"alpha": 0.45, "gamma": 0.5, "context_width": 1, "n_lists": 256},
        "keys": [1327105, 2801666, 3194980, 6340607, 10076167, 12288007, 12288007, 12300345,
                 7569508, 6340607],
        "green": [1, 1, 0, 0, 1, 1, 1, 0, 0, 0],
        "perm": ([45632, 44516, 34464, 44512, 11567, 3570, 12116, 44982],
                 [42655, 27801, 33675, 35803]),
    },
    "h2-min-64": {
        "params": {"context_width": 2, "combine": "min", "n_lists": 64, "gamma": 0.25},
        "keys": [688130, 688228, 1622015, 1572871, 3047431, 3047431, 3059769, 3047524,
                 1622015],
        "green": [0, 1, 1, 1, 1, 1, 1, 0, 1],
        "perm": ([1426, 19331, 10933, 39027, 4461, 2801, 47666, 19641],
                 [36101, 22827, 17821, 18870]),
    },
    "h0": {
        "params": {"context_width": 0},
        "keys": KAT_IDS,
        "green": [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
        "perm": ([18703, 46431, 20139, 24257, 26429, 47555, 28708, 38323],
                 [6448, 47279, 46435, 31596]),
    },
}
# Watermarked distribution for SECRET, V = 16, h = 2, 4 lists, logits linspace(-2, 2), context
# [3, 9, 5, 11] of which 2 are prompt; and the permutation of that step's row.
KAT_PROCESS = [0.00869634, 0.01135399, 0.0, 0.01935406, 0.0, 0.03299103, 0.04307326, 0.0, 0.0,
               0.0, 0.125157, 0.0, 0.21334323, 0.27854203, 0.0, 0.26748907]
KAT_PROCESS_PERM = [4, 9, 2, 11, 8, 7, 14, 15, 6, 1, 12, 3, 0, 13, 5, 10]


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return z / z.sum()


def literal_reweight(q: np.ndarray, alpha: float) -> np.ndarray:
    """The paper's formula in permutation order: ``G(F_i) - G(F_{i-1})`` with
    ``G(x) = max(x - alpha, 0) + max(x - (1 - alpha), 0)``."""
    F = np.cumsum(q)
    prev = np.concatenate([[0.0], F[:-1]])

    def G(x: np.ndarray) -> np.ndarray:
        return np.maximum(x - alpha, 0.0) + np.maximum(x - (1.0 - alpha), 0.0)

    return G(F) - G(prev)


# -- known answers and the documented construction --------------------------------------------

@pytest.mark.parametrize("case", sorted(KAT))
def test_known_answer_keys_green_bits_and_permutation(case: str) -> None:
    kat = KAT[case]
    d = make(**kat["params"])
    keys = d.tuple_keys(np.array(KAT_IDS))
    assert keys.tolist() == kat["keys"]
    assert d.key_scores(keys).astype(int).tolist() == kat["green"]
    np.testing.assert_array_equal(d.green_indicators(np.array(KAT_IDS)), d.key_scores(keys))
    order, rank = d.permutation(int(keys[0]) // V)
    head, tail = kat["perm"]
    assert order[:8].tolist() == head and order[-4:].tolist() == tail
    np.testing.assert_array_equal(rank[order], np.arange(V))


def test_known_answer_process() -> None:
    d = make(vocab_size=16, context_width=2, n_lists=4)
    out = d.process(np.linspace(-2, 2, 16)[None, :], np.array([[3, 9, 5, 11]]), prompt_width=2)
    np.testing.assert_allclose(np.exp(out[0]), KAT_PROCESS, rtol=1e-6, atol=1e-12)
    row = int(d.rows(np.array([[5, 11]]))[0])
    assert d.permutation(row)[0].tolist() == KAT_PROCESS_PERM


@pytest.mark.parametrize("params", [
    {"context_width": 1, "n_lists": 512, "gamma": 0.5},
    {"context_width": 3, "n_lists": 128, "combine": "min", "gamma": 0.3},
])
def test_matches_documented_construction(params: dict[str, Any]) -> None:
    """cell = element row * V + t of the uint64 stream of "dipmark/table"; the permutation sorts
    a row by its cells; green = top 32 bits >= round(gamma 2**32) (a suffix of the permutation);
    rows are the ContextRows of "dipmark/token-values"."""
    from distillmark.watermark.context import ContextRows

    d = make(**params)
    table_key = prf.derive_subkey(SECRET, "dipmark/table")
    ctx = ContextRows(prf.derive_subkey(SECRET, "dipmark/token-values"), V,
                      context_width=params["context_width"], selfhash=False,
                      combine=params.get("combine", "hash"), n_rows=params["n_lists"])
    ids = np.random.default_rng(3).integers(0, V, size=200)
    keys = d.tuple_keys(ids)
    np.testing.assert_array_equal(keys, ctx.tuple_keys(ids))
    threshold = round(params["gamma"] * 2**32)
    green = d.key_scores(keys)
    for j in (0, 17, keys.size - 1):
        cell = int(prf.u64_stream(table_key, 1, start=int(keys[j]))[0])
        assert bool(green[j]) == ((cell >> 32) >= threshold)
    row = int(keys[5]) // V
    cells = prf.u64_stream(table_key, V, start=row * V)
    order, _ = d.permutation(row)
    np.testing.assert_array_equal(order, np.argsort(cells, kind="stable"))
    row_green = d.key_scores(np.uint64(row * V) + order.astype(np.uint64))
    n_red = int(np.count_nonzero(~row_green))
    assert not row_green[:n_red].any() and row_green[n_red:].all()  # a suffix
    assert d.test == "binomial"
    assert d.test_params == {"p": (2**32 - threshold) / 2**32}
    # bulk reading of many cells gives the same bits as random access
    many = np.random.default_rng(5).integers(0, d.n_rows * V, size=300_000).astype(np.uint64)
    np.testing.assert_array_equal(d.key_scores(many[:1000]), d.key_scores(many)[:1000])


def test_green_cells_are_fair_independent_bits() -> None:
    d = make(n_lists=64, gamma=0.5)
    g = d.key_scores(np.arange(8 * V, dtype=np.uint64)).reshape(8, V)
    n = g.size
    bound = stats.binom.ppf(1 - 1e-6, n, 0.5)
    assert n - bound <= int(g.sum()) <= bound
    r = np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1]
    assert abs(r) < 5 / math.sqrt(n)


# -- the reweight itself ------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3, 0.45, 0.5])
@pytest.mark.parametrize("k", [1, 2, 3, 17, 1000])
def test_reweight_is_the_papers_formula(alpha: float, k: int) -> None:
    rng = np.random.default_rng(k)
    for conc in (0.05, 0.5, 5.0):
        q = rng.dirichlet(np.full(k, conc))
        q = np.maximum(q, 1e-300)
        q /= q.sum()
        f = reweight_factors(q, alpha)
        assert f.min() >= 0.0 and f.max() <= 2.0
        np.testing.assert_allclose(q * f, literal_reweight(q, alpha), rtol=0, atol=1e-14)
        log_f, log_total = reweight_log_factors(q, alpha)
        with np.errstate(divide="ignore"):
            w = np.exp(np.log(q) + log_f - log_total)
        assert w.sum() == pytest.approx(1.0, abs=1e-13)
        np.testing.assert_allclose(w, literal_reweight(q, alpha), rtol=0, atol=1e-13)


def test_reweight_moves_mass_to_the_end_of_the_permutation() -> None:
    np.testing.assert_array_equal(reweight_factors(np.full(4, 0.25), 0.5), [0, 0, 2, 2])
    np.testing.assert_array_equal(reweight_factors(np.full(4, 0.25), 0.25), [0, 1, 1, 2])
    np.testing.assert_array_equal(reweight_factors(np.array([0.3, 0.7]), 0.0), [1, 1])
    assert reweight_factors(np.array([1.0]), 0.45).tolist() == [1.0]  # nothing to move


@pytest.mark.parametrize("alpha", [0.2, 0.45, 0.5])
def test_distribution_preserving_exactly_over_all_permutations(alpha: float) -> None:
    """The mean of the reweighted distribution over all 720 orders of 6 tokens is p (to
    rounding): the scheme preserves the distribution exactly, not only approximately."""
    p = np.array([0.41, 0.23, 0.17, 0.1, 0.06, 0.03])
    acc = np.zeros(p.size)
    n = 0
    for perm in itertools.permutations(range(p.size)):
        order = np.array(perm)
        w = np.empty(p.size)
        w[order] = p[order] * reweight_factors(p[order], alpha)
        acc += w
        n += 1
        # a permutation and its reverse already average to p
        rev = order[::-1]
        w2 = np.empty(p.size)
        w2[rev] = p[rev] * reweight_factors(p[rev], alpha)
        np.testing.assert_allclose((w + w2) / 2, p, rtol=0, atol=1e-15)
    np.testing.assert_allclose(acc / n, p, rtol=0, atol=1e-13)


def test_process_is_the_reweight_in_permutation_order() -> None:
    """The whole hook, at a real vocabulary size, with temperature and top-p: the literal
    formula over the row's permutation of the tempered, filtered distribution."""
    d = make(context_width=2, n_lists=32)
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, V + 64)).astype(np.float32) * 3  # padded logits
    ctx = np.array([[17, 5, 3], [8, 8, 49151]])
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        out = d.process(logits, ctx, prompt_width=1, temperature=temperature, top_p=top_p)
        assert np.isneginf(out[:, V:]).all()
        for b in range(2):
            p = softmax(logits[b, :V].astype(np.float64) / temperature)
            if top_p < 1.0:
                order = np.argsort(-p, kind="stable")
                before = np.cumsum(p[order]) - p[order]
                p[order[before >= top_p]] = 0.0
                p /= p.sum()
            row = int(d.rows(ctx[b:b + 1, 1:])[0])
            perm = d.permutation(row)[0]
            perm = perm[p[perm] > 0]
            want = np.zeros(V)
            want[perm] = literal_reweight(p[perm], 0.45)
            got = np.exp(out[b, :V].astype(np.float64))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
            assert got.sum() == pytest.approx(1.0, abs=1e-5) and got.min() >= 0.0
            assert np.abs(got - p).sum() > 0.3  # it really reweights


def test_one_key_sums_to_one_and_is_non_negative() -> None:
    d = make()
    rng = np.random.default_rng(0)
    for scale in (0.1, 1.0, 5.0, 30.0):
        logits = rng.normal(size=(3, V)) * scale
        q = np.exp(d.process(logits, rng.integers(0, V, size=(3, 4)), prompt_width=2))
        assert np.all(q >= 0.0)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_edge_cases_are_left_unwatermarked() -> None:
    d = make(vocab_size=64, context_width=3, n_lists=8)
    logits = np.random.default_rng(1).normal(size=(1, 64))
    want = np.log(softmax(logits[0]))
    # fewer than h context tokens
    np.testing.assert_allclose(d.process(logits, np.array([[1, 2]]))[0], want, atol=1e-12)
    # alpha 0: no watermark at all
    zero = make(vocab_size=64, context_width=3, n_lists=8, alpha=0.0)
    np.testing.assert_allclose(zero.process(logits, np.array([[1, 2, 3]]))[0], want, atol=1e-12)
    # temperature 0: greedy, the largest logit with probability 1
    out = d.process(logits, np.array([[1, 2, 3]]), temperature=0.0)[0]
    assert out[np.argmax(logits[0])] == 0.0 and np.isneginf(out).sum() == 63
    # nothing finite: the row is left as it is
    bad = np.full((1, 64), -np.inf)
    np.testing.assert_array_equal(d.process(bad, np.array([[1, 2, 3]])), bad)


# -- parameters, registry, CLI -------------------------------------------------------------------

@pytest.mark.parametrize(("params", "message"), [
    ({"alpha": 0.6}, "`alpha` must be in [0, 0.5], got 0.6"),
    ({"alpha": -0.1}, "`alpha` must be in [0, 0.5], got -0.1"),
    ({"alpha": "big"}, "`alpha` must be a finite number, got 'big'"),
    ({"alpha": float("nan")}, "`alpha` must be a finite number, got nan"),
    ({"gamma": 1.0}, "`gamma` must be in (0, 1), got 1.0"),
    ({"gamma": 1e-12}, "`gamma` must be representable at 32-bit precision"),
    ({"context_width": 9}, "`context_width` must be in 0..8, got 9"),
    ({"context_width": 1.5}, "`context_width` must be an integer, got 1.5"),
    ({"combine": "xor"}, "`combine` must be one of hash, min, got 'xor'"),
    ({"n_lists": 3}, "`n_lists` must be a power of two in 1..65536, got 3"),
])
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        DiPmarkParams(**params)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    with pytest.raises(SpecError) as spec_exc:
        new_spec("dipmark", params, info, secret=SECRET)
    assert message in str(spec_exc.value)


def test_params_round_trip_registry_and_preset(tmp_path: Path) -> None:
    p = DiPmarkParams(alpha=0.3, context_width=2)
    assert DiPmarkParams.from_mapping(p.to_dict()) == p
    with pytest.raises(ParameterError, match="unknown dipmark parameter"):
        DiPmarkParams.from_mapping({"delta": 2})
    with pytest.raises(ParameterError, match="`vocab_size` must be an integer >= 2"):
        DiPmark(SECRET, p, 1)
    assert SCHEMES["dipmark"] == (DiPmarkParams, DiPmark)
    assert PRESETS["dipmark"] == ("dipmark", {})
    assert DiPmarkParams().alpha == 0.45 and DiPmarkParams().gamma == 0.5
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    spec = new_spec("dipmark", {"alpha": 0.3}, info, secret=SECRET)
    assert "secret" not in repr(scheme_for(spec)) and isinstance(scheme_for(spec), DiPmark)
    from distillmark.watermark import save_spec

    again = load_spec(save_spec(spec, tmp_path / "k.json"))
    assert again.params == spec.params == {**DiPmarkParams().to_dict(), "alpha": 0.3}


def test_cli_keygen_options(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "k.json"
    r = runner.invoke(app, ["keygen", "-o", str(out), "--scheme", "dipmark", "--dipmark-alpha",
                            "0.4", "--context-width", "2", "--gamma", "0.4", "--json"])
    assert r.exit_code == 0, r.stderr
    params = load_spec(out).params
    assert params == {"alpha": 0.4, "gamma": 0.4, "context_width": 2, "combine": "hash",
                      "n_lists": 256}
    assert json.loads(r.stdout)["params"] == params
    preset = runner.invoke(app, ["keygen", "-o", str(tmp_path / "p.json"), "--preset",
                                 "dipmark"])
    assert preset.exit_code == 0 and load_spec(tmp_path / "p.json").params["alpha"] == 0.45
    bad = runner.invoke(app, ["keygen", "-o", str(tmp_path / "b.json"), "--scheme", "dipmark",
                              "--dipmark-alpha", "0.7"])
    assert bad.exit_code == 2
    assert bad.stderr == "distillmark: error: `alpha` must be in [0, 0.5], got 0.7\n"
    assert not (tmp_path / "b.json").exists()
