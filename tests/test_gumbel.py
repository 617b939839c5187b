"""The Gumbel-max (EXP) scheme: known answers, the documented construction, generation equal to
its definition, unbiasedness over keys, null calibration on human text, power, the engine
adapters, the gamma test's deep tail and parameter validation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import special, stats

from distillmark.verify import detect_ids
from distillmark.verify.nulls import gamma_test, run_test
from distillmark.verify.stats import _log_gammaincc_cf, log_gammaincc
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    Gumbel,
    GumbelParams,
    ParameterError,
    SpecError,
    load_tokenizer,
    new_spec,
    prf,
    scheme_for,
)
from distillmark.watermark.context import ContextRows
from distillmark.watermark.gumbel import uniforms_from_u64

SECRET = bytes(range(32))
V = 49152  # the builtin SmolLM2 tokenizer's vocabulary


def make(secret: bytes = SECRET, vocab_size: int = V, **params: Any) -> Gumbel:
    return Gumbel(secret, GumbelParams(**params), vocab_size)


_SHARED: dict[tuple[tuple[str, Any], ...], Gumbel] = {}


def shared(**params: Any) -> Gumbel:
    """One scheme per parameter set for SECRET, kept for the session (its generation table is
    built once); for tests that do not care whether the table exists."""
    key = tuple(sorted(params.items()))
    if key not in _SHARED:
        _SHARED[key] = make(**params)
    return _SHARED[key]


def kat_logits(case: int) -> np.ndarray:
    """Deterministic float32 logits ``(V,)`` in [0, 16) for a case (no RNG involved)."""
    i = np.arange(V, dtype=np.float64)
    return (16.0 * ((i * 0.6180339887498949 + 0.1 * case) % 1.0)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Known answers (recorded from the implementation for SECRET and V = 49152; parameters pinned
# explicitly: a change of the defaults must not silently change the vectors)

KAT_CELLS = [0, 1, 2, 49151, 49152, 256 * V - 1]
#: r * 2**53 of those cells: odd integers, r itself is exact in float64.
KAT_R_TIMES_2_53 = [803363126905767, 1412761933188807, 6118187645324805, 1209883106222419,
                    7787561761115479, 4440975190460785]
KAT_IDS = [0, 1, 2, 100, 49151, 7, 7, 7, 12345, 100, 49151]
KAT_KEYS = {
    "h0": ({"context_width": 0}, [0, 1, 2, 100, 49151, 7, 7, 7, 12345, 100, 49151]),
    "h1": ({"context_width": 1}, [11993089, 3784706, 4276324, 2113535, 1179655, 9535495, 9535495, 9547833,
                9977956, 2113535]),
    "h2-hash": ({"context_width": 2}, [9437186, 7815268, 10764287, 9928711, 6094855, 10960903,
                                       10973241, 442468, 10911743]),
    "h2-min": ({"context_width": 2, "combine": "min"},
               [11993090, 4276324, 4325375, 1179655, 1179655, 9535495, 9547833, 9535588,
                2113535]),
}
KAT_CONTEXTS = [[1, 2, 3, 4, 5], [49151, 0, 17, 17, 17], [9707, 28, 260, 1012, 3211],
                [31, 31, 31, 31, 31]]
#: (params, temperature, top_p) -> the token chosen for kat_logits(0..3) after KAT_CONTEXTS.
KAT_CHOICES = [
    ({"context_width": 1}, 1.0, 1.0, [14868, 10606, 37229, 438]),
    ({"context_width": 1}, 0.7, 0.9, [14868, 10606, 37229, 438]),
    ({"context_width": 1}, 1.5, 0.5, [21659, 10606, 37229, 438]),
    ({"context_width": 1}, 0.0, 1.0, [46368, 8179, 16358, 24537]),  # greedy: largest logits
    ({"context_width": 2, "top_k": 40}, 1.0, 1.0, [43174, 9166, 35056, 7813]),
    ({"context_width": 2, "top_k": 40}, 1.5, 0.5, [33825, 46185, 3815, 49013]),
]


def test_known_uniforms() -> None:
    r = make(context_width=1).uniforms(np.array(KAT_CELLS))
    assert r.dtype == np.float64
    assert [int(x) for x in r * 2.0**53] == KAT_R_TIMES_2_53
    np.testing.assert_array_equal(r * 2.0**53, np.array(KAT_R_TIMES_2_53, dtype=np.float64))


@pytest.mark.parametrize("case", sorted(KAT_KEYS))
def test_known_tuple_keys(case: str) -> None:
    params, keys = KAT_KEYS[case]
    assert make(**params).tuple_keys(np.array(KAT_IDS)).tolist() == keys


@pytest.mark.parametrize(("params", "temperature", "top_p", "expected"), KAT_CHOICES)
def test_known_choices(params: dict[str, Any], temperature: float, top_p: float,
                       expected: list[int]) -> None:
    logits = np.stack([kat_logits(c) for c in range(4)])
    out = shared(**params).process(logits, np.array(KAT_CONTEXTS), temperature=temperature,
                                 top_p=top_p)
    assert out.shape == logits.shape and out.dtype == np.float32
    assert np.argmax(out, axis=1).tolist() == expected
    # one-hot: 0 at the choice, -inf everywhere else
    assert (out == 0.0).sum(axis=1).tolist() == [1] * 4
    assert np.isneginf(out).sum() == 4 * (V - 1)


# --------------------------------------------------------------------------------------------
# The documented construction


def test_uniforms_are_the_documented_map_of_the_prf_stream() -> None:
    g = make(n_lists=4)
    u = prf.u64_stream(prf.derive_subkey(SECRET, "gumbel/table"), 4 * V)
    r = uniforms_from_u64(u)
    # every value is (2k + 1) 2**-53 with k = u >> 12: exact, odd numerators, inside (0, 1)
    k = (u >> np.uint64(12)).astype(np.int64)
    np.testing.assert_array_equal(r * 2.0**53, (2 * k + 1).astype(np.float64))
    assert r.min() > 0.0 and r.max() < 1.0
    cells = np.random.default_rng(0).integers(0, 4 * V, size=1000)
    np.testing.assert_array_equal(g.uniforms(cells), r[cells])
    np.testing.assert_array_equal(g.key_scores(cells.astype(np.uint64)), r[cells])
    # the generation table is float32(-log r), cell by cell
    np.testing.assert_array_equal(g.table, (-np.log(r)).astype(np.float32).reshape(4, V))
    # the bulk path (many keys at once) reads the same stream
    many = np.random.default_rng(1).integers(0, 4 * V, size=300_000)
    np.testing.assert_array_equal(g.uniforms(many), r[many])


def test_extreme_uniforms_are_exact_and_symmetric() -> None:
    u = np.array([0, (1 << 12) - 1, (1 << 64) - 1, 1 << 63], dtype=np.uint64)
    r = uniforms_from_u64(u)
    assert r.tolist() == [2.0**-53, 2.0**-53, 1.0 - 2.0**-53, 0.5 + 2.0**-53]
    assert (1.0 - r).tolist() == [1.0 - 2.0**-53, 1.0 - 2.0**-53, 2.0**-53, 0.5 - 2.0**-53]
    assert np.isfinite(np.log(r)).all() and np.isfinite(np.log1p(-r)).all()


@pytest.mark.parametrize("params", [{}, {"context_width": 3, "combine": "min"},
                                    {"context_width": 0}])
def test_tuple_keys_are_context_rows_of_the_documented_sub_key(params: dict[str, Any]) -> None:
    g = make(**params)
    h = g.context_width
    rows = ContextRows(prf.derive_subkey(SECRET, "gumbel/token-values"), V, context_width=h,
                       selfhash=False, combine=g.params.combine, n_rows=g.n_rows)
    ids = np.random.default_rng(2).integers(0, V, size=300)
    np.testing.assert_array_equal(g.tuple_keys(ids), rows.tuple_keys(ids))
    # generation's row for a context is the row detection scores the next token against
    ctx = np.stack([ids[i - h:i] for i in range(h, 300)])
    np.testing.assert_array_equal(g.context_rows(ctx) * V + ids[h:], g.tuple_keys(ids))


# --------------------------------------------------------------------------------------------
# Generation equals its definition: argmax_t r_t ** (1 / p_t)


def _reference_choice(g: Gumbel, p: np.ndarray, row: int) -> int:
    """argmax over p_t > 0 of log(r_t) / p_t, from the whole exact row of the PRF stream."""
    u = prf.u64_stream(prf.derive_subkey(SECRET, "gumbel/table"), V, start=row * V)
    r = uniforms_from_u64(u)
    with np.errstate(divide="ignore"):
        score = np.where(p > 0, np.log(r) / p, -np.inf)
    return int(np.argmax(score))


def _reference_distribution(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Softmax of logits / T, restricted to the nucleus (written independently of the scheme)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    n_keep = int(np.searchsorted(cum, top_p, side="left")) + 1 if top_p < 1 else p.size
    out = np.zeros_like(p)
    out[order[:n_keep]] = p[order[:n_keep]]
    return out / out.sum()


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (1.3, 0.6)])
def test_generation_is_the_argmax_of_r_to_the_one_over_p(temperature: float,
                                                          top_p: float) -> None:
    g = shared()
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((6, V)) * 2.5).astype(np.float32)
    ctx = rng.integers(0, V, size=(6, 7))
    p = g.distribution(logits, temperature=temperature, top_p=top_p)
    for b in range(6):
        np.testing.assert_allclose(p[b], _reference_distribution(logits[b], temperature, top_p),
                                   rtol=1e-12, atol=1e-300)
    rows = g.context_rows(ctx)
    chosen = np.argmax(g.process(logits, ctx, temperature=temperature, top_p=top_p), axis=1)
    for b in range(6):
        assert chosen[b] == _reference_choice(g, p[b], int(rows[b]))
        # detection scores exactly this cell: the chosen token's r is the largest r^(1/p)
        seq = np.concatenate([ctx[b], [chosen[b]]])
        r_chosen = g.token_uniforms(seq)[-1]
        r_row = g.uniforms(np.arange(V) + int(rows[b]) * V)
        assert r_chosen == r_row[chosen[b]]
        support = p[b] > 0
        best = np.max(r_row[support] ** (1 / p[b, support]))
        assert r_chosen ** (1 / p[b, chosen[b]]) == pytest.approx(best, rel=1e-13)


def test_table_path_and_exact_path_agree() -> None:
    """With few tokens of nonzero probability the choice is computed from exact values alone;
    with the float32 table it is refined exactly: both give the same token."""
    rng = np.random.default_rng(4)
    fresh, tabled = make(), shared()
    assert tabled.table.shape == (256, V)
    for _ in range(20):
        logits = np.full((4, V), -np.inf, dtype=np.float32)
        for b in range(4):
            support = rng.choice(V, size=int(rng.integers(2, 300)), replace=False)
            logits[b, support] = rng.standard_normal(support.size) * 3
        ctx = rng.integers(0, V, size=(4, 3))
        a = fresh.process(logits, ctx, temperature=0.9, top_p=0.95)
        b = tabled.process(logits, ctx, temperature=0.9, top_p=0.95)
        np.testing.assert_array_equal(a, b)
    assert "table" not in fresh.__dict__  # the exact path never built the table


def test_near_tie_below_float32_resolution_is_decided_exactly() -> None:
    g = shared()
    row = 7
    e = -np.log(g.uniforms(np.arange(V) + row * V))
    delta = g.table[row].astype(np.float64) / e - 1.0  # float32's relative rounding per cell
    a, b = int(np.argmin(delta)), int(np.argmax(delta))
    assert delta[b] - delta[a] > 5e-8
    # p_b chosen so that b's exact ratio E_b / p_b is smaller by a relative 1e-9 (b wins),
    # while float32 ranks a first
    p = np.zeros((1, V))
    p[0, a] = 0.5
    p[0, b] = 0.5 * e[b] / e[a] * (1 + 1e-9)
    p /= p.sum()
    assert g.table[row, b] / p[0, b] > g.table[row, a] / p[0, a]
    assert e[b] / p[0, b] < e[a] / p[0, a]
    assert g.choose(p, np.array([row])).tolist() == [b]
    assert make().choose(p, np.array([row])).tolist() == [b]  # exact path, no table


def test_fewer_than_h_context_tokens_use_row_zero() -> None:
    g = make(context_width=3, n_lists=16)
    assert g.context_rows(np.array([[5, 6]])).tolist() == [0]
    logits = np.stack([kat_logits(1)])
    out = g.process(logits, np.array([[5, 6]]))
    p = g.distribution(logits)
    assert int(np.argmax(out)) == _reference_choice(g, p[0], 0)


def test_same_context_and_distribution_repeat_the_choice_and_padded_columns_stay_out() -> None:
    g = shared(context_width=1)
    logits = np.concatenate([kat_logits(2), np.full(64, 100.0, dtype=np.float32)])[None, :]
    ctx = np.array([[1, 2, 3]])
    out = g.process(logits, ctx)
    assert out.shape == (1, V + 64)
    assert int(np.argmax(out)) < V and np.isneginf(out[0, V:]).all()
    np.testing.assert_array_equal(g.process(logits, ctx), out)
    np.testing.assert_array_equal(g.process(logits, np.array([[9, 9, 3]])), out)  # h = 1
    assert g.context_rows(np.array([[1, 2, 3], [9, 9, 3]])).tolist() == [int(g.rows(np.array([3])))] * 2


# --------------------------------------------------------------------------------------------
# Unbiasedness: averaged over keys, the chosen token is distributed as p

N_KEYS = 4000
#: A small vocabulary keeps 12,000 keyed choices fast; cells of tokens with p = 0 are never read,
#: so V does not enter the argument.
V_SMALL = 1024
UNBIASED_LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5])
UNBIASED_TOKENS = np.array([17, 99, 256, 300, 512, 700, 900, 1023])
UNBIASED_CASES = [  # (top_k parameter, temperature, top_p)
    (0, 1.0, 1.0),
    (0, 0.7, 0.9),
    (6, 1.3, 1.0),
]


def _expected(top_k: int, temperature: float, top_p: float) -> np.ndarray:
    z = UNBIASED_LOGITS / temperature
    if top_k:
        z = np.where(z >= np.sort(z)[::-1][top_k - 1], z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    p[order[before >= top_p]] = 0.0
    return p / p.sum()


def test_choice_is_unbiased_over_keys() -> None:
    rng = np.random.default_rng(20261201)
    logits = np.full((1, V_SMALL), -np.inf, dtype=np.float32)
    logits[0, UNBIASED_TOKENS] = UNBIASED_LOGITS
    ctx = np.array([[101, 202]])
    counts = np.zeros((len(UNBIASED_CASES), 8), dtype=np.int64)
    index = {int(t): i for i, t in enumerate(UNBIASED_TOKENS)}
    for _ in range(N_KEYS):
        secret = rng.bytes(32)
        schemes = {k: make(secret, V_SMALL, top_k=k) for k in {c[0] for c in UNBIASED_CASES}}
        for c, (top_k, temperature, top_p) in enumerate(UNBIASED_CASES):
            out = schemes[top_k].process(logits, ctx, temperature=temperature, top_p=top_p)
            counts[c, index[int(np.argmax(out))]] += 1
    for c, case in enumerate(UNBIASED_CASES):
        p = _expected(*case)
        kept = p > 0
        assert counts[c, ~kept].sum() == 0  # outside top-k / the nucleus: never chosen
        res = stats.chisquare(counts[c, kept], N_KEYS * p[kept])
        assert res.pvalue > 1e-3, (case, counts[c].tolist(), res.pvalue)
    # the check can fail: a chooser that ignored p (argmax of r alone) picks each token 1/8 of
    # the time, far from p
    assert stats.chisquare(np.full(8, N_KEYS // 8), N_KEYS * _expected(0, 1.0, 1.0)).pvalue < 1e-9


# --------------------------------------------------------------------------------------------
# Null calibration on human text

N_TEXTS, KEYS_PER_TEXT = 200, 2


@pytest.fixture(scope="module")
def human_ids(human_texts: list[str]) -> list[np.ndarray]:
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    rng = np.random.default_rng(20261130)
    chosen = np.sort(rng.choice(len(human_texts), size=N_TEXTS, replace=False))
    return [np.asarray(tok.encode(human_texts[i], add_special_tokens=False).ids, dtype=np.int64)
            for i in chosen]


@pytest.mark.parametrize("h", [1, 2])
def test_null_calibration_on_human_text(h: int, human_ids: list[np.ndarray]) -> None:
    # every (text, key) pair has its own key: p-values of one key over several texts would be
    # dependent (common phrases hit the same cells)
    rng = np.random.default_rng(3000 + h)
    results, raw = [], []
    for ids in human_ids:
        for _ in range(KEYS_PER_TEXT):
            g = make(rng.bytes(32), context_width=h)
            results.append(detect_ids(ids, g))
            if h == 1:
                raw.append(detect_ids(ids, g, dedup=False))
    n = len(results)
    assert n == N_TEXTS * KEYS_PER_TEXT
    assert min(r.n_scored for r in results) >= 25
    assert all(r.test == "gamma" and r.scheme == "gumbel" for r in results)
    pvalues = np.array([r.pvalue for r in results])
    # continuous scores: the exact p-values are uniform under the null
    ks = stats.kstest(pvalues, "uniform")
    assert ks.pvalue > 1e-3, ks
    alpha = 0.01
    false_pos = int(np.sum(pvalues < alpha))
    assert stats.binomtest(false_pos, n, alpha).pvalue > 1e-3, false_pos
    assert abs(np.mean([r.score_mean for r in results]) - 1.0) < 0.05
    if h == 1:  # the same check rejects a test that counts repeated tuples: it can fail
        assert stats.kstest([r.pvalue for r in raw], "uniform").pvalue < 1e-3


# --------------------------------------------------------------------------------------------
# Power: a toy language model sampled through `process`

LM_SEED = 77
N_SEQ, N_NEW, N_CAND = 10, 200, 500
#: Logits of the 500 tokens a context allows, most likely first: entropy 1.01 nats per token.
_PROFILE = -2.5 * np.log(np.arange(1, N_CAND + 1))


def _lm(context: np.ndarray) -> np.ndarray:
    """A fixed random 'language model': the 500 tokens it can emit after the last two tokens of
    ``context``, most likely first (logits ``_PROFILE``, every other token impossible)."""
    g = np.random.default_rng([LM_SEED, int(context[-2]), int(context[-1])])
    return g.choice(V, size=N_CAND, replace=False)


def _sample(scheme: Gumbel | None, seed: int) -> np.ndarray:
    """N_SEQ sequences of a 2-token prompt and N_NEW tokens at temperature 1: through
    ``scheme.process`` on the full ``(N_SEQ, V)`` logits, or by plain sampling."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, V, size=(N_SEQ, 2))
    logits = np.full((N_SEQ, V), -np.inf, dtype=np.float32)
    cdf = np.cumsum(np.exp(_PROFILE))
    for _ in range(N_NEW):
        cands = [_lm(s) for s in seqs]
        if scheme is None:
            nxt = np.array([c[np.searchsorted(cdf, rng.random() * cdf[-1])] for c in cands])
        else:
            for b, cand in enumerate(cands):
                logits[b, cand] = _PROFILE
            nxt = np.argmax(scheme.process(logits, seqs, temperature=1.0), axis=1)
            for b, cand in enumerate(cands):
                logits[b, cand] = -np.inf
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
    return seqs


