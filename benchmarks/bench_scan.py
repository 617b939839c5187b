"""End-to-end ``distillmark scan`` of a JSONL dataset, against its floor and its alternatives.

    python benchmarks/bench_scan.py [--quick] [--speed-mb 50] [--sizes 100,1000]
                                    [--hf-records 200] [--speed-only] [--no-json]

The data are generated here: JSON Lines records ``{"id", "prompt", "response"}`` whose
responses are one to four paragraphs of human text (numpy's and scipy's docstrings, drawn at
random with a fixed seed). Side by side:

* speed: the command as a user runs it (a subprocess: start-up, reading, JSON parsing,
  tokenising, per-record tests, pooled test, BH, fraction fit, per-record file) against the
  tokenizer alone on the same responses (``encode_batch_fast`` in batches of the scan's size:
  the floor of anything that must tokenise), in CPU seconds of all threads, so that the ratio
  holds on a machine shared with other jobs; tokens per CPU-second is "per core";
* the encoder's two paths: the same command with ``DISTILLMARK_SLOW_TOKENIZER=1`` (tokenizers
  only) against the default (tiktoken's exact rank-based BPE), whether their per-record files
  are byte-identical, and the fast encoder alone on the same batches;
* memory: peak RSS of the command on files of each of ``--sizes`` MB (``wait4`` of the child);
* the Dask engine (a 2-worker LocalCluster of processes, 8 shards) against the local
  engine on the speed file: wall-clock ratio, and whether the per-record files are identical;
* transformers' ``WatermarkDetector`` looped over ``--hf-records`` records (tokenised one by one
  with the same tokenizer; one torch thread): the only way to scan a dataset before this.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import BENCH_SECRET, fmt_rate, human_texts, machine, machine_line, markdown_table
from _common import write_json as write_out

from distillmark.verify.scan import DEFAULT_BATCH_CHARS
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, save_spec
from distillmark.watermark.encoder import SLOW_ENV, TextEncoder
from distillmark.watermark.tokenizer import encoder_for

PROMPTS = ["Explain this function.", "What does this do?", "Summarise the documentation.",
           "Describe the parameters."]


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "distillmark"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "distillmark"]


def make_jsonl(path: Path, mb: float, *, seed: int) -> int:
    """Write about ``mb`` MB of records; returns the number of records."""
    paras = [p.strip() for t in human_texts() for p in t.split("\n\n") if p.strip()]
    rng = np.random.default_rng(seed)
    target, size, n = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < target:
            block = []
            for _ in range(2000):
                k = int(rng.integers(1, 5))
                text = "\n\n".join(paras[i] for i in rng.integers(0, len(paras), size=k))
                block.append(json.dumps({"id": n, "prompt": PROMPTS[n % 4], "response": text})
                             + "\n")
                n += 1
            s = "".join(block)
            fh.write(s)
            size += len(s.encode("utf-8"))
    return n


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds, CPU seconds (user + system, all threads), peak RSS (MB) and stdout of one
    run of ``cmd`` (``env``: added to this process's environment)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err,
                                env={**os.environ, **env} if env else None)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stderr.strip()}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
            "stdout": stdout}


def tokenizer_floor(tok: Any, path: Path) -> dict[str, Any]:
    """The tokenizer alone on the file's responses, batched as the scan batches them (``tok``:
    a ``tokenizers`` tokenizer, or a ``TextEncoder`` for the fast path)."""
    with open(path, encoding="utf-8") as fh:
        texts = [json.loads(line)["response"] for line in fh]
    batches, cur, size = [], [], 0
    for t in texts:
        cur.append(t)
        size += len(t) + 1
        if size >= DEFAULT_BATCH_CHARS:
            batches.append(cur)
            cur, size = [], 0
    if cur:
        batches.append(cur)
    del texts
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for b in batches:
        if isinstance(tok, TextEncoder):
            n += int(tok.encode_batch(b)[1].sum())
            continue
        for e in tok.encode_batch_fast(b, add_special_tokens=False):
            n += len(e.ids)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "tokens": n}


def hf_loop(tok: Any, path: Path, n_records: int) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    torch.set_num_threads(1)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, bos_token_id=1)
    det = WatermarkDetector(model_config=cfg, device="cpu",
                            watermarking_config=WatermarkingConfig(greenlist_ratio=0.25, bias=2.0,
                                                                   context_width=1,
                                                                   seeding_scheme="lefthash"),
                            ignore_repeated_ngrams=True)
    texts = []
    with open(path, encoding="utf-8") as fh:
        for _, line in zip(range(n_records), fh):
            texts.append(json.loads(line)["response"])
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        if len(ids) < 2:
            continue
        det(torch.tensor([ids]), return_dict=True)
        n += len(ids)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "tokens": n,
            "records": len(texts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--speed-mb", type=float, default=None, help="size of the speed and Dask "
                    "file (default 50, 5 with --quick)")
    ap.add_argument("--sizes", default=None, help="file sizes of the memory runs in MB, "
                    "comma-separated (default 100,1000; 10,50 with --quick)")
    ap.add_argument("--hf-records", type=int, default=None, help="records for transformers' "
                    "detector (default 200, 40 with --quick)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the speed comparison")
    ap.add_argument("--speed-only", action="store_true", help="only the speed comparison "
                    "(no memory, Dask or transformers runs)")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/out/")
    args = ap.parse_args(argv)
    speed_mb = args.speed_mb or (5.0 if args.quick else 50.0)
    sizes = [float(x) for x in (args.sizes or ("10,50" if args.quick else "100,1000")).split(",")]
    hf_records = args.hf_records or (40 if args.quick else 200)

    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    fast_enc = encoder_for(info)
    if not fast_enc.prepare():
        print(f"the fast encoder is off here: {fast_enc.reason}", file=sys.stderr)
    spec = new_spec("greenlist", {}, info, secret=BENCH_SECRET)
    cli = _cli()
    results: dict[str, Any] = {"machine_start": machine()}
    with tempfile.TemporaryDirectory(prefix="distillmark-bench-scan-") as tmp_s:
        tmp = Path(tmp_s)
        key = save_spec(spec, tmp / "key.json")
        # memory first: a child's peak RSS counts the parent's pages at fork, and the
        # transformers run below makes this process large
        mem = []
        for mb in ([] if args.speed_only else sizes):
            path = tmp / f"mem-{mb:g}.jsonl"
            n = make_jsonl(path, mb, seed=2)
            print(f"memory: {mb:g} MB ({n:,} records)", file=sys.stderr)
            r = run_child(cli + ["scan", str(path), "--key", str(key), "--field", "response",
                                 "--json", "--out", str(tmp / "mem-out.jsonl")])
            res = json.loads(r.pop("stdout"))
            mem.append({"mb": path.stat().st_size / 1e6, "records": n,
                        "tokens": res["n_tokens"], **r})
            path.unlink()
            (tmp / "mem-out.jsonl").unlink(missing_ok=True)
        results["memory"] = mem
        data = tmp / "speed.jsonl"
        n_rec = make_jsonl(data, speed_mb, seed=1)
        print(f"speed file: {data.stat().st_size / 1e6:.1f} MB, {n_rec:,} records",
              file=sys.stderr)
        base = cli + ["scan", str(data), "--key", str(key), "--field", "response", "--json"]

        tiny = tmp / "tiny.jsonl"
        with open(data, encoding="utf-8") as fh:
            tiny.write_text(fh.readline(), encoding="utf-8")
        tiny_cmd = cli + ["scan", str(tiny), "--key", str(key), "--field", "response", "--json",
                          "--out", str(tmp / "tiny.out.jsonl")]
        scans, floors, startups, slows, fast_floors = [], [], [], [], []
        same_rows = True
        for rnd in range(args.rounds):
            print(f"speed round {rnd + 1}/{args.rounds}", file=sys.stderr)
            r = run_child(base + ["--out", str(tmp / "local.jsonl")])
            r["result"] = json.loads(r.pop("stdout"))
            scans.append(r)
            r = run_child(base + ["--out", str(tmp / "slow.jsonl")], env={SLOW_ENV: "1"})
            r["result"] = json.loads(r.pop("stdout"))
            slows.append(r)
            same_rows &= ((tmp / "slow.jsonl").read_bytes() == (tmp / "local.jsonl").read_bytes()
                          and r["result"] == scans[-1]["result"])
            floors.append(tokenizer_floor(tok, data))
            fast_floors.append(tokenizer_floor(fast_enc, data))
            s = run_child(tiny_cmd)
            s.pop("stdout")
            startups.append(s)
        n_tokens = scans[0]["result"]["n_tokens"]
        assert all(f["tokens"] == n_tokens for f in floors + fast_floors), "token counts differ"
        slow_cpu = statistics.median(s["cpu_s"] for s in slows)
        slow_wall = statistics.median(s["wall_s"] for s in slows)
        fast_tok_cpu = statistics.median(f["cpu_s"] for f in fast_floors)
        fast_tok_wall = statistics.median(f["wall_s"] for f in fast_floors)
        scan_cpu = statistics.median(s["cpu_s"] for s in scans)
        scan_wall = statistics.median(s["wall_s"] for s in scans)
        tok_cpu = statistics.median(f["cpu_s"] for f in floors)
        tok_wall = statistics.median(f["wall_s"] for f in floors)
        start_cpu = statistics.median(s["cpu_s"] for s in startups)
        start_wall = statistics.median(s["wall_s"] for s in startups)
        results["speed"] = {"file_mb": data.stat().st_size / 1e6, "records": n_rec,
                            "tokens": n_tokens, "scan": scans, "tokenizer": floors,
                            "startup": startups, "scan_tokenizers_only": slows,
                            "fast_encoder": fast_floors, "identical_rows_fast_slow": same_rows}
        if args.speed_only:
            return _report_speed(results, n_tokens, args, scan_wall=scan_wall, scan_cpu=scan_cpu,
                                 slow_wall=slow_wall, slow_cpu=slow_cpu, tok_wall=tok_wall,
                                 tok_cpu=tok_cpu, fast_tok_wall=fast_tok_wall,
                                 fast_tok_cpu=fast_tok_cpu, start_wall=start_wall,
                                 start_cpu=start_cpu)

        print("dask engine (2 worker processes)", file=sys.stderr)
        dk = run_child(base + ["--out", str(tmp / "dask.jsonl"), "--engine", "dask",
                               "--workers", "2", "--shard-mb", f"{max(1.0, speed_mb / 8):g}"])
        dk_res = json.loads(dk.pop("stdout"))
        identical = (tmp / "dask.jsonl").read_bytes() == (tmp / "local.jsonl").read_bytes()
        loc_res = scans[-1]["result"]
        same_result = dk_res == loc_res
        results["dask"] = {**dk, "identical_rows": identical, "identical_result": same_result}

        print(f"transformers WatermarkDetector over {hf_records} records", file=sys.stderr)
        hf = hf_loop(tok, data, hf_records)
        results["transformers"] = hf
        data.unlink()
        for f in ("local.jsonl", "dask.jsonl", "slow.jsonl"):
            (tmp / f).unlink(missing_ok=True)

    info_m = machine()
    results["machine_end"] = info_m

    rows = [
        ["`distillmark scan FILE --field response --out r.jsonl` (subprocess)",
         f"{scan_wall:.1f}", f"{scan_cpu:.1f}", fmt_rate(n_tokens / scan_wall),
         fmt_rate(n_tokens / scan_cpu), f"{(n_tokens / scan_cpu) / (n_tokens / tok_cpu):.2f}"],
        ["  its fixed start-up (the same command on a 1-record file)", f"{start_wall:.1f}",
         f"{start_cpu:.1f}", "-", "-", "-"],
        ["  end to end minus start-up", f"{scan_wall - start_wall:.1f}",
         f"{scan_cpu - start_cpu:.1f}", fmt_rate(n_tokens / (scan_wall - start_wall)),
         fmt_rate(n_tokens / (scan_cpu - start_cpu)),
         f"{tok_cpu / (scan_cpu - start_cpu):.2f}"],
        ["tokenizer alone: `encode_batch_fast`, same batches (floor)", f"{tok_wall:.1f}",
         f"{tok_cpu:.1f}", fmt_rate(n_tokens / tok_wall), fmt_rate(n_tokens / tok_cpu), "1.00"],
        *_encoder_rows(n_tokens, slow_wall=slow_wall, slow_cpu=slow_cpu, tok_cpu=tok_cpu,
                       fast_tok_wall=fast_tok_wall, fast_tok_cpu=fast_tok_cpu),
        ["`--engine dask`, LocalCluster of 2 worker processes", f"{dk['wall_s']:.1f}",
         f"{dk['cpu_s']:.1f} (client only)", fmt_rate(n_tokens / dk["wall_s"]), "-", "-"],
        [f"transformers `WatermarkDetector` looped over {hf['records']} records (1 thread)",
         f"{hf['wall_s']:.1f}", f"{hf['cpu_s']:.1f}", fmt_rate(hf["tokens"] / hf["wall_s"]),
         fmt_rate(hf["tokens"] / hf["cpu_s"]),
         f"{(hf['tokens'] / hf['cpu_s']) / (n_tokens / tok_cpu):.3f}"],
    ]
    table = markdown_table(["run", "wall s", "CPU s", "tokens/s (wall)", "tokens per CPU-s",
                            "× tokenizer floor (per CPU-s)"], rows)
    mem_table = markdown_table(
        ["JSONL file", "records", "tokens", "wall s", "peak RSS of the command"],
        [[f"{m['mb']:,.0f} MB", f"{m['records']:,}", f"{m['tokens']:,}", f"{m['wall_s']:.0f}",
          f"{m['peak_rss_mb']:,.0f} MB"] for m in mem])
    speedup = scan_wall / dk["wall_s"]
    vs_hf_cpu = (n_tokens / scan_cpu) / (hf["tokens"] / hf["cpu_s"])
    vs_hf_wall = (n_tokens / scan_wall) / (hf["tokens"] / hf["wall_s"])
    print(f"\n`distillmark scan` on {results['speed']['file_mb']:.0f} MB of JSONL "
          f"({n_rec:,} records, {n_tokens:,} tokens); {machine_line(info_m)} "
          f"(load at start {results['machine_start'].get('loadavg_1m', '?')})\n")
    print(table)
    _print_paths(results, scan_wall=scan_wall, scan_cpu=scan_cpu, slow_wall=slow_wall,
                 slow_cpu=slow_cpu)
    print(f"\nDask (2 workers) vs local, wall: {speedup:.2f}×; per-record files identical: "
          f"{identical}; results identical: {same_result}")
    print(f"scan vs transformers' detector loop: {vs_hf_cpu:,.0f}× per CPU-second, "
          f"{vs_hf_wall:,.0f}× per wall second")
    print(f"\nPeak memory\n\n{mem_table}")
    results.update(table=table, mem_table=mem_table, dask_speedup=speedup,
                   vs_transformers_cpu=vs_hf_cpu, vs_transformers_wall=vs_hf_wall)
    if not args.no_json:
        path = write_out("bench_scan", results)
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


def _encoder_rows(n_tokens: int, *, slow_wall: float, slow_cpu: float, tok_cpu: float,
                  fast_tok_wall: float, fast_tok_cpu: float) -> list[list[str]]:
    return [
        [f"the same command, tokenizers only (`{SLOW_ENV}=1`)", f"{slow_wall:.1f}",
         f"{slow_cpu:.1f}", fmt_rate(n_tokens / slow_wall), fmt_rate(n_tokens / slow_cpu),
         f"{tok_cpu / slow_cpu:.2f}"],
        ["fast encoder alone (tiktoken, exact), same batches", f"{fast_tok_wall:.1f}",
         f"{fast_tok_cpu:.1f}", fmt_rate(n_tokens / fast_tok_wall),
         fmt_rate(n_tokens / fast_tok_cpu), f"{tok_cpu / fast_tok_cpu:.2f}"],
    ]


def _print_paths(results: dict[str, Any], *, scan_wall: float, scan_cpu: float,
                 slow_wall: float, slow_cpu: float) -> None:
    sp = results["speed"]
    results["fast_vs_tokenizers_only"] = {"wall": slow_wall / scan_wall, "cpu": slow_cpu / scan_cpu}
    print(f"\nscan, fast encoder vs tokenizers only: {slow_cpu / scan_cpu:.2f}× per CPU-second, "
          f"{slow_wall / scan_wall:.2f}× per wall second; per-record files and results "
          f"byte-identical: {sp['identical_rows_fast_slow']}")


def _report_speed(results: dict[str, Any], n_tokens: int, args: argparse.Namespace, *,
                  scan_wall: float, scan_cpu: float, slow_wall: float, slow_cpu: float,
                  tok_wall: float, tok_cpu: float, fast_tok_wall: float, fast_tok_cpu: float,
                  start_wall: float, start_cpu: float) -> int:
    """``--speed-only``: the speed table and the two paths' ratios."""
    results["machine_end"] = info_m = machine()
    rows = [
        ["`distillmark scan FILE --field response --out r.jsonl` (subprocess)",
         f"{scan_wall:.1f}", f"{scan_cpu:.1f}", fmt_rate(n_tokens / scan_wall),
         fmt_rate(n_tokens / scan_cpu), f"{tok_cpu / scan_cpu:.2f}"],
        ["  its fixed start-up (the same command on a 1-record file)", f"{start_wall:.1f}",
         f"{start_cpu:.1f}", "-", "-", "-"],
        ["tokenizer alone: `encode_batch_fast`, same batches (floor)", f"{tok_wall:.1f}",
         f"{tok_cpu:.1f}", fmt_rate(n_tokens / tok_wall), fmt_rate(n_tokens / tok_cpu), "1.00"],
        *_encoder_rows(n_tokens, slow_wall=slow_wall, slow_cpu=slow_cpu, tok_cpu=tok_cpu,
                       fast_tok_wall=fast_tok_wall, fast_tok_cpu=fast_tok_cpu),
    ]
    table = markdown_table(["run", "wall s", "CPU s", "tokens/s (wall)", "tokens per CPU-s",
                            "× tokenizer floor (per CPU-s)"], rows)
    sp = results["speed"]
    print(f"\n`distillmark scan` on {sp['file_mb']:.0f} MB of JSONL ({sp['records']:,} records, "
          f"{n_tokens:,} tokens); {machine_line(info_m)} (load at start "
          f"{results['machine_start'].get('loadavg_1m', '?')})\n")
    print(table)
    _print_paths(results, scan_wall=scan_wall, scan_cpu=scan_cpu, slow_wall=slow_wall,
                 slow_cpu=slow_cpu)
    results["table"] = table
    if not args.no_json:
        path = write_out("bench_scan", results)
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
