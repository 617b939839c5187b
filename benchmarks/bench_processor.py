"""Per-step cost of the watermark logits processor at vocab 49,152, one thread.

    python benchmarks/bench_processor.py [--quick] [--no-json]

distillmark's ``WatermarkLogitsProcessor`` (lefthash "hash" for h = 0..4, and the "selfhash"
preset: h = 3 plus the candidate, a window of 4, combine "min") against transformers'
``WatermarkLogitsProcessor`` (lefthash context_width 1; selfhash context_width 4, also a window
of 4 tokens), batch 1 and 8, on the same random ``input_ids (B, 300)`` and ``scores (B, 49152)``.

Each call is timed alone, on a fresh copy of its scores (both processors may write to them; the
copy is not timed), cycling through 8 different inputs; the median call counts. All
configurations run once per round, for 3 rounds (1 with --quick), and the table shows the median
over the rounds, so that the load of a shared machine hits every configuration alike. The first call, which builds the keyed
tables, is timed separately with the constructor ("set-up") and left out of the per-step figure.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import BENCH_SECRET, fmt_ratio, machine, machine_line, markdown_table, write_json
from transformers.generation.logits_process import (
    WatermarkLogitsProcessor as HFWatermarkLogitsProcessor,
)

from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for
from distillmark.watermark.hf import WatermarkLogitsProcessor

V = 49_152
SEQ_LEN = 300
POOL = 8
BATCHES = (1, 8)
TARGET_MS_PER_ROW = 0.05

#: (label, seeding, h, distillmark params)
DM_CONFIGS = [(f"distillmark lefthash h={h}", "lefthash", h, {"context_width": h})
              for h in range(5)] + [
    ("distillmark selfhash h=3 (window 4, min)", "selfhash", 3,
     {"context_width": 3, "seeding": "selfhash", "combine": "min"})]
#: (label, seeding, context_width)
HF_CONFIGS = [("transformers lefthash context_width=1", "lefthash", 1),
              ("transformers selfhash context_width=4", "selfhash", 4)]


def _calls(quick: bool, kind: str, batch: int) -> int:
    full = {"dm": 2000, "hf_lefthash": 200, "hf_selfhash": 40}[kind]
    n = max(3, full // (10 if quick else 1))
    return max(3, n // batch) if batch > 1 else n


def _inputs(batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1234 + batch)
    ids = [torch.randint(0, V, (batch, SEQ_LEN), generator=g) for _ in range(POOL)]
    scores = [torch.randn(batch, V, generator=g) for _ in range(POOL)]
    return ids, scores


def _time_calls(proc: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                ids: list[torch.Tensor], scores: list[torch.Tensor], n: int, warmup: int
                ) -> tuple[list[float], list[float]]:
    """Wall and thread-CPU seconds of each call (the CPU time is what the call costs when
    other processes share the cores; the wall time includes waiting for one)."""
    work = scores[0].clone()
    times, cpu = [], []
    for i in range(warmup + n):
        work.copy_(scores[i % POOL])
        c0 = time.thread_time_ns()
        t0 = time.perf_counter()
        proc(ids[i % POOL], work)
        dt = time.perf_counter() - t0
        dc = (time.thread_time_ns() - c0) * 1e-9
        if i >= warmup:
            times.append(dt)
            cpu.append(dc)
    return times, cpu


def _measure(make: Callable[[], Any], batch: int, n: int) -> dict[str, Any]:
    ids, scores = _inputs(batch)
    work = scores[0].clone()
    t0 = time.perf_counter()
    proc = make()
    proc(ids[0], work)
    setup = time.perf_counter() - t0
    warmup = min(10, n)
    times, cpu = _time_calls(proc, ids, scores, n, warmup)
    med = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    return {"calls": n, "setup_first_call_s": setup, "median_call_s": med, "p90_call_s": p90,
            "ms_per_row": med * 1e3 / batch,
            "cpu_ms_per_row": statistics.median(cpu) * 1e3 / batch}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls (under a minute)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds over all configurations (default 3, 1 with --quick)")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/out/")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    _, info = load_tokenizer(BUILTIN_SMOLLM2)

    # Every configuration runs once per round and the rounds repeat, so that a change in the
    # machine's load hits all of them alike; the table shows the median over the rounds.
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    meta: dict[str, tuple[str, str, int]] = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr)
        for label, seeding, h, params in DM_CONFIGS:
            spec = new_spec("greenlist", params, info, secret=BENCH_SECRET)
            meta[label] = ("distillmark", seeding, h)
            for batch in BATCHES:
                runs.setdefault((label, batch), []).append(_measure(
                    lambda spec=spec: WatermarkLogitsProcessor(scheme_for(spec)), batch,
                    _calls(args.quick, "dm", batch)))
        for label, seeding, width in HF_CONFIGS:
            meta[label] = ("transformers", seeding, width)
            for batch in BATCHES:

                def make(seeding: str = seeding, width: int = width) -> Any:
                    return HFWatermarkLogitsProcessor(vocab_size=V, device="cpu",
                                                      greenlist_ratio=0.25, bias=2.0,
                                                      seeding_scheme=seeding,
                                                      context_width=width)

                runs.setdefault((label, batch), []).append(
                    _measure(make, batch, _calls(args.quick, f"hf_{seeding}", batch)))

    results: list[dict[str, Any]] = []
    for (label, batch), rs in runs.items():
        tool, seeding, h = meta[label]
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("setup_first_call_s", "median_call_s", "p90_call_s", "ms_per_row",
                         "cpu_ms_per_row")}
        results.append({"tool": tool, "label": label, "seeding": seeding, "h": h,
                        "batch": batch, "calls_per_round": rs[0]["calls"], **med,
                        "ms_per_row_by_round": [r["ms_per_row"] for r in rs]})

    hf_ref = {(r["seeding"], r["batch"]): r["ms_per_row"] for r in results
              if r["tool"] == "transformers"}
    rows = []
    for r in results:
        ref = hf_ref[(r["seeding"], r["batch"])]
        r["speedup_vs_transformers"] = ref / r["ms_per_row"]
        target = ("-" if r["tool"] != "distillmark" or r["seeding"] != "lefthash"
                  else "/".join("yes" if r[k] <= TARGET_MS_PER_ROW else "no"
                                for k in ("ms_per_row", "cpu_ms_per_row")))
        rows.append([r["label"], r["batch"], f"{r['setup_first_call_s'] * 1e3:,.1f}",
                     f"{r['median_call_s'] * 1e3:.3f}", f"{r['p90_call_s'] * 1e3:.3f}",
                     f"{r['ms_per_row']:.4f}", f"{r['cpu_ms_per_row']:.4f}",
                     f"{min(r['ms_per_row_by_round']):.3f}–{max(r['ms_per_row_by_round']):.3f}",
                     fmt_ratio(r["speedup_vs_transformers"]) if r["tool"] == "distillmark"
                     else "1×", target])
    info_m = machine()
    table = markdown_table(
        ["processor", "batch", "set-up + 1st call ms", "ms per call (median)", "p90 ms",
         "ms per row", "CPU ms per row", "rounds' range (wall)",
         "speed-up vs transformers (same seeding)", "≤ 0.05 ms/row (wall/CPU)"], rows)
    print(f"\nLogits processor per step, V = {V:,}, input_ids length {SEQ_LEN}, one thread, "
          f"median of {args.rounds} round(s); {machine_line(info_m)}\n")
    print(table)
    if not args.no_json:
        path = write_json("bench_processor", {"quick": args.quick, "rounds": args.rounds,
                                              "vocab_size": V,
                                              "seq_len": SEQ_LEN, "machine": info_m,
                                              "results": results, "table": table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
