"""Per-step cost of the watermark logits processor at vocab 49,152, one thread.

    python benchmarks/bench_processor.py [--quick] [--no-json] [--lists 256]
    python benchmarks/bench_processor.py --lists 256,65536 [--quick]   # the lists table

distillmark's ``WatermarkLogitsProcessor`` (lefthash "hash" for h = 0..4, and the "selfhash"
preset: h = 3 plus the candidate, a window of 4, combine "min") against transformers'
``WatermarkLogitsProcessor`` (lefthash context_width 1; selfhash context_width 4, also a window
of 4 tokens), batch 1 and 8, on the same random ``input_ids (B, 300)`` and ``scores (B, 49152)``.

Each call is timed alone, on a fresh copy of its scores (both processors may write to them; the
copy is not timed), cycling through 8 different inputs; the median call counts. All
configurations run once per round, for 3 rounds (1 with --quick), and the table shows the median
over the rounds, so that the load of a shared machine hits every configuration alike. The first call, which builds the keyed
tables, is timed separately with the constructor ("set-up") and left out of the per-step figure.

``--lists N`` gives distillmark's keys N green lists (default: the scheme's, 65,536). With
two or more, ``--lists 256,65536``, the script instead prints the cost of the number of lists
for the default key (lefthash h = 1, gamma 0.25, delta 2), the configurations alternating
within each round (the order reversed every other round):

* set-up: constructor + first call, batch 1 and 8;
* per step, rows met before (the 8 inputs cycled: every row cached after the warm-up), rows
  never met (each call's previous tokens new: with many lists, a row computed from the
  keystream), and real text (a fresh processor fed the previous tokens of tokenised docstrings,
  ``batch`` texts side by side; mean over the steps after the first, rows first met included);
* the row cache's miss share over 1M tokens of text (the cache's policy replayed on the rows
  the text selects, nothing computed), and the mean per row it implies;
* the same text steps with the key's account layer (what ``serve --accounts`` adds per answer);
* memory, each configuration in a fresh process: bytes held by the processor after 20,000
  rows of text (``tracemalloc``: the tables, or the cached rows), its peak during set-up and
  the steps, and the process's peak RSS above what it held before the processor was made.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import (
    BENCH_SECRET,
    fmt_ratio,
    human_texts,
    machine,
    machine_line,
    markdown_table,
    sentence_token_ids,
    shuffled_stream,
    write_json,
)
from transformers.generation.logits_process import (
    WatermarkLogitsProcessor as HFWatermarkLogitsProcessor,
)

from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for
from distillmark.watermark import greenlist as greenlist_module
from distillmark.watermark.accounts import AccountLayer, AccountLayerParams, AccountMarked
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


# --------------------------------------------------------------------------------------------
# The cost of the number of lists (--lists 256,65536): the default key, h = 1

#: Text steps per configuration (rows = steps x batch), and for the memory children.
TEXT_ROWS = 4000
MEMORY_ROWS = 20_000
#: Tokens of text over which the row cache's miss share is replayed.
MISS_TOKENS = 1_000_000


def _text(n_tokens: int, seed: int) -> np.ndarray:
    """``(n_tokens,) int64``: tokenised docstrings (real previous-token statistics)."""
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    return shuffled_stream(sentence_token_ids(tok, human_texts()), n_tokens, seed=seed)


def _key(n_lists: int, info: Any, accounts: bool = False) -> Any:
    return new_spec("greenlist", {"n_lists": n_lists}, info, secret=BENCH_SECRET,
                    accounts=AccountLayerParams() if accounts else None)


def _processor(spec: Any, accounts: bool) -> WatermarkLogitsProcessor:
    scheme = scheme_for(spec)
    if accounts:  # what serve --accounts runs for one account's answer
        scheme = AccountMarked(scheme, AccountLayer(spec.secret, spec.vocab_size,
                                                    spec.accounts), number=12345)
    return WatermarkLogitsProcessor(scheme)


def _text_inputs(text: np.ndarray, batch: int, rows: int) -> list[torch.Tensor]:
    """Each step's ``input_ids (batch, 2)``: ``batch`` stretches of ``text`` side by side,
    ``rows // batch`` steps; only the last token (h = 1) is read."""
    steps = rows // batch
    span = text[:batch * (steps + 1)].reshape(batch, steps + 1)
    t = torch.from_numpy(np.ascontiguousarray(span))
    return [t[:, i:i + 2] for i in range(steps)]


def _run_steps(proc: Any, inputs: list[torch.Tensor], scores: torch.Tensor) -> list[float]:
    work = scores.clone()
    out = []
    for ids in inputs:
        work.copy_(scores)
        t0 = time.perf_counter()
        proc(ids, work)
        out.append(time.perf_counter() - t0)
    return out


def _new_row_inputs(batch: int, calls: int) -> list[torch.Tensor]:
    """``calls`` inputs whose previous tokens are all distinct (never met before)."""
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(77))
    return [perm[i * batch:(i + 1) * batch].reshape(batch, 1).repeat(1, 2)
            for i in range(calls)]


