"""The open-model audit: a bigram student fitted on watermarked token streams is caught, one
fitted on clean streams is not (over many keys), the Chernoff bound is never below the exact
tail, cells agree with detection's tuple keys, and the CLI's exit codes, JSON and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.verify import audit as au
from distillmark.verify.stats import (
    binomial_tail,
    weighted_bernoulli_logsf_bound,
    weighted_binomial_logsf,
)
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    GreenList,
    InputError,
    SpecError,
    WatermarkSpec,
    hf,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)
from distillmark.watermark.tokenizer import builtin_tokenizer_path

SECRET = bytes(range(50, 82))
VOCAB = 49152
#: The synthetic language: a random Markov chain over these token ids of the real tokenizer.
SUB = np.arange(1000, 1160, dtype=np.int64)
IM_END = "<|im_end|>"


def make_spec(secret: bytes = SECRET, **params: Any) -> WatermarkSpec:
    """A green-list spec; 256 lists unless ``params`` say otherwise (:func:`stream` reads the
    whole table)."""
    return new_spec("greenlist", {"n_lists": 256, **params},
                    load_tokenizer(BUILTIN_SMOLLM2)[1], secret=secret)


def chain(seed: int = 0) -> np.ndarray:
    """Transition log-probabilities of the synthetic language: ``(|SUB|, |SUB|)``, peaked rows
    (Dirichlet(0.3)), like real next-token distributions."""
    rng = np.random.default_rng(seed)
    return np.log(rng.dirichlet(np.full(SUB.size, 0.3), size=SUB.size) + 1e-12)


def stream(logp: np.ndarray, n: int, seed: int, scheme: GreenList | None = None,
           delta: float = 2.0) -> np.ndarray:
    """``n`` token ids sampled from the chain; with ``scheme``, its green tokens (after each
    context's window) get ``+delta`` (a watermarked teacher, h = 1 lefthash here)."""
    rng = np.random.default_rng(seed)
    idx = np.empty(n, dtype=np.int64)
    idx[0] = rng.integers(SUB.size)
    bias = None
    if scheme is not None:
        # Row selected by each previous token (h = 1), or the one list (h = 0).
        rows = scheme.rows(SUB[:, None] if scheme.context_width else SUB[:, None][:, :0])
        bias = scheme.table[rows][:, SUB] * delta
    u = rng.random(n)
    for i in range(1, n):
        lp = logp[idx[i - 1]] + (bias[idx[i - 1]] if bias is not None else 0.0)
        c = np.cumsum(np.exp(lp - lp.max()))
        idx[i] = min(int(np.searchsorted(c, u[i] * c[-1])), SUB.size - 1)
    return SUB[idx]


def bigram_student(ids: np.ndarray, smoothing: float = 0.1) -> LlamaForCausalLM:
    """A bigram model fitted on ``ids`` (add-``smoothing`` counts over SUB), held exactly by a
    0-layer Llama: token ``x`` embeds to a one-hot slot, RMSNorm scales it by ``sqrt(d)``, and
    the head's column of that slot holds the log-probabilities (ids outside SUB: -30)."""
    n = SUB.size
    d = n + 2  # one slot per SUB token, one for everything else, one unused (even width)
    pos = {int(t): i for i, t in enumerate(SUB)}
    counts = np.full((n, n), smoothing)
    a = np.array([pos[int(t)] for t in ids])
    np.add.at(counts, (a[:-1], a[1:]), 1.0)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=0,
                      num_attention_heads=1, num_key_value_heads=1, intermediate_size=4,
                      max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2, tie_word_embeddings=False, rms_norm_eps=1e-12)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = torch.zeros(VOCAB, d)
        emb[:, n] = 1.0
        emb[torch.from_numpy(SUB), :] = 0.0
        emb[torch.from_numpy(SUB), torch.arange(n)] = 1.0
        model.model.embed_tokens.weight.copy_(emb)
        head = torch.full((VOCAB, d), -30.0)
        head[torch.from_numpy(SUB)[:, None], torch.arange(n)[None, :]] = torch.from_numpy(
            logp.T).float()
        head[torch.from_numpy(SUB), n] = 0.0  # unknown previous token: uniform over SUB
        model.lm_head.weight.copy_(head / math.sqrt(d))
    return model


