"""Dataset scans: input formats (JSON Lines plain and compressed, Parquet, CSV, text folders,
Hugging Face datasets, chat records) and bad records, which stop the scan or are skipped."""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scan_helpers import read_rows, run_cli, write_jsonl

from distillmark.verify import AggregateAccumulator, Detector
from distillmark.verify.scan import scan
from distillmark.watermark import InputError, WatermarkSpec, new_spec, scheme_for

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
    r = run_cli("scan", folder / "c.jsonl", "-k", key_file, "--field", "text")
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

    lines = [ln.replace(b"\n", b" ") for ln in lines]  # a line holds no line break
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
        ({"html": missing / "r.html"}, (f"--html {missing / 'r.html'}: folder {missing} "
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
    r = run_cli("scan", path, "-k", key_file, "--field", "text", "--html", missing / "r.html")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == f"distillmark: error: cannot write --html {missing / 'r.html'}: " \
                       f"folder {missing} does not exist\n"

    def disk_full(p: Any) -> None:
        if p.records:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(InputError, match=r"^the scan stopped: No space left on device; run it "
                                         r"again with --resume to continue$"):
        scan([path], [spec], field="text", out=tmp_path / "o.jsonl", resume=True,
             progress=disk_full)
    assert (tmp_path / "o.jsonl.scan-state").is_dir()