def _miss_share(n_lists: int, info: Any, text: np.ndarray) -> float:
    """Share of the text's steps whose row is not in the scheme's row cache: its policy (keep
    the last ``_ROW_CACHE`` rows computed) replayed on the rows the text selects; 0 when the
    table is held whole."""
    scheme = scheme_for(_key(n_lists, info))
    if scheme.dense:
        return 0.0
    cap = greenlist_module._ROW_CACHE
    cache: dict[int, None] = {}
    misses = 0
    for r in scheme.rows(text[:-1, None]).tolist():
        if r not in cache:
            misses += 1
            if len(cache) >= cap:
                del cache[next(iter(cache))]
            cache[r] = None
    return misses / (text.size - 1)


def _peak_rss() -> int:
    """This process's peak resident set size since the last reset, bytes (Linux)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def _reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs``); returns it."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")
    return _peak_rss()


def _memory_child(n_lists: int, text_path: str) -> dict[str, Any]:
    """One configuration in this fresh process: bytes held by the processor after
    ``MEMORY_ROWS`` rows of the text saved at ``text_path``, the peak while making it and
    running them, and how far that raised the process's peak RSS."""
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    inputs = _text_inputs(np.load(text_path), 8, MEMORY_ROWS)
    scores = torch.randn(8, V, generator=torch.Generator().manual_seed(3))
    spec = _key(n_lists, info)
    rss_before = _reset_peak_rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    proc = _processor(spec, accounts=False)
    _run_steps(proc, inputs, scores)
    seconds = time.perf_counter() - t0
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = _peak_rss()
    scheme = proc.scheme
    rows_cached = len(scheme.__dict__.get("_row_cache", {}))
    return {"n_lists": n_lists, "rows": MEMORY_ROWS, "seconds": seconds, "held_bytes": held,
            "peak_bytes": peak, "rss_peak_added_bytes": rss_after - rss_before,
            "rows_cached": rows_cached, "dense": scheme.dense}