def loaded(model: LlamaForCausalLM, name: str) -> hf.LoadedModel:
    tok = PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                  eos_token=IM_END, pad_token=IM_END)
    return hf.LoadedModel(model=model, tokenizer=tok, source=name)


def pieces(ids: np.ndarray, size: int = 200) -> list[np.ndarray]:
    return [ids[i:i + size] for i in range(0, ids.size, size)]


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """Students fitted on a watermarked and a clean stream of the same language, and their
    readings over clean contexts (another sample of the language, independent of the key)."""
    torch.manual_seed(0)
    logp = chain()
    scheme = scheme_for(make_spec())
    # A weak mark (delta 0.5, 5,000 training tokens): p around 1e-20 in distribution mode,
    # 1e-8 in reading mode, so the comparison of the two tests means something.
    wm = bigram_student(stream(logp, 5_000, seed=1, scheme=scheme, delta=0.5))
    clean = bigram_student(stream(logp, 5_000, seed=2))
    contexts = pieces(stream(logp, 1_500, seed=3))
    return {
        "logp": logp, "scheme": scheme, "wm_model": wm, "clean_model": clean,
        "contexts": contexts,
        "wm": au.read_model(loaded(wm, "wm-student"), contexts, top_k=64, batch_size=4),
        "clean": au.read_model(loaded(clean, "clean-student"), contexts, top_k=64,
                               batch_size=4),
    }


# --------------------------------------------------------------------------------------------
# Power and calibration


@pytest.mark.parametrize("mode", ["distribution", "reading"])
def test_audit_catches_the_watermarked_student_not_the_clean_one(world: dict[str, Any],
                                                                 mode: str) -> None:
    wm = au.audit_readings(world["wm"], world["scheme"], mode=mode)
    clean = au.audit_readings(world["clean"], world["scheme"], mode=mode)
    assert wm.is_watermarked(1e-6) and wm.verdict(1e-6) == "watermarked"
    assert wm.score_mean > wm.null_mean
    assert clean.pvalue > 1e-3 and clean.verdict() == "not watermarked"
    assert wm.n_scored >= wm.min_scored and clean.n_scored >= clean.min_scored
    assert wm.model == "wm-student" and wm.key_id == world["scheme"].key_id


def test_distribution_test_has_more_power_than_reading_mode(world: dict[str, Any]) -> None:
    dist = au.audit_readings(world["wm"], world["scheme"], mode="distribution")
    reading = au.audit_readings(world["wm"], world["scheme"], mode="reading")
    assert dist.log10_pvalue < reading.log10_pvalue


def test_reading_the_learned_cells(world: dict[str, Any]) -> None:
    """Reading mode over the cells the model gives at least ``min_prob``: finds the mark,
    stays calibrated over fresh keys, and scores fewer cells the higher the threshold."""
    r = au.audit_readings(world["wm"], world["scheme"], mode="reading", reading_k=64,
                          min_prob=0.05)
    assert r.is_watermarked(1e-6) and r.min_prob == 0.05
    loose = au.audit_readings(world["wm"], world["scheme"], mode="reading", reading_k=64,
                              min_prob=0.01)
    assert loose.n_scored > r.n_scored
    for i in range(20):
        scheme = scheme_for(make_spec(secret=bytes([150 + i]) * 32))
        assert au.audit_readings(world["clean"], scheme, mode="reading", reading_k=64,
                                 min_prob=0.05).pvalue > 1e-3
    with pytest.raises(ValueError, match="`min_prob` must be in"):
        au.audit_readings(world["wm"], world["scheme"], mode="reading", min_prob=1.0)