@pytest.fixture(scope="module")
def marked() -> np.ndarray:
    """Watermarked samples of the toy model with the default parameters and SECRET."""
    spec = new_spec("gumbel", {}, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=SECRET)
    generator = scheme_for(spec)
    assert isinstance(generator, Gumbel)
    return _sample(generator, seed=5)


def test_power_on_watermarked_samples(marked: np.ndarray) -> None:
    p = np.exp(_PROFILE - _PROFILE.max())
    p /= p.sum()
    assert 0.95 < -(p * np.log(p)).sum() < 1.05  # about one nat per token
    spec = new_spec("gumbel", {}, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=SECRET)
    detector = scheme_for(spec)  # not the object that generated
    plain = _sample(None, seed=5)
    hits = [detect_ids(s, detector, prompt_len=2) for s in marked]
    misses = [detect_ids(s, detector, prompt_len=2) for s in plain]
    assert all(r.n_tokens == N_NEW and r.n_scored >= 150 for r in hits + misses)
    assert sum(r.is_watermarked(1e-6) for r in hits) >= 9
    assert not any(r.is_watermarked(1e-3) for r in misses)
    assert np.mean([r.score_mean for r in hits]) > 1.3
    other = make(bytes(range(1, 33)))
    assert not any(detect_ids(s, other, prompt_len=2).is_watermarked(1e-3) for s in marked)


