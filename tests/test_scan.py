"""Dataset scans: readers, per-record and pooled tests, BH, the fraction estimate, bad records,
resume, the Dask engine and the ``scan`` command."""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from tokenizers import Tokenizer
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.verify import AggregateAccumulator, Detector
from distillmark.verify.fraction import (
    PairCounts,
    binomial_mixture,
    pvalue_mixture,
    theta_floor,
)
from distillmark.verify.scan import scan
from distillmark.verify.stats import benjamini_hochberg, binomial_tails
from distillmark.watermark import (
    GreenList,
    InputError,
    WatermarkSpec,
    new_spec,
    save_spec,
    scheme_for,
)
from distillmark.watermark.tokenizer import builtin_tokenizer_path

SpecFactory = Callable[..., WatermarkSpec]
RUNNER = CliRunner()


# --------------------------------------------------------------------------------------------
# Synthetic data: watermarked answers decoded with the real tokenizer, human paragraphs


def _word_ids(tok: Tokenizer, n: int = 2000) -> np.ndarray:
    vocab = tok.get_vocab()
    words = sorted(i for t, i in vocab.items() if re.fullmatch("\u0120[a-z]{3,}", t))
    return np.array(words[:n])


def watermarked_texts(scheme: GreenList, n: int, n_tokens: int, seed: int) -> list[str]:
    """``n`` texts sampled over ~2000 common words with the scheme's green bias applied (a
    strength drawn per text: delta x U(0.5, 1.5)), decoded with the real tokenizer."""
    tok = Tokenizer.from_file(str(builtin_tokenizer_path()))
    words = _word_ids(tok)
    rng = np.random.default_rng(seed)
    strength = rng.uniform(0.5, 1.5, size=n)
    base = np.full((n, scheme.vocab_size), -1e4, dtype=np.float32)
    base[:, words] = 0.0
    ids = rng.choice(words, size=(n, 1))
    for _ in range(n_tokens - 1):
        green = (scheme.bias(base, ids[:, -1:])[:, words] > 0).astype(np.float64)
        logits = green * strength[:, None] * scheme.params.delta
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        c = np.cumsum(p, axis=1)
        pick = (c < rng.random(n)[:, None] * c[:, -1:]).sum(axis=1)
        ids = np.concatenate([ids, words[pick][:, None]], axis=1)
    return [tok.decode(row.tolist()) for row in ids]


@pytest.fixture(scope="module")
def paragraphs(human_texts: list[str]) -> list[str]:
    """Paragraphs (>= 200 characters) of the numpy/scipy docstrings: human records."""
    out = [p.strip() for t in human_texts for p in t.split("\n\n") if len(p.strip()) >= 200]
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


@pytest.fixture(scope="module")
def spec(spec_factory: SpecFactory) -> WatermarkSpec:
    return spec_factory()


@pytest.fixture(scope="module")
def marked(spec: WatermarkSpec) -> list[str]:
    return watermarked_texts(scheme_for(spec), 40, 150, seed=1)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, paragraphs: list[str],
          marked: list[str]) -> tuple[Path, list[str], np.ndarray]:
    """A JSONL file of ~1000 human paragraphs with 1% watermarked answers spread among them:
    (path, texts, is_watermarked)."""
    human = paragraphs[:990]
    rng = np.random.default_rng(2)
    texts = list(human)
    is_wm = np.zeros(len(texts), dtype=bool)
    for i, t in zip(sorted(rng.choice(len(texts), size=10, replace=False)), marked[:10]):
        texts.insert(int(i), t)
        is_wm = np.insert(is_wm, int(i), True)
    path = write_jsonl(tmp_path_factory.mktemp("mixed") / "data.jsonl",
                       [{"id": i, "output": {"text": t}} for i, t in enumerate(texts)])
    return path, texts, is_wm


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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
    r = _run("scan", path, "-k", key_file, "--field", "text")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[3] == ("watermarked fraction: cannot be estimated (only 1 record with >= 25 "
                        "fresh scored units, fewer than 10: the flags test each record on its "
                        "own)")
    assert lines[4].startswith("evidence: ") and "at most" not in lines[4]
    d = json.loads(_run("scan", path, "-k", key_file, "--field", "text", "--json").stdout)
    assert (d["fraction_n_records"], d["fraction_estimated"]) == (1, False)