def test_null_is_calibrated_over_keys(world: dict[str, Any]) -> None:
    """Keys the students never saw: no p-value below 1e-3 (either student, every test and
    weighting), and the p-values are not smaller than uniform ones (one-sided KS)."""
    variants = {w: {"mode": "distribution", "weighting": w} for w in au.WEIGHTINGS}
    variants["reading"] = {"mode": "reading"}
    ps: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(40):
        scheme = scheme_for(make_spec(secret=bytes([i]) * 32))
        for name in ("wm", "clean"):
            for v, kw in variants.items():
                r = au.audit_readings(world[name], scheme, **kw)
                assert r.pvalue > 1e-3, (i, name, v, r.pvalue)
                if name == "clean":
                    ps[v].append(r.pvalue)
    # P(p <= x) <= x under the null: the empirical cdf must not lie above the uniform one.
    for v, pv in ps.items():
        assert stats.kstest(pv, "uniform", alternative="greater").pvalue > 1e-3, v


def test_coverage_statistic_is_the_expected_count_of_distinct_green_cells(
        world: dict[str, Any]) -> None:
    """Coverage weights: sample one token at every distinct context (from the probabilities
    read; nothing when the draw falls outside the ``top_k`` tokens), count the distinct cells
    drawn and the green ones among them. Over many such passes the averages are the test's
    ``total_weight`` and ``statistic``."""
    readings, scheme, k = world["wm"], world["scheme"], 8
    res = au.audit_readings(readings, scheme, weighting="coverage", top_k=k)
    assert res.weighting == "coverage" and res.test == "chernoff-weighted-bernoulli"
    keys, ok, _ = au._cell_keys(readings, scheme, k)
    cum = np.cumsum(readings.top_probs[ok, :k].astype(np.float64), axis=1)
    rng = np.random.default_rng(0)
    totals, greens = [], []
    for _ in range(400):
        u = rng.random(cum.shape[0])
        j = (u[:, None] >= cum).sum(axis=1)  # index of the drawn token; k: outside the top k
        drawn = np.unique(keys[j < k, j[j < k]])
        totals.append(drawn.size)
        greens.append(int(scheme.key_scores(drawn).sum()))
    for sims, exact in ((totals, res.total_weight), (greens, res.statistic)):
        se = np.std(sims) / math.sqrt(len(sims))
        assert abs(np.mean(sims) - exact) < 4 * se + 1e-9, (np.mean(sims), exact, se)
    # Every weight is a probability: the total is at most the number of cells scored.
    assert 0 < res.total_weight <= res.n_scored


def _direct_audit(readings: au.ModelReadings, scheme: GreenList, k: int, weighting: str,
                  reading_k: int, min_prob: float) -> tuple[float, float, int]:
    """The audit's statistic, total weight and cell count computed entry by entry from
    ``_cell_keys`` (every context's cells keyed, then deduplicated), the definition that the
    audit's key-independent (window, token) folding must reproduce."""
    if weighting == "reading":
        keys, ok, _ = au._cell_keys(readings, scheme, reading_k)
        sel = (readings.top_ids[ok, :reading_k] < scheme.vocab_size) & (
            readings.top_probs[ok, :reading_k] >= min_prob)
        cells = np.unique(keys[sel])
        return float(scheme.key_scores(cells).sum()), float(cells.size), int(cells.size)
    keys, ok, window_of = au._cell_keys(readings, scheme, k)
    sel = readings.top_ids[ok, :k] < scheme.vocab_size
    p = readings.top_probs[ok, :k].astype(np.float64)
    if weighting == "window":
        p = p / np.bincount(window_of)[window_of][:, None]
    cells, inv = np.unique(keys[sel], return_inverse=True)
    if weighting == "coverage":
        w = -np.expm1(np.bincount(inv.ravel(), weights=np.log1p(-np.minimum(p[sel], 1 - 1e-12))))
    else:
        w = np.bincount(inv.ravel(), weights=p[sel])
    return float(w[scheme.key_scores(cells)].sum()), float(w.sum()), int(cells.size)