# --------------------------------------------------------------------------------------------
# Engine adapters

IM_END = "<|im_end|>"
HF_PROMPTS = ["Explain why the sky is blue.", "Write a poem about the sea",
              "List three prime numbers and explain why each is prime."]


@pytest.fixture(scope="module")
def tiny_lm() -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from distillmark.watermark import hf
    from distillmark.watermark.tokenizer import builtin_tokenizer_path

    torch.manual_seed(4321)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2,
                                   intermediate_size=64, max_position_embeddings=512,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                               eos_token=IM_END, pad_token=IM_END)
    return hf.LoadedModel(model=model, tokenizer=tok, source="tiny")


@pytest.fixture(scope="module")
def hf_scheme() -> Gumbel:
    return make(bytes(range(3, 35)))


def test_hf_processor_equals_numpy_process(hf_scheme: Gumbel) -> None:
    torch = pytest.importorskip("torch")
    from distillmark.watermark import hf

    g = hf_scheme
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 9), generator=gen)
    scores = torch.randn(3, V + 32, generator=gen) * 3
    proc = hf.WatermarkLogitsProcessor(g, temperature=0.7, top_p=0.9)
    out = proc(ids, scores.clone())
    expected = g.process(scores[:, :V].numpy(), ids.numpy(), temperature=0.7, top_p=0.9)
    np.testing.assert_array_equal(out[:, :V].numpy(), expected)
    assert torch.isneginf(out[:, V:]).all()