def test_pair_counts_merge_and_round_trip() -> None:
    a, b = PairCounts(), PairCounts()
    a.add(np.array([3, 3, 5]), np.array([1, 1, 2]))
    b.add(np.array([3, 7]), np.array([1, 0]))
    a.merge(b)
    n, k, c = a.arrays()
    assert n.tolist() == [3, 5, 7] and k.tolist() == [1, 2, 0] and c.tolist() == [3, 1, 1]
    assert PairCounts.from_array(a.to_array()) == a


# --------------------------------------------------------------------------------------------
# Input formats


def _same_scores(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    keys = ("n_tokens", "n_scored", "statistic", "pvalue", "log10_pvalue", "flagged")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_every_input_format_gives_the_same_results(tmp_path: Path, paragraphs: list[str],
                                                   marked: list[str],
                                                   spec: WatermarkSpec) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = paragraphs[:60] + marked[:3]
    recs = [{"meta": {"text": t}, "n": i} for i, t in enumerate(texts)]
    base = write_jsonl(tmp_path / "a.jsonl", recs)
    raw = base.read_bytes()
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    table = pa.table({"meta": [{"text": t} for t in texts], "n": list(range(len(texts)))})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=16)
    with open(tmp_path / "e.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["n", "meta.text"])
        w.writerows([i, t] for i, t in enumerate(texts))
    tdir = tmp_path / "texts"
    tdir.mkdir()
    for i, t in enumerate(texts):
        (tdir / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    (tdir / "README.rst").write_text("not data")
    hf = tmp_path / "hf"
    hf.mkdir()
    with pa.ipc.new_stream(hf / "data-00000-of-00001.arrow", table.schema) as wr:
        for b in table.to_batches(max_chunksize=25):
            wr.write_batch(b)
    (hf / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (hf / "dataset_info.json").write_text("{}")
    dd = tmp_path / "dd"  # a DatasetDict folder: one dataset folder per split
    dd.mkdir()
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    shutil.copytree(hf, dd / "train")

    results = {}
    for name, inp, fld in [("jsonl", base, "meta.text"), ("gz", tmp_path / "b.jsonl.gz",
                                                             "meta.text"),
                           ("zst", tmp_path / "c.jsonl.zst", "meta.text"),
                           ("parquet", tmp_path / "d.parquet", "meta.text"),
                           ("csv", tmp_path / "e.csv", "meta.text"),
                           ("text", tdir, "text"), ("hf", hf, "meta.text"),
                           ("datasetdict", dd, "meta.text")]:
        out = tmp_path / f"{name}.out.jsonl"
        res = scan([inp], [spec], field=fld, out=out)
        results[name] = (res, read_rows(out))
    ref_res, ref_rows = results["jsonl"]
    assert ref_res.n_records_scored == len(texts) and ref_res.n_flagged >= 3
    for name, (res, rows) in results.items():
        assert res.aggregate == ref_res.aggregate, name
        _same_scores(rows, ref_rows)
    locs = {name: rows[20]["location"] for name, (_, rows) in results.items()}
    assert locs["jsonl"] == f"{base}:21"
    assert locs["gz"] == f"{tmp_path / 'b.jsonl.gz'}:21"
    assert locs["parquet"] == f"{tmp_path / 'd.parquet'}:1:4"  # row group 1, row 4
    # the line a record starts on: after the header and the lines of the records before
    assert locs["csv"] == f"{tmp_path / 'e.csv'}:{2 + sum(t.count(chr(10)) + 1 for t in texts[:20])}"
    assert locs["text"] == str(tdir / "020.txt")
    assert locs["hf"] == f"{hf / 'data-00000-of-00001.arrow'}:0:20"
    # Parquet output holds the same
    pout = tmp_path / "res.parquet"
    scan([base], [spec], field="meta.text", out=pout)
    back = pq.read_table(pout).to_pylist()
    _same_scores(back, ref_rows)
    assert [r["location"] for r in back] == [r["location"] for r in ref_rows]


def test_chat_scores_only_assistant_turns(tmp_path: Path, paragraphs: list[str],
                                          marked: list[str], spec: WatermarkSpec) -> None:
    recs = [
        # a watermarked *user* turn must never count
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": marked[0]},
                      {"role": "assistant", "content": paragraphs[0]}]},
        {"messages": [{"role": "user", "content": paragraphs[1]},
                      {"role": "assistant", "content": [{"type": "text", "text": marked[1]}]},
                      {"role": "user", "content": "thanks"},
                      {"role": "assistant", "content": None, "tool_calls": []},
                      {"role": "assistant", "content": marked[2]}]},
    ]
    out = tmp_path / "chat.jsonl"
    res = scan([write_jsonl(tmp_path / "c.jsonl", recs)], [spec], chat="messages", out=out)
    rows = read_rows(out)
    det = Detector(spec)
    d0 = det.detect(paragraphs[0], prompt=marked[0])
    assert (rows[0]["n_tokens"], rows[0]["statistic"], rows[0]["pvalue"]) == (
        d0.n_tokens, d0.statistic, d0.pvalue)
    assert not rows[0]["flagged"] and rows[1]["flagged"]
    ids1, p1 = det.encode_with_prompt(marked[1], paragraphs[1])
    ids2, p2 = det.encode_with_prompt(marked[2], "")
    acc = AggregateAccumulator(scheme_for(spec))
    ids0, p0 = det.encode_with_prompt(paragraphs[0], marked[0])
    acc.add_batch([ids0, ids1, ids2], prompt_lens=[p0, p1, p2])
    assert res.aggregate.n_scored == acc.result().n_scored
    assert rows[1]["n_tokens"] == ids1.size - p1 + ids2.size


def test_other_schemes_scan_like_detect(tmp_path: Path, paragraphs: list[str],
                                        tokenizer_info: Any) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"t": p} for p in paragraphs[:30]])
    for name in ("gumbel", "tournament"):
        s = new_spec(name, {}, tokenizer_info, secret=bytes(range(7, 39)))
        out = tmp_path / f"{name}.jsonl"
        res = scan([path], [s], field="t", out=out)
        det = Detector(s)
        for r, p in zip(read_rows(out)[:5], paragraphs):
            d = det.detect(p)
            assert r["n_scored"] == d.n_scored
            # summed in another order than detect's: equal to the last bits
            assert r["pvalue"] == pytest.approx(d.pvalue, rel=1e-12)
            assert r["statistic"] == pytest.approx(d.statistic, rel=1e-12)
        assert res.verdict(1e-3) == "not watermarked"
        assert res.fraction.method in ("beta-uniform-mixture", "binomial-mixture")