@pytest.mark.parametrize("params", [
    {"context_width": 0}, {"context_width": 1}, {"context_width": 2, "n_lists": 8},
    {"context_width": 2, "seeding": "selfhash", "combine": "min"},
], ids=["h0", "h1", "h2-8lists", "selfhash2"])
def test_folded_cells_equal_the_direct_computation(world: dict[str, Any],
                                                   params: dict[str, Any]) -> None:
    """Every weighting and the reading test give what keying each context's cells one by one
    gives, including when few lists make many windows share a row (cells merge across
    windows), and several keys tested on one set of readings do not disturb each other."""
    readings = au.read_model(loaded(world["wm_model"], "wm"), world["contexts"], top_k=16,
                             batch_size=4)
    for secret in (SECRET, bytes(32), bytes(range(32))):
        scheme = scheme_for(make_spec(secret, **params))
        cases = [("window", 0, 0.0), ("context", 0, 0.0), ("coverage", 0, 0.0),
                 ("reading", 1, 0.0), ("reading", 8, 0.05)]
        for weighting, rk, mp in cases:
            if weighting == "reading":
                r = au.audit_readings(readings, scheme, mode="reading", reading_k=rk,
                                      min_prob=mp)
            else:
                r = au.audit_readings(readings, scheme, weighting=weighting, top_k=12)
            s, total, n = _direct_audit(readings, scheme, 12, weighting, rk, mp)
            assert r.n_scored == n, (weighting, rk)
            assert r.statistic == pytest.approx(s, rel=1e-9, abs=1e-9), (weighting, rk)
            assert r.total_weight == pytest.approx(total, rel=1e-9), (weighting, rk)


def test_the_teacher_key_against_a_clean_student_over_resampled_contexts(
        world: dict[str, Any]) -> None:
    """The same key, a clean student, 10 independent context sets: no p below 1e-3."""
    lm = loaded(world["clean_model"], "clean")
    for seed in range(10, 20):
        r = au.audit_readings(au.read_model(lm, pieces(stream(world["logp"], 400, seed)),
                                            top_k=32), world["scheme"])
        assert r.pvalue > 1e-3


def test_repeated_contexts_are_read_once(world: dict[str, Any]) -> None:
    lm = loaded(world["wm_model"], "wm")
    once = au.read_model(lm, world["contexts"][:3], top_k=16)
    twice = au.read_model(lm, world["contexts"][:3] * 2, top_k=16)
    assert twice.n_contexts == once.n_contexts and twice.n_tokens == 2 * once.n_tokens
    a, b = (au.audit_readings(x, world["scheme"]) for x in (once, twice))
    assert a.statistic == b.statistic and a.log10_pvalue == b.log10_pvalue
    assert b.n_repeated == once.n_tokens


def test_key_ring_is_bonferroni_corrected(world: dict[str, Any]) -> None:
    specs = [make_spec()] + [make_spec(secret=bytes([200 + i]) * 32) for i in range(3)]
    best, per_key = au.audit_specs(world["wm"], specs)
    assert best.n_keys == 4 and len(per_key) == 4
    assert best.key_id == specs[0].key_id
    assert best.log10_pvalue == pytest.approx(per_key[0].log10_pvalue + math.log10(4))
    assert best.uncorrected_log10_pvalue == per_key[0].log10_pvalue


# --------------------------------------------------------------------------------------------
# The Chernoff bound and the cells


def _exact_logsf(w: np.ndarray, s: float, p: float) -> float:
    """Brute force over all 2^n outcomes."""
    n = w.size
    bits = ((np.arange(1 << n)[:, None] >> np.arange(n)) & 1).astype(float)
    k = bits.sum(axis=1)
    prob = p ** k * (1 - p) ** (n - k)
    return math.log(prob[bits @ w >= s - 1e-12].sum())


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_chernoff_bound_is_never_below_the_exact_tail(p: float) -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        w = rng.exponential(size=12)
        for s in np.linspace(p * w.sum(), w.sum(), 9):
            bound, _ = weighted_bernoulli_logsf_bound(w, s, p=p)
            assert bound >= _exact_logsf(w, s, p) - 1e-9