def test_hf_generate_is_detected_and_deterministic(tiny_lm: Any, hf_scheme: Gumbel) -> None:
    outs = tiny_lm.generate(HF_PROMPTS, scheme=hf_scheme, max_new_tokens=30, temperature=0.7,
                            top_p=0.9, batch_size=3, seed=0)
    for o in outs:
        assert len(o.completion_ids) >= 20
        r = detect_ids(np.array(o.prompt_ids + o.completion_ids), hf_scheme,
                       prompt_len=len(o.prompt_ids))
        assert r.n_tokens == len(o.completion_ids)
        assert r.log10_pvalue < -6, r
    # the key fixes every choice: another sampler seed gives the same text
    again = tiny_lm.generate(HF_PROMPTS, scheme=hf_scheme, max_new_tokens=30, temperature=0.7,
                             top_p=0.9, batch_size=3, seed=1)
    assert [o.completion_ids for o in again] == [o.completion_ids for o in outs]


def test_hf_generate_without_the_scheme_is_not_detected(tiny_lm: Any,
                                                         hf_scheme: Gumbel) -> None:
    for o in tiny_lm.generate(HF_PROMPTS, scheme=None, max_new_tokens=30, batch_size=3, seed=0):
        r = detect_ids(np.array(o.prompt_ids + o.completion_ids), hf_scheme,
                       prompt_len=len(o.prompt_ids), min_scored=1)
        assert not r.is_watermarked(1e-3)


