"""Dataset scans: resuming an interrupted or killed scan, and the Dask engine, give the local
engine's uninterrupted results."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from scan_helpers import SpecFactory, write_jsonl

from distillmark.verify.scan import scan
from distillmark.watermark import InputError, WatermarkSpec, save_spec

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