def test_chernoff_bound_is_tight_in_the_deep_tail() -> None:
    """Integer weights, exact tail from the DFT: the bound is above it by less than 1.5
    decades at p ~ 1e-12, and stays finite below 1e-308."""
    rng = np.random.default_rng(6)
    w = rng.integers(1, 20, size=400)
    mean, sd = 0.25 * w.sum(), math.sqrt(0.25 * 0.75 * float(w @ w))
    s = int(mean + 7 * sd)
    exact, _ = weighted_binomial_logsf(s, 1, w.tolist(), p=0.25)
    bound, _ = weighted_bernoulli_logsf_bound(w.astype(float), s, p=0.25)
    assert exact <= bound <= exact + 1.5 * math.log(10)
    ones = np.ones(3000)  # unit weights: S is Binomial(3000, 1/4), exact tail known
    deep, _ = weighted_bernoulli_logsf_bound(ones, 2400, p=0.25)
    exact_deep = binomial_tail(2400, 3000, 0.25).log10_pvalue
    assert exact_deep < -308 and math.isfinite(deep)
    assert exact_deep <= deep / math.log(10) <= exact_deep + 2
    assert weighted_bernoulli_logsf_bound(w.astype(float), mean, p=0.25)[0] == 0.0
    assert weighted_bernoulli_logsf_bound(w.astype(float), w.sum(), p=0.25)[0] == pytest.approx(
        400 * math.log(0.25))


@pytest.mark.parametrize("params", [
    {"context_width": 0}, {"context_width": 1}, {"context_width": 2},
    {"context_width": 3, "combine": "min"},
    {"context_width": 2, "seeding": "selfhash", "combine": "min"},
], ids=["h0", "h1", "h2", "h3-min", "selfhash2"])
def test_cells_are_detections_tuple_keys(world: dict[str, Any], params: dict[str, Any]) -> None:
    """The cell of (context, candidate t) is the tuple key detection gives t after the context:
    the audit and detection read the same table cells, for every h and seeding."""
    scheme = scheme_for(make_spec(**params))
    r = world["wm"]
    keys, ok, _ = au._cell_keys(r, scheme, 4)
    seq, pos = r.seq[ok], r.pos[ok]
    for i in range(0, seq.size, 97):
        s = r.sequences[seq[i]][:pos[i] + 1]
        for j in range(4):
            t = r.top_ids[np.flatnonzero(ok)[i], j]
            assert keys[i, j] == scheme.tuple_keys(np.append(s, t))[-1]


@pytest.mark.parametrize("params", [{"context_width": 0}, {"context_width": 2},
                                    {"context_width": 3, "seeding": "selfhash",
                                     "combine": "min"}], ids=["h0", "h2", "selfhash3"])
def test_other_widths_are_calibrated(world: dict[str, Any], params: dict[str, Any]) -> None:
    for i in range(10):
        scheme = scheme_for(make_spec(secret=bytes([100 + i]) * 32, **params))
        for mode in au.AUDIT_MODES:
            assert au.audit_readings(world["clean"], scheme, mode=mode).pvalue > 1e-3


def test_unigram_mark_is_caught(world: dict[str, Any]) -> None:
    """h = 0: one green list for every context; a student of a unigram-marked stream."""
    scheme = scheme_for(make_spec(context_width=0))
    student = bigram_student(stream(world["logp"], 5_000, seed=7, scheme=scheme))
    r = au.read_model(loaded(student, "h0"), world["contexts"][:8], top_k=64)
    assert au.audit_readings(r, scheme).is_watermarked(1e-6)


def test_sampling_schemes_are_refused(world: dict[str, Any]) -> None:
    spec = new_spec("gumbel", {}, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=SECRET)
    with pytest.raises(SpecError, match="audit supports the greenlist scheme only"):
        au.audit_readings(world["wm"], scheme_for(spec))


def test_watermarked_text_is_refused_as_contexts(world: dict[str, Any]) -> None:
    tok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    text = tok.decode(stream(world["logp"], 1500, seed=9, scheme=world["scheme"]).tolist())
    with pytest.raises(InputError, match="the text itself carries the watermark"):
        au.text_contexts([text], make_spec())