def test_llamacpp_processor_equals_numpy_process() -> None:
    pytest.importorskip("llama_cpp")
    from distillmark.watermark.llamacpp import LlamaCppWatermark

    g = make(context_width=2, n_lists=16)
    rng = np.random.default_rng(6)
    proc = LlamaCppWatermark(g, temperature=0.8, top_p=0.95)
    for n_vocab in (V, V + 16):
        ids = rng.integers(0, V, size=12).astype(np.intc)
        scores = (rng.standard_normal(n_vocab) * 3).astype(np.float32)
        out = proc(ids, scores.copy())
        expected = g.process(scores[None, :V], ids[None, :].astype(np.int64), temperature=0.8,
                             top_p=0.95)[0]
        assert out.dtype == np.float32 and out.shape == (n_vocab,)
        np.testing.assert_array_equal(out[:V], expected)
        assert np.isneginf(out[V:]).all()


# --------------------------------------------------------------------------------------------
# The gamma test and its deep tail

#: log10 Q(a, x), computed with mpmath at 40 digits.
MPMATH_LOG10_Q = [
    (200, 2000.0, -584.2343636419409088517621),
    (1000, 3000.0, -393.668190482121953615032),
    (25, 1500.0, -599.0012381838837804521641),
    (1_000_000, 1_050_000.0, -527.523267415413470234146),
    (50, 10_000.0, -4209.726790841755199776359),
]


