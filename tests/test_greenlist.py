"""The green-list scheme: known answers, the documented construction, generation/detection
agreement, the table's statistics and parameter validation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from distillmark.watermark import (
    GreenList,
    GreenListParams,
    ParameterError,
    SpecError,
    WatermarkSpec,
    prf,
    scheme_for,
)

SECRET = bytes(range(32))
V = 49152  # the builtin SmolLM2 tokenizer's vocabulary
MASK64 = (1 << 64) - 1

# Known answers, recorded from the implementation for SECRET, V = 49152 and these parameters
# (pinned explicitly: a change of the defaults must not silently change the vectors).
KAT_BASE: dict[str, Any] = {"gamma": 0.25, "delta": 2.0, "n_lists": 1024}
KAT_IDS = [0, 1, 2, 100, 49151, 7, 7, 7, 12345, 100, 49151]
KAT_WINDOWS = [[(i * 7919 + j * 104729) % V for j in range(4)] for i in range(4)]
KAT: dict[str, dict[str, Any]] = {
    "h0": {
        "params": {"context_width": 0},
        "keys": [0, 1, 2, 100, 49151, 7, 7, 7, 12345, 100, 49151],
        "green": [0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0],
        "rows": [0, 0, 0, 0],
    },
    "h1": {
        "params": {"context_width": 1},
        "keys": [38879233, 589826, 35094628, 17596415, 18972679, 14450695, 14450695, 14463033,
                 4816996, 17596415],
        "green": [1, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        "rows": [791, 402, 291, 429],
    },
    "h2-hash": {
        "params": {"context_width": 2, "combine": "hash"},
        "keys": [47431682, 37306468, 19415039, 442375, 46399495, 13713415, 13725753, 25264228,
                 5849087],
        "green": [0, 0, 1, 0, 0, 0, 0, 1, 1],
        "rows": [918, 594, 493, 379],
    },
    "h2-min": {
        "params": {"context_width": 2, "combine": "min"},
        "keys": [589826, 589924, 17596415, 17547271, 14450695, 14450695, 14463033, 14450788,
                 17596415],
        "green": [0, 0, 0, 1, 0, 0, 0, 0, 0],
        "rows": [302, 47, 291, 910],
    },
    "selfhash-h3-min": {
        "params": {"context_width": 3, "seeding": "selfhash", "combine": "min"},
        "keys": [17547364, 17596415, 17547271, 17547271, 14450695, 14463033, 17547364, 17596415],
        "green": [1, 0, 1, 1, 0, 0, 1, 0],
        "rows": [81, 47, 291, 910],
    },
    "selfhash-h3-hash": {
        "params": {"context_width": 3, "seeding": "selfhash", "combine": "hash"},
        "keys": [16072804, 19709951, 3391495, 43991047, 28114951, 26554425, 19955812, 20987903],
        "green": [0, 0, 1, 0, 0, 0, 0, 0],
        "rows": [801, 901, 5, 1005],
    },
}
# Green bits of table cells (row, tokens 0..31 and V-16..V-1) for context_width 1.
KAT_TABLE_BITS = {
    (0.25, 0): ("00001000100000010000010100000000", "1000100110010000"),
    (0.25, 1): ("01000001001000010010010000110100", "0000100010001110"),
    (0.25, 1023): ("01001100000100000010000010010010", "0000001000100000"),
    (0.5, 0): ("10001101100000011010110111000110", "1001100110011000"),
    (0.5, 1): ("01110111111100111011011000110100", "1101100010011111"),
    (0.5, 1023): ("01111100000111001010101110110010", "0010011111111000"),
}


def make(secret: bytes = SECRET, vocab_size: int = V, **params: Any) -> GreenList:
    """A fresh scheme object (no table built yet)."""
    return GreenList(secret, GreenListParams(**params), vocab_size)


def bits(a: np.ndarray) -> str:
    return "".join(str(int(b)) for b in a)


# -- (a) known answers ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(KAT))
def test_known_answer_tuple_keys_and_green_bits(case: str) -> None:
    kat = KAT[case]
    g = make(**KAT_BASE, **kat["params"])
    ids = np.array(KAT_IDS)
    assert g.tuple_keys(ids).tolist() == kat["keys"]
    assert g.green_indicators(ids).astype(int).tolist() == kat["green"]
    windows = np.array([w[:g.window] for w in KAT_WINDOWS], dtype=np.int64).reshape(4, g.window)
    assert g.rows(windows).tolist() == kat["rows"]


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_known_answer_table_cells(gamma: float) -> None:
    lazy, full = make(gamma=gamma, n_lists=1024), make(gamma=gamma, n_lists=1024)
    for (g_, row), (first, last) in KAT_TABLE_BITS.items():
        if g_ != gamma:
            continue
        # lazy path, one AES block per cell
        keys = np.concatenate([row * V + np.arange(32), row * V + np.arange(V - 16, V)])
        cells = lazy.key_scores(keys.astype(np.uint64))
        assert (bits(cells[:32]), bits(cells[32:])) == (first, last)
        assert (bits(full.table[row, :32]), bits(full.table[row, -16:])) == (first, last)


def test_unigram_row_is_the_h1_table_row_zero() -> None:
    # h = 0 reads row 0 of the same keyed table
    h0 = make(context_width=0, n_lists=1024)
    assert h0.n_rows == 1 and h0.table.shape == (1, V)
    assert bits(h0.table[0, :32]) == KAT_TABLE_BITS[(0.25, 0)][0]


# -- the documented construction, written out independently ---------------------------------------

def _ref_row(window: list[int], P: np.ndarray, combine: str, n_lists: int) -> int:
    def fmix(x: int) -> int:
        for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            x ^= x >> 33
            x = (x * mult) & MASK64
        return x ^ (x >> 33)

    vals = [int(P[t]) for t in window]
    if combine == "min":
        s = min(vals)
    else:
        s = 0
        for j, v in enumerate(vals):
            r = (23 * j) % 64
            s = (s + (((v << r) | (v >> (64 - r))) & MASK64 if r else v)) & MASK64
    return fmix(s) >> (64 - int(math.log2(n_lists)))


@pytest.mark.parametrize("params", [
    {"context_width": 1},
    {"context_width": 2, "combine": "hash"},
    {"context_width": 3, "combine": "hash"},
    {"context_width": 4, "combine": "min"},
    {"context_width": 2, "seeding": "selfhash", "combine": "hash"},
    {"context_width": 3, "seeding": "selfhash", "combine": "min"},
])
def test_matches_documented_construction(params: dict[str, Any]) -> None:
    n_lists, gamma = 512, 0.3
    g = make(gamma=gamma, n_lists=n_lists, **params)
    P = prf.u64_stream(prf.derive_subkey(SECRET, "greenlist/token-values"), V)
    table_key = prf.derive_subkey(SECRET, "greenlist/table")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, size=60)
    keys = g.tuple_keys(ids)
    h, w = g.context_width, g.window
    expected_keys = []
    for i in range(h, ids.size):
        window = ids[i - h:i + (w - h)].tolist()
        expected_keys.append(_ref_row(window, P, params.get("combine", "hash"), n_lists) * V
                             + int(ids[i]))
    assert keys.tolist() == expected_keys
    threshold = round(gamma * 2**32)
    expected_green = prf.u32_at(table_key, np.array(expected_keys, dtype=np.uint64)) < threshold
    np.testing.assert_array_equal(g.green_indicators(ids), expected_green)


# -- (b) lazy AES path == table path ------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"context_width": 0}, {"context_width": 1, "n_lists": 64},
    {"context_width": 2, "n_lists": 128, "gamma": 0.5},
])
def test_lazy_key_scores_equal_table(params: dict[str, Any]) -> None:
    lazy, full = make(**params), make(**params)
    rng = np.random.default_rng(5)
    n_cells = full.n_rows * V
    keys = rng.integers(0, n_cells, size=20_000).astype(np.uint64)
    keys[:4] = [0, 1, n_cells - 2, n_cells - 1]
    from_lazy = lazy.key_scores(keys)
    assert "table" not in lazy.__dict__  # really the lazy path
    table = full.table
    np.testing.assert_array_equal(full.key_scores(keys), table.reshape(-1)[keys.astype(np.intp)])
    np.testing.assert_array_equal(from_lazy, table.reshape(-1)[keys.astype(np.intp)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_cells_equal_the_whole_tables_cells(seed: int) -> None:
    """Property: for random keys and texts, at h = 0, 1, 2, 4 (both seedings, both combines)
    and several numbers of lists, the tuple keys are the reference ``row * V + token`` of
    :meth:`tuple_rows` (rows from the windows themselves), and the green bit detection reads
    for each (one AES block per distinct key, no table) is the whole table's cell: a row of
    :attr:`table` where it is held (up to 512 lists here), a row of the keyed stream computed
    alone beyond (65,536 lists)."""
    rng = np.random.default_rng(100 + seed)
    secret = rng.bytes(32)
    gamma = float(rng.choice([0.25, 0.5, 0.1]))
    full = make(secret, gamma=gamma, n_lists=512).table  # cells of every table up to 512 lists
    ids = rng.integers(0, V, size=3_000)
    ids[rng.integers(0, ids.size, size=300)] = rng.choice([0, 1, V - 1, 13], size=300)
    ids[1000:1100] = ids[500:600]  # a repeated passage: repeated tuples
    configs = [{"context_width": h, "seeding": seeding, "combine": combine}
               for h in (0, 1, 2, 4) for seeding in ("lefthash", "selfhash")
               for combine in ("hash", "min") if h or seeding == "lefthash"]
    for cfg in configs:
        for n_lists in (1, 64, 512, 65536):
            g = make(secret, gamma=gamma, n_lists=n_lists, **cfg)
            rows, tokens = g.context.tuple_rows(ids)
            keys = g.tuple_keys(ids)
            np.testing.assert_array_equal(
                keys, rows.astype(np.uint64) * np.uint64(V) + tokens.astype(np.uint64))
            green = g.key_scores(keys)
            assert "table" not in g.__dict__
            if g.n_rows <= 512:
                np.testing.assert_array_equal(green, full[rows, tokens])
            else:
                for r in np.unique(rows[:40]).tolist():
                    sel = rows == r
                    np.testing.assert_array_equal(green[sel], g.green_row(r)[tokens[sel]])


def test_many_keys_take_the_table_path_with_same_answer() -> None:
    big, lazy = make(n_lists=64), make(n_lists=64)
    rng = np.random.default_rng(6)
    keys = rng.integers(0, 64 * V, size=300_000).astype(np.uint64)
    from_big = big.key_scores(keys)
    from_lazy = np.concatenate([lazy.key_scores(c) for c in np.array_split(keys, 3)])
    assert "table" not in lazy.__dict__
    np.testing.assert_array_equal(from_big, from_lazy)


@pytest.mark.parametrize("params", [
    {"context_width": 1, "n_lists": 65536}, {"context_width": 2, "n_lists": 4096},
    {"context_width": 2, "n_lists": 65536, "seeding": "selfhash"},
], ids=["h1-65536", "h2-4096", "selfhash-65536"])
def test_many_lists_without_the_whole_table(params: dict[str, Any]) -> None:
    """Over 2**26 cells the table is not held: rows computed one at a time (by the stream) give
    the same green bits as detection's one cell per key (by random access), generation adds
    delta exactly to what detection calls green, and no whole table is ever built."""
    scheme = make(**params)
    assert not scheme.dense
    rng = np.random.default_rng(21)
    for row in (0, 1, scheme.n_rows - 1, int(rng.integers(scheme.n_rows))):
        keys = np.uint64(row * V) + np.arange(V, dtype=np.uint64)
        np.testing.assert_array_equal(scheme.green_row(row), scheme.key_scores(keys))
        assert 0.24 < scheme.green_row(row).mean() < 0.26
    h = scheme.context_width
    contexts = rng.integers(0, V, size=(3, h + 2))
    logits = rng.normal(size=(3, V)).astype(np.float32)
    out = scheme.bias(logits, contexts)
    det = make(**params)
    if params.get("seeding") == "selfhash":
        top = np.argsort(-logits, axis=1)[:, :scheme.params.top_k]
        for b in range(3):
            green = _green_after(det, contexts[b], top[b])
            expected = logits[b].copy()
            expected[top[b][green]] += np.float32(scheme.params.delta)
            np.testing.assert_array_equal(out[b], expected)
    else:
        for b in range(3):
            green = _green_after(det, contexts[b], np.arange(V))
            expected = logits[b].copy()
            expected[green] += np.float32(scheme.params.delta)
            np.testing.assert_array_equal(out[b], expected)
        in_place = logits.copy()
        scheme.bias_(in_place, [c[len(c) - h:] for c in contexts.tolist()])
        np.testing.assert_array_equal(in_place, out)
    assert "table" not in scheme.__dict__ and "table" not in det.__dict__


def test_row_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import distillmark.watermark.greenlist as gl

    monkeypatch.setattr(gl, "_ROW_CACHE", 3)
    scheme = make(n_lists=65536)
    first = [scheme.green_row(r).copy() for r in range(6)]
    assert len(scheme.__dict__["_row_cache"]) == 3
    for r in range(6):  # rows dropped from the cache are computed again, the same
        np.testing.assert_array_equal(scheme.green_row(r), first[r])


# -- (c) generation and detection agree -------------------------------------------------------------

def _green_after(det: GreenList, ctx: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """What detection reports for each of ``tokens`` following ``ctx`` (its last h tokens)."""
    h = det.context_width
    blocks = np.empty((tokens.size, h + 1), dtype=np.int64)
    blocks[:, :h] = ctx[ctx.size - h:]
    blocks[:, h] = tokens
    # one sequence of blocks (ctx, t): the indicator of block i's token is entry i * (h + 1)
    return det.green_indicators(blocks.reshape(-1))[::h + 1]


@pytest.mark.parametrize("params", [
    {"context_width": 0}, {"context_width": 1}, {"context_width": 2},
    {"context_width": 4, "combine": "min"}, {"context_width": 4, "combine": "hash"},
    {"context_width": 3, "n_lists": 1024}, {"context_width": 2, "n_lists": 1},
    {"context_width": 2, "seeding": "selfhash"}, {"context_width": 3, "seeding": "selfhash",
                                                  "combine": "min"},
])
def test_row_of_one_window_equals_rows(params: dict[str, Any]) -> None:
    scheme = make(**params)
    rng = np.random.default_rng(11)
    windows = rng.integers(0, V, size=(300, scheme.window))
    windows[0] = V - 1
    windows[1] = 0
    expected = scheme.rows(windows)
    got = [scheme.context.row_of(w) for w in windows.tolist()]
    assert got == expected.tolist()


@pytest.mark.parametrize("h", [0, 1, 2, 4])
def test_in_place_bias_equals_bias(h: int) -> None:
    scheme = make(context_width=h, delta=1.25)
    rng = np.random.default_rng(12 + h)
    contexts = rng.integers(0, V, size=(5, h + 3))
    logits = rng.normal(size=(5, V + 7)).astype(np.float32)
    expected = scheme.bias(logits, contexts)
    scheme.bias_(logits, [c[len(c) - h:] if h else [] for c in contexts.tolist()])
    np.testing.assert_array_equal(logits, expected)
    if h:
        with pytest.raises(ParameterError, match=f"token id {V} is outside"):
            scheme.bias_(logits[:1], [[V] * h])
    with pytest.raises(ParameterError, match="bias_ is for lefthash"):
        make(context_width=2, seeding="selfhash").bias_(logits, [[1, 2]])


@pytest.mark.parametrize("combine", ["hash", "min"])
@pytest.mark.parametrize("h", [0, 1, 2, 3, 4])
def test_lefthash_bias_adds_delta_exactly_to_detected_green(h: int, combine: str) -> None:
    params = {"context_width": h, "combine": combine, "n_lists": 64, "delta": 1.5}
    gen, det = make(**params), make(**params)
    rng = np.random.default_rng(100 + h)
    B, c = 3, h + 5
    contexts = rng.integers(0, V, size=(B, c))
    logits = rng.normal(size=(B, V)).astype(np.float32)
    out = gen.bias(logits, contexts)
    assert out.dtype == np.float32 and out.shape == logits.shape
    all_tokens = np.arange(V)
    for b in range(B):
        green = _green_after(det, contexts[b], all_tokens)
        assert 0.2 < green.mean() < 0.3
        expected = logits[b].copy()
        expected[green] += np.float32(1.5)
        np.testing.assert_array_equal(out[b], expected)


@pytest.mark.parametrize("combine", ["hash", "min"])
@pytest.mark.parametrize("h", [1, 3])
def test_selfhash_bias_adds_delta_to_green_top_k(h: int, combine: str) -> None:
    params = {"context_width": h, "seeding": "selfhash", "combine": combine, "n_lists": 64,
              "top_k": 40}
    gen, det = make(**params), make(**params)
    rng = np.random.default_rng(200 + h)
    B = 4
    contexts = rng.integers(0, V, size=(B, h + 2))
    logits = rng.normal(size=(B, V))
    out = gen.bias(logits, contexts)
    n_green = 0
    for b in range(B):
        top = np.argsort(-logits[b])[:40]
        green = _green_after(det, contexts[b], top)
        n_green += int(green.sum())
        expected = logits[b].copy()
        expected[top[green]] += 2.0
        np.testing.assert_array_equal(out[b], expected)
    assert n_green > 0


def test_bias_reads_only_the_last_h_context_tokens() -> None:
    g = make(context_width=2, n_lists=64)
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(2, V))
    tail = rng.integers(0, V, size=2)
    a = np.concatenate([rng.integers(0, V, size=(2, 6)), np.tile(tail, (2, 1))], axis=1)
    a[1, :6] = rng.integers(0, V, size=6)
    assert not np.array_equal(a[0, :6], a[1, :6])
    boosted = g.bias(logits, a) != logits
    np.testing.assert_array_equal(boosted[0], boosted[1])
    assert 0.2 < boosted[0].mean() < 0.3


def test_bias_leaves_short_contexts_and_zero_delta_alone() -> None:
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(2, V))
    g = make(context_width=3, n_lists=64)
    np.testing.assert_array_equal(g.bias(logits, rng.integers(0, V, size=(2, 2))), logits)
    g0 = make(context_width=1, n_lists=64, delta=0.0)
    np.testing.assert_array_equal(g0.bias(logits, rng.integers(0, V, size=(2, 3))), logits)
    # the input is never modified in place
    before = logits.copy()
    make(context_width=1, n_lists=64).bias(logits, rng.integers(0, V, size=(2, 1)))
    np.testing.assert_array_equal(logits, before)


# -- (d), (e) statistics of the table and of the rows --------------------------------------------

def test_table_green_fraction_default_size() -> None:
    g = make(gamma=0.25, n_lists=1024)
    table = g.table
    assert table.shape == (1024, V) and table.dtype == bool
    assert g.gamma_effective == 0.25
    res = stats.binomtest(int(np.count_nonzero(table)), table.size, g.gamma_effective)
    assert res.pvalue > 1e-3
    # the rows are different lists
    assert np.unique(np.packbits(table, axis=1), axis=0).shape[0] == 1024


@pytest.mark.parametrize("gamma", [0.1, 0.3, 0.5, 0.9])
def test_table_green_fraction_and_gamma_effective(gamma: float) -> None:
    g = make(gamma=gamma, n_lists=64)
    assert g.threshold == round(gamma * 2**32)
    assert g.gamma_effective == round(gamma * 2**32) / 2**32
    assert abs(g.gamma_effective - gamma) < 2**-32
    table = g.table
    res = stats.binomtest(int(np.count_nonzero(table)), table.size, g.gamma_effective)
    assert res.pvalue > 1e-3
    # each row, too, is near gamma (a 1e-6 bound for each of the 64 rows)
    lo, hi = stats.binom.ppf([1e-6, 1 - 1e-6], V, g.gamma_effective)
    per_row = table.sum(axis=1)
    assert np.all((per_row >= lo) & (per_row <= hi))


def test_rows_of_single_tokens_spread_evenly() -> None:
    g = make(context_width=1, n_lists=1024)
    rows = g.rows(np.arange(V)[:, None])
    assert rows.min() >= 0 and rows.max() < 1024
    counts = np.bincount(rows, minlength=1024)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("params", [
    {"context_width": 2, "combine": "hash"}, {"context_width": 4, "combine": "hash"},
    {"context_width": 2, "seeding": "selfhash", "combine": "hash"},
])
def test_rows_of_windows_spread_evenly(params: dict[str, Any]) -> None:
    g = make(n_lists=256, **params)
    rng = np.random.default_rng(12)
    windows = rng.integers(0, V, size=(100_000, g.window))
    counts = np.bincount(g.rows(windows), minlength=256)
    assert counts.size == 256
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("params", [
    {"context_width": 2, "combine": "min"}, {"context_width": 4, "combine": "min"},
    {"context_width": 3, "seeding": "selfhash", "combine": "min"},
])
def test_min_combine_row_is_the_row_of_the_minimising_token(params: dict[str, Any]) -> None:
    # "min" is a min-hash: the row of a window is the one-token row of its token with the
    # smallest keyed value, so its spread over lists is that of the (evenly spread) token rows,
    # weighted by how often each token is a window's minimum
    g = make(n_lists=256, **params)
    single = make(n_lists=256, context_width=1)
    P = prf.u64_stream(prf.derive_subkey(SECRET, "greenlist/token-values"), V)
    rng = np.random.default_rng(12)
    windows = rng.integers(0, V, size=(20_000, g.window))
    argmin_token = windows[np.arange(windows.shape[0]), np.argmin(P[windows], axis=1)]
    np.testing.assert_array_equal(g.rows(windows), single.rows(argmin_token[:, None]))
    # so editing a token that is not the minimum keeps the row
    edited = windows.copy()
    not_min = (np.argmin(P[windows], axis=1) + 1) % g.window
    edited[np.arange(windows.shape[0]), not_min] = np.argmax(P)  # the largest keyed value
    np.testing.assert_array_equal(g.rows(edited), g.rows(windows))
    hashed = make(n_lists=256, context_width=g.context_width, seeding=g.params.seeding,
                  combine="hash")
    assert np.mean(hashed.rows(edited) == hashed.rows(windows)) < 0.05


def test_hash_combine_depends_on_order_and_min_does_not() -> None:
    rng = np.random.default_rng(13)
    w = rng.integers(0, V, size=(2000, 2))
    swapped = w[:, ::-1]
    hashed = make(context_width=2, n_lists=1024, combine="hash")
    mins = make(context_width=2, n_lists=1024, combine="min")
    assert np.mean(hashed.rows(w) == hashed.rows(swapped)) < 0.01
    np.testing.assert_array_equal(mins.rows(w), mins.rows(swapped))


# -- (f) parameter validation ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "value", "message"), [
    ("gamma", 0, "`gamma` must be in (0, 1), got 0"),
    ("gamma", 1, "`gamma` must be in (0, 1), got 1"),
    ("gamma", 1.5, "`gamma` must be in (0, 1), got 1.5"),
    ("gamma", -0.25, "`gamma` must be in (0, 1), got -0.25"),
    ("gamma", float("nan"), "`gamma` must be a finite number, got nan"),
    ("gamma", "0.25", "`gamma` must be a finite number, got '0.25'"),
    ("delta", -1.0, "`delta` must be >= 0, got -1.0"),
    ("delta", float("inf"), "`delta` must be a finite number, got inf"),
    ("context_width", 9, "`context_width` must be in 0..8, got 9"),
    ("context_width", -1, "`context_width` must be in 0..8, got -1"),
    ("context_width", 1.0, "`context_width` must be an integer, got 1.0"),
    ("context_width", True, "`context_width` must be an integer, got True"),
    ("seeding", "righthash", "`seeding` must be one of lefthash, selfhash, got 'righthash'"),
    ("combine", "max", "`combine` must be one of hash, min, got 'max'"),
    ("n_lists", 1000, "`n_lists` must be a power of two in 1..65536, got 1000"),
    ("n_lists", 0, "`n_lists` must be a power of two in 1..65536, got 0"),
    ("n_lists", 131072, "`n_lists` must be a power of two in 1..65536, got 131072"),
    ("top_k", 0, "`top_k` must be >= 1, got 0"),
])
def test_parameter_errors(name: str, value: Any, message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        GreenListParams(**{name: value})
    assert str(exc.value) == message
    assert isinstance(exc.value, ValueError)


def test_selfhash_needs_context() -> None:
    with pytest.raises(ParameterError, match="`context_width` must be >= 1 with seeding 'selfhash'"):
        GreenListParams(context_width=0, seeding="selfhash")


def test_parameter_errors_through_spec(spec_factory: Callable[..., WatermarkSpec]) -> None:
    with pytest.raises(SpecError, match="`n_lists` must be a power of two"):
        spec_factory(n_lists=1000)
    with pytest.raises(ParameterError, match="unknown greenlist parameter\\(s\\): h"):
        GreenListParams.from_mapping({"h": 2})
    with pytest.raises(ParameterError, match="`vocab_size` must be an integer >= 2, got 1"):
        GreenList(SECRET, GreenListParams(), 1)


def test_scheme_for_spec_is_the_same_scheme(spec_factory: Callable[..., WatermarkSpec]) -> None:
    spec = spec_factory(context_width=2, n_lists=1024)
    scheme = scheme_for(spec)
    assert isinstance(scheme, GreenList) and scheme.key_id == spec.key_id
    assert scheme.vocab_size == V
    assert scheme.tuple_keys(np.array(KAT_IDS)).tolist() == KAT["h2-hash"]["keys"]
    assert SECRET.hex() not in repr(scheme) and repr(SECRET) not in repr(scheme)


# -- (g) logits wider or narrower than the vocabulary ---------------------------------------------

@pytest.mark.parametrize("params", [
    {"context_width": 1, "n_lists": 64},
    {"context_width": 2, "seeding": "selfhash", "n_lists": 64},
])
def test_padded_logits_extra_columns_untouched(params: dict[str, Any]) -> None:
    g = make(**params)
    rng = np.random.default_rng(14)
    logits = rng.normal(size=(3, V + 64))
    logits[:, V:] = 50.0 + rng.normal(size=(3, 64))  # the padding would win top-k if it could
    contexts = rng.integers(0, V, size=(3, 4))
    out = g.bias(logits, contexts)
    assert out.shape == logits.shape
    np.testing.assert_array_equal(out[:, V:], logits[:, V:])
    np.testing.assert_array_equal(out[:, :V], g.bias(logits[:, :V], contexts))
    assert np.count_nonzero(out[:, :V] != logits[:, :V]) > 0


def test_narrow_logits_refused() -> None:
    g = make(n_lists=64)
    with pytest.raises(ParameterError, match=f"logits width {V - 1} is smaller than the spec's "
                                             f"vocab_size {V}"):
        g.bias(np.zeros((1, V - 1)), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ParameterError, match="`logits` must be \\(B, W\\)"):
        g.bias(np.zeros(V), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ParameterError, match="`logits` must be \\(B, W\\)"):
        g.bias(np.zeros((2, V)), np.zeros((3, 2), dtype=np.int64))


# -- (h) token ids out of range ----------------------------------------------------------------------

@pytest.mark.parametrize("bad", [V, V + 1000, -1])
@pytest.mark.parametrize("params", [
    {"context_width": 0}, {"context_width": 1}, {"context_width": 2},
    {"context_width": 2, "seeding": "selfhash"},
])
def test_out_of_range_ids_in_detection(bad: int, params: dict[str, Any]) -> None:
    g = make(n_lists=64, **params)
    ids = np.array([5, 6, 7, bad, 8, 9])
    with pytest.raises(ParameterError) as exc:
        g.tuple_keys(ids)
    assert f"token id {bad} is outside the spec's vocabulary 0..{V - 1}" in str(exc.value)


@pytest.mark.parametrize("bad", [V, -3])
@pytest.mark.parametrize("params", [
    {"context_width": 1}, {"context_width": 3},
    {"context_width": 2, "seeding": "selfhash"},
])
def test_out_of_range_ids_in_generation(bad: int, params: dict[str, Any]) -> None:
    g = make(n_lists=64, **params)
    contexts = np.array([[1, 2, 3, 4], [5, 6, 7, bad]])
    with pytest.raises(ParameterError, match=f"token id {bad} is outside"):
        g.bias(np.zeros((2, V)), contexts)
    with pytest.raises(ParameterError, match=f"token id {bad} is outside"):
        g.rows(np.full((1, g.window), bad))


def test_tuple_keys_shapes_and_input_checks() -> None:
    g = make(context_width=2, n_lists=64)
    assert g.tuple_keys(np.array([1, 2])).shape == (0,)
    assert g.tuple_keys(np.array([], dtype=np.int64)).shape == (0,)
    assert g.tuple_keys(np.array([1, 2, 3])).shape == (1,)
    assert g.green_indicators(np.array([1, 2, 3, 4])).shape == (2,)
    with pytest.raises(ParameterError, match="`ids` must be 1-D"):
        g.tuple_keys(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ParameterError, match="`ids` must hold integers"):
        g.tuple_keys(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ParameterError, match="windows must have 2 tokens, got 3"):
        g.rows(np.zeros((1, 3), dtype=np.int64))