# --------------------------------------------------------------------------------------------
# Bad records


BAD_CASES = [
    (b'{"text": "fine"}\n{"text": "oops"\n', 2,
     "not valid JSON: Expecting ',' delimiter at column 16"),
    (b'{"text": "fine"}\n{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", 2,
     "JSON arrays or objects nested too deeply"),
    (b'{"text": "fine"}\n{"text": ' + b"7" * 5000 + b"}\n", 2,
     "a JSON number with more than 4300 digits"),
    (b'{"text": "fine"}\n\n{"other": 1}\n', 3, "no field 'text'"),
    (b'{"text": "fine"}\n{"text": 12}\n', 2, "field 'text' is a number, not a string"),
    (b'{"text": "fine"}\n{"text": "' + b"x" * 300 + b'"}\n', 2,
     "record of 312 bytes is longer than --max-record-bytes 200"),
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', 2, "not valid UTF-8: byte 0xe9 at offset 13"),
]


@pytest.mark.parametrize(("data", "line", "reason"), BAD_CASES)
def test_bad_records_stop_or_are_skipped(tmp_path: Path, spec: WatermarkSpec, data: bytes,
                                         line: int, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    out = tmp_path / "out.jsonl"
    limit = 200 if len(data) < 1000 else 300_000
    with pytest.raises(InputError) as exc:
        scan([path], [spec], field="text", out=out, max_record_bytes=limit)
    assert str(exc.value) == f"{path}:{line}: {reason} (--skip-bad skips bad records)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # nothing half-written
    res = scan([path], [spec], field="text", out=out, max_record_bytes=limit, skip_bad=True)
    assert (res.n_records_read, res.n_records_scored, res.n_records_skipped) == (2, 1, 1)
    assert len(read_rows(out)) == 1
    rejects = read_rows(tmp_path / "out.jsonl.rejects.jsonl")
    assert rejects == [{"location": f"{path}:{line}", "reason": reason}]


def test_files_that_are_not_regular_are_never_opened(tmp_path: Path, spec: WatermarkSpec,
                                                     key_file: Path) -> None:
    """A FIFO would block the scan for ever and /dev/zero never end: a folder holding them is
    refused before any record is read, or with --skip-bad each is one bad record."""
    folder = tmp_path / "leak"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": "a short text to score"}])
    os.mkfifo(folder / "b.jsonl")
    (folder / "c.jsonl").symlink_to("/dev/zero")
    (folder / "d.jsonl").symlink_to(tmp_path / "gone.jsonl")
    calls: list[Any] = []
    with pytest.raises(InputError) as exc:
        scan([folder], [spec], field="text", progress=calls.append)
    assert str(exc.value) == (f"{folder / 'b.jsonl'}: not a regular file: a FIFO (--skip-bad "
                              "skips bad records)")
    assert calls == []
    rejects = tmp_path / "rejects.jsonl"
    res = scan([folder], [spec], field="text", skip_bad=True, rejects=rejects)
    assert (res.n_records_read, res.n_records_scored, res.n_records_skipped) == (4, 1, 3)
    assert read_rows(rejects) == [
        {"location": str(folder / "b.jsonl"), "reason": "not a regular file: a FIFO"},
        {"location": str(folder / "c.jsonl"),
         "reason": "not a regular file: a symbolic link to a character device"},
        {"location": str(folder / "d.jsonl"),
         "reason": "not a regular file: a broken symbolic link"}]
    r = _run("scan", folder / "c.jsonl", "-k", key_file, "--field", "text")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == (f"distillmark: error: {folder / 'c.jsonl'}: not a regular file: a "
                        "symbolic link to a character device (--skip-bad skips bad records)\n")


def test_a_lone_surrogate_is_scored_as_a_replacement_character(tmp_path: Path,
                                                                spec: WatermarkSpec) -> None:
    """JSON can spell a half of a surrogate pair (no character: the tokenizer refuses it); the
    record is scored with U+FFFD in its place, as detect scores the text."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "one \\ud800 two three four five six seven"}\n')
    out = tmp_path / "out.jsonl"
    res = scan([path], [spec], field="text", out=out)
    assert (res.n_records_read, res.n_records_scored) == (1, 1)
    row = read_rows(out)[0]
    assert row["n_tokens"] == Detector(spec).detect("one \ufffd two three four five six "
                                                    "seven").n_tokens


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["text", "messages", "role", "content", "type", "x"]) | st.text(
            max_size=6), inner, max_size=4),
    max_leaves=12)
#: Lines of a hostile JSON Lines file: any bytes, any JSON value (ASCII-escaped or not), JSON
#: cut short, nested past the parser, a number past int's digits, half a surrogate pair.
LINES = st.one_of(
    st.binary(max_size=40),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    st.tuples(JSON_VALUES, st.integers(0, 30)).map(lambda t: json.dumps(t[0]).encode()[:t[1]]),
    st.integers(1, 5000).map(lambda n: b'{"text": ' + b"[" * n * 30 + b"]" * n * 30 + b"}"),
    st.integers(4290, 4400).map(lambda n: b'{"text": ' + b"9" * n + b"}"),
    st.text(max_size=10).map(lambda t: json.dumps({"text": t + "\ud800"}).encode()),
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(LINES, max_size=8), ends=st.sampled_from([b"\n", b"\r\n"]),
       limit=st.sampled_from([16, 200, 1 << 20]))
def test_any_bytes_read_as_records_or_bad_records(lines: list[bytes], ends: bytes, limit: int,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    """Whatever a JSON Lines file holds, the reader and the selectors give records or bad
    records, one per non-blank line, and never raise."""
    from distillmark.verify.sources import BadRecord, Selector, Shard, iter_shard

    path = tmp_path_factory.mktemp("r") / "r.jsonl"
    path.write_bytes(ends.join(lines))
    got = list(iter_shard(Shard(str(path), "jsonl"), max_record_bytes=limit))
    assert len(got) <= len(lines)
    for loc, rec in got:
        assert loc.startswith(f"{path}:")
        for selector in (Selector(field="text"), Selector(chat="messages")):
            segs = rec if isinstance(rec, BadRecord) else selector.segments(rec)
            if isinstance(segs, BadRecord):
                assert "\n" not in segs.reason
            else:
                for seg in segs:  # text a tokenizer and a UTF-8 file take
                    seg.text.encode("utf-8")
                    seg.context.encode("utf-8")


def test_bad_chat_records(tmp_path: Path, spec: WatermarkSpec) -> None:
    recs = [{"messages": "hello"}, {"messages": [{"content": "no role"}]},
            {"messages": [{"role": "assistant", "content": 5}]}]
    path = write_jsonl(tmp_path / "c.jsonl", recs)
    res = scan([path], [spec], chat="messages", skip_bad=True, rejects=tmp_path / "rej.jsonl")
    assert res.n_records_skipped == 3
    assert [r["reason"] for r in read_rows(tmp_path / "rej.jsonl")] == [
        "field 'messages' is a string, not a list of messages",
        "messages[0] is not a message (an object with 'role')",
        "messages[0].content is a number, not a string or a list of parts"]


def test_outputs_are_checked_before_the_scan_starts(tmp_path: Path, spec: WatermarkSpec,
                                                    key_file: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a short text to score"}])
    missing = tmp_path / "missing"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"out": missing / "o.jsonl"}, (f"--out {missing / 'o.jsonl'}: folder {missing} does "
                                       "not exist")),
        ({"report": missing / "r.html"}, (f"--report {missing / 'r.html'}: folder {missing} "
                                         "does not exist")),
        ({"rejects": tmp_path, "skip_bad": True}, f"--rejects {tmp_path}: it is a directory"),
        ({"resume": True, "state_dir": path}, f"--state-dir {path}: it is not a folder"),
    ]
    for kw, message in cases:
        calls: list[Any] = []
        with pytest.raises(InputError) as exc:
            scan([path], [spec], field="text", progress=calls.append, **kw)
        assert str(exc.value) == f"cannot write {message}"
        assert calls == []  # not one record read
    r = _run("scan", path, "-k", key_file, "--field", "text", "--report", missing / "r.html")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"distillmark: error: cannot write --report {missing / 'r.html'}: " \
                       f"folder {missing} does not exist\n"

    def disk_full(p: Any) -> None:
        if p.records:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(InputError, match=r"^the scan stopped: No space left on device; run it "
                                         r"again with --resume to continue$"):
        scan([path], [spec], field="text", out=tmp_path / "o.jsonl", resume=True,
             progress=disk_full)
    assert (tmp_path / "o.jsonl.scan-state").is_dir()


# --------------------------------------------------------------------------------------------
# Resume and the Dask engine


def test_resume_after_interruption_equals_a_clean_run(tmp_path: Path, mixed: Any,
                                                      spec: WatermarkSpec) -> None:
    path, _, _ = mixed
    bad = tmp_path / "more.jsonl"
    bad.write_text('{"output": {"text": "a short one"}}\nnot json\n', encoding="utf-8")
    clean_out = tmp_path / "clean.jsonl"
    kw: dict[str, Any] = {"field": "output.text", "skip_bad": True, "batch_chars": 20_000}
    clean = scan([path, bad], [spec], out=clean_out, **kw)
    out = tmp_path / "resumed.jsonl"

    calls = []

    def interrupt(p: Any) -> None:
        # called once at the start, then after each batch's lines are written and before its
        # checkpoint: stopping at the 4th call, after the 3rd batch, leaves more lines on disk
        # than the last checkpoint covers, as a Ctrl-C or a kill would
        calls.append(p)
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan([path, bad], [spec], out=out, resume=True, checkpoint_seconds=0,
             progress=interrupt, **kw)
    state = tmp_path / "resumed.jsonl.scan-state"
    assert (state / "checkpoint.npz").is_file() and not out.exists()
    rows_before = (state / "rows.jsonl").read_bytes().count(b"\n")
    assert rows_before > calls[2].records  # lines beyond the 2nd (last) checkpoint
    resumed = scan([path, bad], [spec], out=out, resume=True, checkpoint_seconds=0, **kw)
    assert resumed == clean
    assert out.read_bytes() == clean_out.read_bytes()
    assert (tmp_path / "resumed.jsonl.rejects.jsonl").read_bytes() == \
        (tmp_path / "clean.jsonl.rejects.jsonl").read_bytes()
    assert not state.exists()


def test_resume_after_a_killed_process_equals_a_clean_run(tmp_path: Path, mixed: Any,
                                                          spec: WatermarkSpec) -> None:
    """SIGKILL a scanning process at an arbitrary point after its first checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path, _, _ = mixed
    key = save_spec(spec, tmp_path / "key.json")
    out = tmp_path / "killed.jsonl"
    # Each chunk's progress call sleeps, so the scan lasts long enough to be killed mid-way on
    # any machine (the sleep changes no result).
    code = ("import sys, time; from distillmark.verify.scan import scan; "
            "from distillmark.watermark import load_spec; "
            "scan([sys.argv[1]], [load_spec(sys.argv[2])], field='output.text', "
            "out=sys.argv[3], resume=True, checkpoint_seconds=0, batch_chars=10_000, "
            "progress=lambda p: time.sleep(0.25))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(key), str(out)])
    ckpt = tmp_path / "killed.jsonl.scan-state" / "checkpoint.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the middle of a later batch
    assert proc.poll() is None, "the scan finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not out.exists()
    resumed = scan([path], [spec], field="output.text", out=out, resume=True)
    clean_out = tmp_path / "clean.jsonl"
    clean = scan([path], [spec], field="output.text", out=clean_out)
    assert resumed == clean
    assert out.read_bytes() == clean_out.read_bytes()


def test_resume_refuses_another_scans_checkpoint(tmp_path: Path, mixed: Any,
                                                 spec: WatermarkSpec,
                                                 spec_factory: SpecFactory) -> None:
    path, _, _ = mixed
    out = tmp_path / "r.jsonl"

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan([path], [spec], field="output.text", out=out, resume=True, checkpoint_seconds=0,
             batch_chars=50_000, on_checkpoint=stop)
    other = spec_factory(secret=bytes(32))
    with pytest.raises(InputError, match="belongs to another scan"):
        scan([path], [other], field="output.text", out=out, resume=True)


def test_dask_engine_equals_local(tmp_path: Path, mixed: Any, spec: WatermarkSpec,
                                  paragraphs: list[str]) -> None:
    """On a real LocalCluster (threads, processes=False, to keep the test fast; the benchmark
    runs worker processes). Shards: byte ranges of the JSONL file and Parquet row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from distributed import LocalCluster

    path, _, _ = mixed
    pq.write_table(pa.table({"output": [{"text": p} for p in paragraphs[:200]]}),
                   tmp_path / "more.parquet", row_group_size=50)
    inputs = [path, tmp_path / "more.parquet"]
    local_out, dask_out = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    local = scan(inputs, [spec], field="output.text", out=local_out)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        dk = scan(inputs, [spec], field="output.text", out=dask_out, engine="dask",
                  scheduler=cluster.scheduler_address, shard_bytes=60_000)
        # a bad record stops the cluster scan with the local engine's error
        bad = write_jsonl(tmp_path / "bad.jsonl", [{"output": {"text": "fine"}}, {"x": 1}])
        with pytest.raises(InputError, match=rf"^{re.escape(str(bad))}:2: no field 'output'"):
            scan([path, bad], [spec], field="output.text", engine="dask",
                 scheduler=cluster.scheduler_address, shard_bytes=60_000)
    assert dk == local
    assert dask_out.read_bytes() == local_out.read_bytes()
    from distillmark.verify.sources import plan_shards

    shards = plan_shards(inputs, shard_bytes=60_000)  # really split: byte ranges, row groups
    assert sum(s.fmt == "jsonl" for s in shards) >= 8 and sum(s.fmt == "parquet"
                                                               for s in shards) >= 2


# --------------------------------------------------------------------------------------------
# The command


def _run(*args: Any) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, spec: WatermarkSpec) -> Path:
    return save_spec(spec, tmp_path_factory.mktemp("key") / "key.json")


def test_cli_exit_codes_json_and_report(tmp_path: Path, mixed: Any, key_file: Path,
                                        paragraphs: list[str]) -> None:
    path, _, _ = mixed
    r = _run("scan", path, "--key", key_file, "--field", "output.text", "--json",
             "--out", tmp_path / "r.parquet", "--report", tmp_path / "rep.html")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    for k in ("statistic", "pvalue", "log10_pvalue", "n_scored", "n_tokens", "n_keys",
              "verdict", "n_records_read", "n_records_scored", "n_records_skipped",
              "n_flagged", "fraction", "fraction_ci_low", "fraction_ci_high",
              "detectable_fraction", "key_id", "per_key"):
        assert k in d, k
    assert d["fraction_estimated"] is True
    assert d["verdict"] == "watermarked" and r.stderr == ""
    page = (tmp_path / "rep.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3 and "watermarked" in page
    secret = json.loads(key_file.read_text())["secret"]
    assert secret not in page and d["key_id"] in page
    human = write_jsonl(tmp_path / "h.jsonl", [{"text": p} for p in paragraphs[:100]])
    r = _run("scan", human, "-k", key_file, "--field", "text")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0].startswith("dataset: not watermarked (p = ")
    assert lines[1].startswith("records: 100 read, 100 scored, 0 skipped; ")
    assert lines[-1].startswith("evidence: a watermark on ")


def test_cli_errors_are_one_line(tmp_path: Path, key_file: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n[1, 2]\n', encoding="utf-8")
    r = _run("scan", bad, "-k", key_file, "--field", "text", "--out", tmp_path / "o.jsonl")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == (f"distillmark: error: {bad}:2: no field 'text' (the value above it is "
                        "a list, not an object) (--skip-bad skips bad records)\n")
    assert not (tmp_path / "o.jsonl").exists()
    r = _run("scan", bad, "-k", key_file)
    assert (r.exit_code, r.stderr) == (
        2, "distillmark: error: give one of --field PATH or --chat PATH\n")
    r = _run("scan", tmp_path / "nope.jsonl", "-k", key_file, "--field", "text")
    assert r.stderr == f"distillmark: error: {tmp_path / 'nope.jsonl'}: no such file or " \
                       "directory\n"
    r = _run("scan", bad, "-k", key_file, "--field", "text", "--fdr", "2")
    assert (r.exit_code, r.stderr) == (
        2, "distillmark: error: --fdr must be in (0, 1), got 2.0\n")
    r = _run("scan", bad, "-k", key_file, "--field", "text", "--out", tmp_path / "o.csv")
    assert r.stderr == "distillmark: error: --out must end in .jsonl or .parquet, got o.csv\n"
    r = _run("scan", bad, "-k", key_file, "--field", "text", "--skip-bad", "--json")
    d = json.loads(r.stdout)
    assert r.exit_code == 1 and d["verdict"] == "insufficient evidence"
    assert (d["n_records_read"], d["n_records_scored"], d["n_records_skipped"]) == (2, 1, 1)
    # with no --out and no --rejects, the skipped records are named on stderr
    skipped = (f"distillmark: skipped {bad}:2: no field 'text' (the value above it is a list, "
               "not an object)\n")
    assert r.stderr == skipped
    r = _run("scan", bad, "-k", key_file, "--field", "text", "--skip-bad")
    assert r.stderr == skipped and "1 skipped (named on stderr)" in r.stdout
    r = _run("scan", bad, "-k", key_file, "--field", "text", "--skip-bad", "--out",
             tmp_path / "r.jsonl")
    assert r.stderr == "" and f"1 skipped (see {tmp_path / 'r.jsonl.rejects.jsonl'})" in r.stdout


def test_scan_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys, distillmark.cli.main, distillmark.verify.scan; "
            "print(sorted(m for m in ('dask', 'distributed', 'pyarrow', 'matplotlib', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"