@pytest.mark.parametrize(("a", "x", "log10_q"), MPMATH_LOG10_Q)
def test_log_gammaincc_known_deep_tail_values(a: int, x: float, log10_q: float) -> None:
    assert special.gammaincc(a, x) < 1e-300  # scipy underflows or nearly: the deep-tail path
    assert log_gammaincc(a, x) / math.log(10) == pytest.approx(log10_q, rel=1e-13)


@pytest.mark.parametrize("a", [1, 2, 7, 40, 300, 5000])
def test_log_gammaincc_matches_the_poisson_sum_for_integer_a(a: int) -> None:
    # Q(n, x) = P(Poisson(x) <= n - 1), a finite sum evaluated in log space
    for x in (a + 10.0 * math.sqrt(a) + 50, 3.0 * a + 800, 20.0 * a + 2000):
        ref = float(special.logsumexp(stats.poisson.logpmf(np.arange(a), x)))
        assert log_gammaincc(a, x) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert log_gammaincc(1, 1234.5) == -1234.5  # Q(1, x) = e^-x exactly


def test_continued_fraction_matches_scipy_where_representable() -> None:
    for a in (1, 3, 30, 200, 4000, 100_000):
        for target in (1e-3, 1e-20, 1e-100, 1e-250, 1e-299):
            x = float(special.gammainccinv(a, target))
            assert x > a + 1
            q = special.gammaincc(a, x)
            assert _log_gammaincc_cf(a, x) == pytest.approx(math.log(q), rel=1e-11)
    assert log_gammaincc(10, 0.0) == 0.0
    assert log_gammaincc(10, 5.0) == pytest.approx(math.log(special.gammaincc(10, 5.0)))
    with pytest.raises(ValueError):
        log_gammaincc(0, 1.0)
    with pytest.raises(ValueError):
        log_gammaincc(3, -1.0)


