"""Dataset scans: per-record and pooled results are the exact tests, several keys, Benjamini-
Hochberg and the fraction estimate. Readers and bad records are in test_scan_sources.py, resume
and the Dask engine in test_scan_resume.py, the ``scan`` command in test_scan_cli.py; the shared
data and helpers in scan_helpers.py."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scan_helpers import SpecFactory, read_rows, run_cli, write_jsonl
from scipy import stats

from distillmark.verify import AggregateAccumulator, Detector
from distillmark.verify.fraction import PairCounts, binomial_mixture, pvalue_mixture, theta_floor
from distillmark.verify.scan import scan
from distillmark.verify.stats import benjamini_hochberg, binomial_tails
from distillmark.watermark import WatermarkSpec, scheme_for

# --------------------------------------------------------------------------------------------
# Per-record and pooled results are the single-text and pooled tests


def test_records_and_pool_are_the_exact_tests(tmp_path: Path, mixed: Any,
                                              spec: WatermarkSpec) -> None:
    path, texts, is_wm = mixed
    out = tmp_path / "res.jsonl"
    res = scan([path], [spec], field="output.text", out=out)
    rows = read_rows(out)
    assert len(rows) == len(texts) == res.n_records_read == res.n_records_scored
    det = Detector(spec)
    for i in list(range(0, len(texts), 97)) + list(np.flatnonzero(is_wm)):
        r, d = rows[i], det.detect(texts[i])
        assert r["location"] == f"{path}:{i + 1}"
        assert (r["n_tokens"], r["n_scored"], r["statistic"]) == (d.n_tokens, d.n_scored,
                                                                  d.statistic)
        assert r["pvalue"] == d.pvalue and r["log10_pvalue"] == d.log10_pvalue
    acc = AggregateAccumulator(scheme_for(spec))
    acc.add_batch([det.encode(t) for t in texts])
    assert res.aggregate == acc.result()
    assert res.n_keys == 1 and res.pvalue == res.aggregate.pvalue


def test_one_percent_contamination_is_found(mixed: Any, spec: WatermarkSpec) -> None:
    path, texts, is_wm = mixed
    res = scan([path], [spec], field="output.text")
    assert is_wm.mean() == pytest.approx(0.01, abs=1e-3)
    assert res.is_watermarked(1e-3) and res.log10_pvalue < -6, res.log10_pvalue
    assert res.verdict(1e-3) == "watermarked"
    # each watermarked answer is flagged, and (almost) nothing else
    assert res.n_flagged >= 9 and res.n_flagged <= 11
    f = res.fraction
    assert f.method == "binomial-mixture" and f.min_units == 25
    # among the records with >= 25 fresh tuples (every watermarked answer has ~150)
    assert 10 < f.n_records < len(texts)
    assert f.ci_low <= 10 / f.n_records <= f.ci_high and f.ci_high < 3 * 10 / f.n_records


def test_clean_data_is_not_found_over_several_keys(tmp_path: Path, paragraphs: list[str],
                                                   spec_factory: SpecFactory) -> None:
    path = write_jsonl(tmp_path / "human.jsonl", [{"text": p} for p in paragraphs[:1500]])
    pvalues, flagged = [], 0
    for j in range(5):
        s = spec_factory(secret=hashlib.sha256(b"scan null %d" % j).digest())
        res = scan([path], [s], field="text")
        assert res.verdict(1e-3) == "not watermarked" and res.n_records_scored == 1500
        pvalues.append(res.pvalue)
        flagged += res.n_flagged
        # the interval covers the truth, 0 (fresh tuples per record: near-duplicate
        # paragraphs do not pass for a watermarked cluster)
        assert res.fraction.ci_low == 0.0 and res.fraction.estimate < 0.03
        assert 0 < res.detectable_fraction(1e-3) < 0.1  # "not found" says how much evidence
    assert min(pvalues) > 1e-3
    assert flagged <= 1  # BH under the global null: P(any flag) <= fdr per key


def test_several_keys_are_bonferroni_corrected(mixed: Any, spec: WatermarkSpec,
                                               spec_factory: SpecFactory,
                                               tmp_path: Path) -> None:
    path, _, _ = mixed
    other = spec_factory(secret=bytes(range(100, 132)))
    res = scan([path], [other, spec], field="output.text", out=tmp_path / "r.jsonl")
    one = scan([path], [spec], field="output.text")
    assert res.n_keys == 2 and res.aggregate == one.aggregate
    assert res.log10_pvalue == pytest.approx(one.log10_pvalue + math.log10(2))
    d = res.to_dict(1e-3)
    assert d["correction"] == "bonferroni" and len(d["per_key"]) == 2
    assert d["uncorrected_log10_pvalue"] == one.log10_pvalue
    rows = read_rows(tmp_path / "r.jsonl")
    wm_rows = [r for r in rows if r["flagged"]]
    assert wm_rows and all(r["key_id"] == spec.key_id for r in wm_rows)

# --------------------------------------------------------------------------------------------
# Benjamini-Hochberg and the fraction estimate


def test_benjamini_hochberg_matches_scipy_and_controls_fdr() -> None:
    rng = np.random.default_rng(3)
    q, fdps = 0.1, []
    for _ in range(300):
        m = 400
        n = rng.integers(20, 200, size=m)
        wm = rng.random(m) < 0.1
        k = rng.binomial(n, np.where(wm, rng.uniform(0.3, 0.5, m), 0.25))
        pv, lg = binomial_tails(k, n, 0.25)
        flags, t = benjamini_hochberg(lg, q)
        assert np.array_equal(flags, stats.false_discovery_control(pv) <= q)
        if flags.any():
            assert t == lg[flags].max()
        fdps.append((flags & ~wm).sum() / max(1, flags.sum()))
    # FDR = E[FDP] <= q (m0/m q = 0.09 here, lower for the discrete tests)
    assert np.mean(fdps) < q
    assert benjamini_hochberg(np.zeros(0), q)[1] == -math.inf


@pytest.mark.parametrize("f_true", [0.0, 0.05, 0.3])
def test_fraction_interval_covers_the_truth(f_true: float) -> None:
    """Coverage over repetitions of synthetic mixes whose watermarked records vary in
    strength (green rate 0.45-0.75 around the model's single mean) and length."""
    rng = np.random.default_rng(int(f_true * 100) + 4)
    p0, theta_min = 0.25, theta_floor(0.25, 0.65)
    reps, cover, est = 30, 0, []
    for _ in range(reps):
        m = 400
        n = rng.integers(10, 250, size=m)
        wm = rng.random(m) < f_true
        k = rng.binomial(n, np.where(wm, rng.uniform(0.45, 0.75, m), p0))
        pc = PairCounts()
        pc.add(n, k)
        r = binomial_mixture(*pc.arrays(), p0=p0, theta_min=theta_min)
        cover += r.ci_low <= f_true <= r.ci_high
        est.append(r.estimate)
        assert 0.0 <= r.ci_low <= r.estimate <= r.ci_high <= 1.0
        assert r.is_estimated()
    assert cover >= 26, cover  # nominal 95%: 28.5 of 30 expected; P(<= 25) < 2%
    assert abs(np.mean(est) - f_true) < 0.02


def test_fraction_on_pvalues_covers_the_truth() -> None:
    rng = np.random.default_rng(5)
    cover = 0
    for _ in range(30):
        wm = rng.random(500) < 0.2
        p = np.where(wm, rng.beta(0.05, 1.0, 500), rng.random(500))
        r = pvalue_mixture(np.log10(np.maximum(p, 1e-300)))
        cover += r.ci_low <= 0.2 <= r.ci_high
    assert cover >= 25


def test_a_fraction_of_too_few_records_is_not_stated(tmp_path: Path, key_file: Path,
                                                     paragraphs: list[str]) -> None:
    """One clean record can give a fraction of 100% with an interval of 0% to 100%: with
    fewer than 10 records, or an interval that rules out nothing, none is stated."""
    p0, theta_min = 0.25, theta_floor(0.25, 0.65)
    one = binomial_mixture(np.array([80]), np.array([22]), np.array([1]), p0=p0,
                           theta_min=theta_min)
    assert one.n_records == 1 and not one.is_estimated()
    assert one.to_dict()["estimated"] is False
    few = binomial_mixture(np.array([200]), np.array([150]), np.array([9]), p0=p0,
                           theta_min=theta_min)
    assert few.ci_low > 0.5 and not few.is_estimated()  # 9 records: their own tests say it
    many = binomial_mixture(np.array([200]), np.array([150]), np.array([10]), p0=p0,
                            theta_min=theta_min)
    assert many.is_estimated() and many.estimate == pytest.approx(1.0)
    short = binomial_mixture(np.array([3]), np.array([1]), np.array([12]), p0=p0,
                             theta_min=theta_min)  # 12 records of 3 units: anything fits
    assert short.estimate == 1.0 and (short.ci_low, short.ci_high) == (0.0, 1.0)
    assert not short.is_estimated()

    path = write_jsonl(tmp_path / "one.jsonl", [{"text": " ".join(paragraphs[:3])}])
    r = run_cli("scan", path, "-k", key_file, "--field", "text")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[3] == ("watermarked fraction: cannot be estimated (only 1 record with >= 25 "
                        "fresh scored units, fewer than 10: the flags test each record on its "
                        "own)")
    assert lines[4].startswith("evidence: ") and "at most" not in lines[4]
    d = json.loads(run_cli("scan", path, "-k", key_file, "--field", "text", "--json").stdout)
    assert (d["fraction_n_records"], d["fraction_estimated"]) == (1, False)


def test_pair_counts_merge_and_round_trip() -> None:
    a, b = PairCounts(), PairCounts()
    a.add(np.array([3, 3, 5]), np.array([1, 1, 2]))
    b.add(np.array([3, 7]), np.array([1, 0]))
    a.merge(b)
    n, k, c = a.arrays()
    assert n.tolist() == [3, 5, 7] and k.tolist() == [1, 2, 0] and c.tolist() == [3, 1, 1]
    assert PairCounts.from_array(a.to_array()) == a