def _lists_main(lists: list[int], args: argparse.Namespace) -> int:
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    text = _text(MISS_TOKENS, seed=4)
    gen = torch.Generator().manual_seed(11)
    scores = {b: torch.randn(b, V, generator=gen) for b in BATCHES}
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    loads: list[float] = []
    for rnd in range(args.rounds):
        order = lists if rnd % 2 == 0 else lists[::-1]
        loads.append(os.getloadavg()[0])
        print(f"round {rnd + 1}/{args.rounds} ({', '.join(map(str, order))}); load average "
              f"{loads[-1]:.2f}", file=sys.stderr)
        for n_lists in order:
            for batch in BATCHES:
                spec = _key(n_lists, info)
                r = _measure(lambda spec=spec: WatermarkLogitsProcessor(scheme_for(spec)), batch,
                             _calls(args.quick, "dm", batch))
                proc = WatermarkLogitsProcessor(scheme_for(spec))
                proc(_new_row_inputs(batch, 1)[0], scores[batch].clone())
                new_rows = _run_steps(proc, _new_row_inputs(batch, 200 if args.quick else 600)[1:],
                                      scores[batch])
                rows = TEXT_ROWS // (4 if args.quick else 1)
                steps = _text_inputs(text, batch, rows)
                # the first step (set-up, timed above) left out
                plain = _run_steps(_processor(spec, False), steps, scores[batch])[1:]
                layered = _run_steps(_processor(_key(n_lists, info, accounts=True), True), steps,
                                     scores[batch])[1:]
                runs.setdefault((n_lists, batch), []).append({
                    "setup_first_call_s": r["setup_first_call_s"],
                    "met_ms_per_row": r["ms_per_row"],
                    "new_ms_per_row": statistics.median(new_rows) * 1e3 / batch,
                    "text_ms_per_row": sum(plain) * 1e3 / (len(plain) * batch),
                    "accounts_text_ms_per_row": sum(layered) * 1e3 / (len(layered) * batch),
                    "text_rows": (len(plain) + 1) * batch})
    loads.append(os.getloadavg()[0])
    miss = {n: _miss_share(n, info, text) for n in lists}
    memory: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "text.npy")
        np.save(text_path, text[:MEMORY_ROWS + 64])
        for rnd in range(2):  # each configuration twice, alternating, in fresh processes
            for n_lists in (lists if rnd == 0 else lists[::-1]):
                out = subprocess.run([sys.executable, __file__, "--memory-child", str(n_lists),
                                      text_path], check=True, capture_output=True,
                                     text=True).stdout
                memory.setdefault(n_lists, []).append(json.loads(out.splitlines()[-1]))
    loads.append(os.getloadavg()[0])

    base = lists[0]
    keys = ("setup_first_call_s", "met_ms_per_row", "new_ms_per_row", "text_ms_per_row",
            "accounts_text_ms_per_row")
    results = []
    for (n_lists, batch), rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        med["steady_text_ms_per_row"] = (med["met_ms_per_row"] * (1 - miss[n_lists])
                                         + med["new_ms_per_row"] * miss[n_lists])
        results.append({"n_lists": n_lists, "batch": batch, **med, "miss_share": miss[n_lists],
                        "text_ms_per_row_by_round": [r["text_ms_per_row"] for r in rs]})
    ref = {r["batch"]: r for r in results if r["n_lists"] == base}
    rows = []
    for r in results:
        b = ref[r["batch"]]
        rows.append([f"{r['n_lists']:,}", r["batch"],
                     f"{r['setup_first_call_s'] * 1e3:,.1f}",
                     f"{r['met_ms_per_row']:.4f}", f"{r['new_ms_per_row']:.3f}",
                     f"{r['text_ms_per_row']:.3f}", f"{r['miss_share']:.1%}",
                     f"{r['steady_text_ms_per_row']:.3f}",
                     f"{r['accounts_text_ms_per_row']:.3f}",
                     " / ".join(fmt_ratio(r[k] / b[k]) for k in (
                         "setup_first_call_s", "met_ms_per_row", "text_ms_per_row",
                         "steady_text_ms_per_row", "accounts_text_ms_per_row"))])
    table = markdown_table(
        ["lists", "batch", "set-up + 1st call ms", "ms/row, rows met", "ms/row, new rows",
         f"ms/row, text (first {rows_of(runs)} rows)", "row misses over 1M tokens",
         "ms/row, text, steady (estimate)", "ms/row, text, account layer",
         f"ratio to {base:,}: set-up / met / text / steady / accounts"], rows)
    mem_rows = []
    for n_lists, ms in memory.items():
        held = statistics.median(m["held_bytes"] for m in ms)
        mem_rows.append([f"{n_lists:,}", f"{held / 2**20:,.1f}",
                         f"{statistics.median(m['peak_bytes'] for m in ms) / 2**20:,.1f}",
                         f"{statistics.median(m['rss_peak_added_bytes'] for m in ms) / 2**20:,.1f}",
                         f"{ms[0]['rows_cached']:,}" if not ms[0]["dense"] else "whole table"])
    mem_table = markdown_table(["lists", "held after 20,000 rows of text, MiB",
                                "peak (tracemalloc), MiB", "peak RSS added, MiB",
                                "rows cached"], mem_rows)
    info_m = machine()
    print(f"\nThe default key (lefthash h = 1, gamma 0.25, delta 2) with "
          f"{' and '.join(map(str, lists))} lists; V = {V:,}, one thread, median of "
          f"{args.rounds} round(s); "
          f"{machine_line(info_m)}; load average at each round and after: "
          f"{', '.join(f'{x:.2f}' for x in loads)}\n")
    print(table)
    print("\nMemory of the processor (fresh process per configuration, two each):\n")
    print(mem_table)
    if not args.no_json:
        path = write_json("bench_processor_lists", {
            "quick": args.quick, "rounds": args.rounds, "vocab_size": V, "lists": lists,
            "loadavg": loads, "machine": info_m, "results": results,
            "memory": {str(k): v for k, v in memory.items()}, "table": table,
            "memory_table": mem_table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


def rows_of(runs: dict[tuple[int, int], list[dict[str, Any]]]) -> str:
    """The text rows each configuration ran (the same for all)."""
    return f"{next(iter(runs.values()))[0]['text_rows']:,}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls (under a minute)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds over all configurations (default 3, 1 with --quick)")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/out/")
    ap.add_argument("--lists", default=None,
                    help="green lists of distillmark's keys (default: the scheme's); two or "
                         "more, comma-separated (256,65536): the lists table instead")
    ap.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    if args.memory_child is not None:
        print(json.dumps(_memory_child(int(args.memory_child[0]), args.memory_child[1])))
        return 0
    lists = [int(x) for x in args.lists.split(",")] if args.lists else []
    if len(lists) > 1:
        return _lists_main(lists, args)
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    dm_configs = [(label, seeding, h, {**params, "n_lists": lists[0]} if lists else params)
                  for label, seeding, h, params in DM_CONFIGS]

    # Every configuration runs once per round and the rounds repeat, so that a change in the
    # machine's load hits all of them alike; the table shows the median over the rounds.
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    meta: dict[str, tuple[str, str, int]] = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr)
        for label, seeding, h, params in dm_configs:
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
    n_lists = lists[0] if lists else greenlist_module.GreenListParams().n_lists
    print(f"\nLogits processor per step, V = {V:,}, input_ids length {SEQ_LEN}, one thread, "
          f"{n_lists:,} lists, median of {args.rounds} round(s); {machine_line(info_m)}\n")
    print(table)
    if not args.no_json:
        path = write_json("bench_processor", {"quick": args.quick, "rounds": args.rounds,
                                              "vocab_size": V, "n_lists": n_lists,
                                              "seq_len": SEQ_LEN, "machine": info_m,
                                              "results": results, "table": table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