def test_gamma_test_values() -> None:
    r = np.array([0.5, 0.9, 0.99, 0.1])
    s = float(-np.log1p(-r).sum())
    out = run_test("gamma", r, {})
    assert out == gamma_test(r)
    assert out.statistic == pytest.approx(s)
    assert out.pvalue == pytest.approx(special.gammaincc(4, s), rel=1e-14)
    assert out.log10_pvalue == pytest.approx(math.log10(special.gammaincc(4, s)), rel=1e-14)
    assert (out.null_mean, out.score_mean) == (1.0, pytest.approx(s / 4))
    assert out.z_score == pytest.approx((s - 4) / 2)
    empty = gamma_test(np.zeros(0))
    assert (empty.pvalue, empty.log10_pvalue, empty.statistic) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        gamma_test(np.array([0.5, 1.0]))


def test_gamma_test_deep_tail_is_finite_and_continuous() -> None:
    # 200 tokens at r = 1 - 2**-40: S = 200 * 40 ln 2 = 5545; p = 10**-2184.6
    deep = gamma_test(np.full(200, 1.0 - 2.0**-40))
    assert deep.pvalue == 0.0 and math.isfinite(deep.log10_pvalue)
    ref = float(special.logsumexp(stats.poisson.logpmf(np.arange(200), deep.statistic)))
    assert deep.log10_pvalue == pytest.approx(ref / math.log(10), rel=1e-12)
    # across the switch from scipy's value to the continued fraction near 1e-300
    n = 100
    x0 = float(special.gammainccinv(n, 1e-300))
    xs = np.linspace(x0 - 2.0, x0 + 2.0, 81)
    logs = np.array([log_gammaincc(n, x) for x in xs])
    assert logs[0] > math.log(1e-300) > logs[-1]
    steps = np.diff(logs)
    # smooth and monotone across the seam: the slope d log Q / dx changes by ~1e-3 per step
    assert (steps < 0).all() and np.abs(np.diff(steps)).max() < 1e-4