# --------------------------------------------------------------------------------------------
# CLI


@pytest.fixture(scope="module")
def cli_files(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("audit-cli")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()),
                                  eos_token=IM_END, pad_token=IM_END)
    out = {}
    for name in ("wm", "clean"):
        world[f"{name}_model"].save_pretrained(d / name)
        tok.save_pretrained(d / name)
        out[name] = d / name
    key = d / "key.json"
    save_spec(make_spec(), key)
    other = d / "other.json"
    save_spec(make_spec(secret=bytes(32)), other)
    text = d / "contexts.txt"
    ltok = load_tokenizer(BUILTIN_SMOLLM2)[0]
    text.write_text(ltok.decode(np.concatenate(world["contexts"][:6]).tolist()))
    empty = d / "empty.txt"
    empty.write_text("  \n")
    out.update(key=key, other=other, text=text, empty=empty, dir=d)
    return out


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, ["audit", *[str(a) for a in args]])


def test_cli_exit_codes_and_json(cli_files: dict[str, Path]) -> None:
    f = cli_files
    wm = run("--model", f["wm"], "--key", f["key"], "--text", f["text"], "--json")
    assert wm.exit_code == 0, wm.output
    d = json.loads(wm.stdout)
    for k in ("statistic", "pvalue", "log10_pvalue", "n_scored", "n_tokens", "score_mean",
              "null_mean", "z_score", "test", "mode", "verdict", "alpha", "key_id", "n_keys",
              "n_contexts", "top_k"):
        assert k in d, k
    assert d["verdict"] == "watermarked" and d["log10_pvalue"] < -6
    assert d["mode"] == "distribution" and d["test"] == "chernoff-weighted-bernoulli"
    clean = run("--model", f["clean"], "--key", f["key"], "--text", f["text"], "--json")
    assert clean.exit_code == 1, clean.output
    assert json.loads(clean.stdout)["verdict"] == "not watermarked"
    reading = run("--model", f["wm"], "--key", f["key"], "--text", f["text"], "--mode",
                  "reading", "--reading-k", "8", "--min-prob", "0.05")
    assert reading.exit_code == 0 and "watermarked (p = " in reading.stdout
    ring = run("--model", f["wm"], "--key", f["other"], "--key", f["key"], "--text", f["text"],
               "--json")
    assert ring.exit_code == 0 and json.loads(ring.stdout)["n_keys"] == 2


def test_cli_generated_contexts(cli_files: dict[str, Path]) -> None:
    r = run("--model", cli_files["wm"], "--key", cli_files["key"], "--generate", "4",
            "--context-len", "32", "--json")
    d = json.loads(r.stdout)
    assert d["n_tokens"] == 4 * 33 and r.exit_code in (0, 1)


def test_cli_errors(cli_files: dict[str, Path], tmp_path: Path) -> None:
    f = cli_files
    not_model = tmp_path / "notamodel"
    not_model.mkdir()
    r = run("--model", not_model, "--key", f["key"], "--text", f["text"])
    assert r.exit_code == 2
    assert r.stderr.splitlines()[-1] == (f"distillmark: error: model directory {not_model} has "
                                         "no config.json (not a model)")
    r = run("--model", f["wm"], "--key", f["key"], "--text", f["empty"])
    assert r.exit_code == 2
    assert r.stderr == (f"distillmark: error: {f['empty']}: the text is empty (nothing to read "
                        "the model on)\n")
    r = run("--model", f["wm"], "--key", f["key"], "--text", f["text"], "--generate", "3")
    assert r.exit_code == 2
    assert r.stderr == "distillmark: error: give --text FILE or --generate N, not both\n"
    r = run("--model", f["wm"], "--key", f["key"], "--text", tmp_path / "missing.txt")
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = run("--key", f["key"])
    assert r.exit_code == 2  # --model is required
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    r = run("--model", f["wm"], "--key", f["key"], "--text", bad)
    assert r.exit_code == 2 and r.stderr.startswith(f"distillmark: error: {bad}:2: not valid JSON")