def test_detection_of_a_long_watermarked_text_reports_a_finite_deep_tail(
        marked: np.ndarray) -> None:
    ids = np.concatenate(marked)  # 10 sequences back to back: 2020 tokens
    r = detect_ids(ids, make())
    assert r.pvalue < 1e-100 and math.isfinite(r.log10_pvalue) and r.log10_pvalue < -100


# --------------------------------------------------------------------------------------------
# Registry, specs and bad parameters


def test_registry_spec_and_preset() -> None:
    assert PRESETS["gumbel"] == ("gumbel", {})
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    spec = new_spec("gumbel", {}, info, secret=SECRET)
    assert dict(spec.params) == {"context_width": 2, "combine": "hash", "n_lists": 256,
                                 "top_k": 0}
    g = scheme_for(spec)
    assert isinstance(g, Gumbel) and (g.name, g.test, g.test_params) == ("gumbel", "gamma", {})
    assert g.key_id == spec.key_id and SECRET.hex() not in repr(g)
    assert g.samples is True


@pytest.mark.parametrize(("params", "message"), [
    ({"context_width": 9}, "`context_width` must be in 0..8, got 9"),
    ({"context_width": -1}, "`context_width` must be in 0..8, got -1"),
    ({"context_width": 1.0}, "`context_width` must be an integer, got 1.0"),
    ({"combine": "max"}, "`combine` must be one of hash, min, got 'max'"),
    ({"n_lists": 3}, "`n_lists` must be a power of two in 1..4096, got 3"),
    ({"n_lists": 8192}, "`n_lists` must be a power of two in 1..4096, got 8192"),
    ({"n_lists": True}, "`n_lists` must be an integer, got True"),
    ({"top_k": -1}, "`top_k` must be >= 0 (0 = off), got -1"),
])
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParameterError) as exc:
        GumbelParams(**params)
    assert str(exc.value) == message
    with pytest.raises(SpecError) as spec_exc:
        new_spec("gumbel", params, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=SECRET)
    assert str(spec_exc.value) == message


def test_bad_arguments() -> None:
    with pytest.raises(SpecError, match="unknown gumbel parameter"):
        new_spec("gumbel", {"gamma": 0.5}, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=SECRET)
    with pytest.raises(ParameterError, match="`vocab_size` must be an integer >= 2"):
        Gumbel(SECRET, GumbelParams(), 1)
    g = make()
    logits = np.stack([kat_logits(0)])
    ctx = np.array([[1, 2]])
    for kwargs, text in [({"temperature": -0.1}, "`temperature` must be finite and >= 0"),
                         ({"temperature": math.inf}, "`temperature` must be finite"),
                         ({"top_p": 0.0}, "`top_p` must be in (0, 1], got 0.0"),
                         ({"top_p": 1.5}, "`top_p` must be in (0, 1], got 1.5")]:
        with pytest.raises(ParameterError) as exc:
            g.process(logits, ctx, **kwargs)
        assert str(exc.value).startswith(text)
    with pytest.raises(ParameterError, match="logits width 100 is smaller"):
        g.process(np.zeros((1, 100), dtype=np.float32), ctx)
    with pytest.raises(ParameterError, match=r"`logits` must be \(B, W\)"):
        g.process(logits[0], ctx)
    with pytest.raises(ParameterError, match="no NaN"):
        g.process(np.full((1, V), np.nan, dtype=np.float32), ctx)
    with pytest.raises(ParameterError, match="at least one finite value"):
        g.process(np.full((1, V), -np.inf, dtype=np.float32), ctx)
    with pytest.raises(ParameterError, match="outside the spec's vocabulary"):
        g.process(logits, np.array([[1, V]]))
    with pytest.raises(ParameterError, match="outside the table"):
        g.uniforms(np.array([256 * V]))
