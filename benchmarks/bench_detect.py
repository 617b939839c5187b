"""Detection throughput from token ids on one core: distillmark vs transformers' detector.

    python benchmarks/bench_detect.py [--quick] [--no-json] [--widths 1,2,4] [--lists 256,65536]
    python benchmarks/bench_detect.py --stream-only [--widths 1,2,4] [--lists N]

Token ids are real text: numpy's and scipy's docstrings, split into sentences, tokenised with
the builtin SmolLM2 tokenizer and shuffled into streams (uniform random ids would repeat far
less than text does, and deduplication is part of the cost). For context widths h = 1, 2, 4:

* distillmark ``detect_ids`` on (a) many texts of 200 and of 1000 tokens, one call each (and
  the same texts in one ``detect_ids_batch`` call, whose results are checked against them), and
  (b) one stream of 10M tokens;
* transformers' ``WatermarkDetector`` (lefthash, same h, ``ignore_repeated_ngrams=True``) on the
  same ids, as many as take a few tens of seconds (about 50k tokens; its speed per token does
  not depend on the input size).

Keys have the scheme's default number of green lists, or ``--lists``; with several
(``--lists 256,65536``) each width runs with each, twice, alternating (the median shown), and a
table puts them side by side, with set-up and the peak memory (``tracemalloc``) of testing the
stream and of pooling the 1000-token texts (``AggregateAccumulator``, as probe and scan do).

Everything runs on one thread (BLAS/OpenMP pools pinned to 1 before numpy is imported). Rates
are given per second of wall time and per second of this process's CPU time: on a machine
shared with other jobs the second shows what one core delivers when it is not shared.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import math
import statistics
import sys
import time
import tracemalloc
from typing import Any

import numpy as np
from _common import (
    BENCH_SECRET,
    chunks_of,
    fmt_rate,
    fmt_ratio,
    human_texts,
    machine,
    machine_line,
    markdown_table,
    repeat_timed_cpu,
    sentence_token_ids,
    shuffled_stream,
    summary,
    write_json,
)

from distillmark.verify import AggregateAccumulator, detect_ids, detect_ids_batch
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

WIDTHS = (1, 2, 4)
TARGET_RATE = 10_000_000
TARGET_RATIO = 1000.0


#: (row label, distillmark key, transformers key) of each input.
INPUTS = (("texts of 200 tokens", "texts200", "texts200"),
          ("texts of 1000 tokens", "texts1000", "texts1000"),
          ("one stream of {stream} tokens", "stream", "stream"),
          ("texts of 200, table built", "texts200_table_built", "texts200"),
          ("texts of 200, one `detect_ids_batch` call", "texts200_batch", "texts200"),
          ("texts of 1000, one `detect_ids_batch` call", "texts1000_batch", "texts1000"))


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"n200": 500, "n1000": 100, "stream": 1_000_000, "hf_tokens": 5_000, "repeat": 3}
    return {"n200": 5_000, "n1000": 1_000, "stream": 10_000_000, "hf_tokens": 50_000,
            "repeat": 5}


def _dm_texts(texts: list[np.ndarray], scheme: Any, repeat: int) -> dict[str, Any]:
    def loop() -> None:
        for ids in texts:
            detect_ids(ids, scheme)

    times, cpu = repeat_timed_cpu(loop, repeat=repeat)
    n = sum(t.size for t in texts)
    s = summary(times)
    return {"tokens": n, "calls": len(texts), **s, "tokens_per_s": n / s["median_s"],
            "us_per_call": s["median_s"] / len(texts) * 1e6,
            "tokens_per_cpu_s": n / statistics.median(cpu)}


def _dm_batch(texts: list[np.ndarray], scheme: Any, repeat: int) -> dict[str, Any]:
    """All ``texts`` in one ``detect_ids_batch`` call (checked against one call per text)."""
    one_by_one = [detect_ids(t, scheme) for t in texts[:200]]
    batched = detect_ids_batch(texts[:200], scheme)
    if [(r.statistic, r.n_scored) for r in one_by_one] != [(r.statistic, r.n_scored)
                                                            for r in batched]:
        raise RuntimeError("detect_ids_batch disagrees with detect_ids")
    times, cpu = repeat_timed_cpu(lambda: detect_ids_batch(texts, scheme), repeat=repeat)
    n = sum(t.size for t in texts)
    s = summary(times)
    return {"tokens": n, "calls": 1, "texts": len(texts), **s,
            "tokens_per_s": n / s["median_s"], "us_per_call": s["median_s"] / len(texts) * 1e6,
            "tokens_per_cpu_s": n / statistics.median(cpu)}


def _hf_detector(h: int) -> Any:
    from transformers import LlamaConfig, WatermarkDetector, WatermarkingConfig

    # The detector reads only vocab_size and the BOS id from the model config; SmolLM2's BOS
    # id is 1 (LlamaConfig's default too).
    cfg = LlamaConfig(vocab_size=49152, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, bos_token_id=1)
    wcfg = WatermarkingConfig(greenlist_ratio=0.25, bias=2.0, context_width=h,
                              seeding_scheme="lefthash")
    return WatermarkDetector(model_config=cfg, device="cpu", watermarking_config=wcfg,
                             ignore_repeated_ngrams=True)


def _hf_run(detector: Any, texts: list[np.ndarray]) -> dict[str, Any]:
    import torch

    scored = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for ids in texts:
        out = detector(torch.from_numpy(ids)[None, :], return_dict=True)
        scored += int(out.num_tokens_scored[0])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(t.size for t in texts)
    return {"tokens": n, "calls": len(texts), "seconds": dt, "tokens_per_s": n / dt,
            "us_per_call": dt / len(texts) * 1e6, "n_scored": scored,
            "tokens_per_cpu_s": n / cpu}


def _dm_run(spec: Any, texts200: list[np.ndarray], texts1000: list[np.ndarray],
            stream: np.ndarray, sz: dict[str, int], memory: bool) -> dict[str, Any]:
    """Every distillmark figure for one key: set-up, texts one call each and in one batch,
    the stream, and (keys whose table is held whole) short texts once the table is built;
    with ``memory``, the peak bytes (``tracemalloc``) of the stream's test and of pooling the
    1000-token texts (``AggregateAccumulator``, what probe and scan run), each on a fresh
    scheme after the timings."""
    h = spec.params["context_width"]
    label = f"h={h}, {spec.params['n_lists']:,} lists"
    # Fresh scheme: its green table is built lazily (only inputs with many distinct tuples
    # build it), so short texts are scored one AES block per tuple, as a new process would.
    t1 = time.perf_counter()
    scheme = scheme_for(spec)
    detect_ids(texts200[0], scheme)
    setup = time.perf_counter() - t1
    print(f"{label}: distillmark, texts", file=sys.stderr)
    dm200 = _dm_texts(texts200, scheme, sz["repeat"])
    dm1000 = _dm_texts(texts1000, scheme, sz["repeat"])
    print(f"{label}: distillmark, texts in one detect_ids_batch call", file=sys.stderr)
    dm200b = _dm_batch(texts200, scheme, sz["repeat"])
    dm1000b = _dm_batch(texts1000, scheme, sz["repeat"])
    print(f"{label}: distillmark, stream of {stream.size:,}", file=sys.stderr)
    had_table = "table" in scheme.__dict__  # detect_ids_batch may have built it
    t1 = time.perf_counter()
    res = detect_ids(stream, scheme)
    first_stream = time.perf_counter() - t1
    table_built_by_stream = not had_table and "table" in scheme.__dict__
    wall, cpu = repeat_timed_cpu(lambda: detect_ids(stream, scheme), repeat=sz["repeat"],
                                 warmup=0)
    st = summary(wall)
    dm_stream = {"tokens": stream.size, "calls": 1, **st,
                 "tokens_per_s": stream.size / st["median_s"],
                 "tokens_per_cpu_s": stream.size / statistics.median(cpu),
                 "first_call_s": first_stream,
                 "n_scored": res.n_scored, "table_built": table_built_by_stream}
    out = {"n_lists": spec.params["n_lists"], "setup_s": setup, "table_build_s": math.nan,
           "texts200": dm200, "texts1000": dm1000, "texts200_batch": dm200b,
           "texts1000_batch": dm1000b, "stream": dm_stream, "memory": {}}
    if scheme.dense:
        # With the whole green table built (inputs with more than 262,144 distinct tuples
        # build it; here it is built on purpose if it is not yet), short texts read it instead
        # of one AES block per tuple. Keys of more lists never build it (3.2 GB at 65,536).
        t1 = time.perf_counter()
        _ = scheme.table
        out["table_build_s"] = time.perf_counter() - t1
        out["texts200_table_built"] = _dm_texts(texts200, scheme, sz["repeat"])
    if memory:
        wall, cpu = repeat_timed_cpu(lambda: _pool(texts1000, scheme), repeat=sz["repeat"])
        n = sum(t.size for t in texts1000)
        out["pooled1000"] = {"tokens": n, **summary(wall),
                             "tokens_per_s": n / statistics.median(wall),
                             "tokens_per_cpu_s": n / statistics.median(cpu)}
        out["memory"] = {"stream_peak_bytes": _peak_bytes(
                             lambda: detect_ids(stream, scheme_for(spec))),
                         "pooled_texts1000_peak_bytes": _peak_bytes(
                             lambda: _pool(texts1000, scheme_for(spec)))}
    return out


def _lists_table(results: list[dict[str, Any]], lists: list[int], stream_size: int) -> str:
    """Per width and input: tokens per CPU-second of each number of lists and the ratio to the
    first; then set-up and the memory of detection."""
    rows = []
    for h in dict.fromkeys(r["context_width"] for r in results):
        by = {r["n_lists"]: r for r in results if r["context_width"] == h}
        for label, dkey, _ in INPUTS:
            if dkey == "texts200_table_built":
                continue
            rates = [by[n]["distillmark"][dkey]["tokens_per_cpu_s"] for n in lists]
            rows.append([h, label.format(stream=f"{stream_size / 1e6:g}M"),
                         *map(fmt_rate, rates),
                         " / ".join(fmt_ratio(x / rates[0]) for x in rates[1:])])
        rates = [by[n]["distillmark"]["pooled1000"]["tokens_per_cpu_s"] for n in lists]
        rows.append([h, "texts of 1000, pooled (`AggregateAccumulator`, as probe and scan)",
                     *map(fmt_rate, rates),
                     " / ".join(fmt_ratio(x / rates[0]) for x in rates[1:])])
        setups = [by[n]["distillmark_setup_s"] for n in lists]
        rows.append([h, "set-up: scheme + first text of 200 tokens, ms",
                     *(f"{x * 1e3:,.1f}" for x in setups),
                     " / ".join(fmt_ratio(x / setups[0]) for x in setups[1:])])
        for key, label in (("stream_peak_bytes", "peak memory, stream, MiB"),
                           ("pooled_texts1000_peak_bytes",
                            "peak memory, pooling the 1000-token texts, MiB")):
            mem = [by[n]["memory"][key] for n in lists]
            rows.append([h, label, *(f"{x / 2**20:,.1f}" for x in mem),
                         " / ".join(fmt_ratio(x / mem[0]) for x in mem[1:])])
    return markdown_table(["h", "input (tokens per CPU-second unless stated)",
                           *(f"{n:,} lists" for n in lists),
                           f"ratio to {lists[0]:,}"], rows)


def _pool(texts: list[np.ndarray], scheme: Any) -> Any:
    acc = AggregateAccumulator(scheme)
    acc.add_batch(texts)
    return acc.result()


def _peak_bytes(fn: Any) -> int:
    """Peak bytes allocated (``tracemalloc``, numpy's arrays included) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one configuration merged: every number (timing, rate, bytes) the median
    over the runs, anything else as the first run has it."""

    def merge(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v[k] for v in values]) for k in first}
        if isinstance(first, float):
            return statistics.median(values)
        if isinstance(first, int) and not isinstance(first, bool):
            return statistics.median_low(values)
        return first

    return merge(runs)  # type: ignore[no-any-return]


def _stream_only(widths: list[int], n_lists: int | None, sz: dict[str, int]) -> int:
    """``detect_ids`` on the stream alone, per width: tokens per second of wall and of CPU
    (median of ``repeat`` calls after one untimed), and what the test found (to compare two
    checkouts: the same figures, bit for bit)."""
    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    stream = shuffled_stream(sentence_token_ids(tok, human_texts()), sz["stream"], seed=2)
    rows = []
    for h in widths:
        params = {"context_width": h} | ({"n_lists": n_lists} if n_lists else {})
        scheme = scheme_for(new_spec("greenlist", params, info, secret=BENCH_SECRET))
        wall, cpu = repeat_timed_cpu(lambda s=scheme: detect_ids(stream, s), repeat=sz["repeat"])
        res = detect_ids(stream, scheme)
        rows.append([h, f"{scheme.n_rows:,}", fmt_rate(stream.size / statistics.median(wall)),
                     fmt_rate(stream.size / statistics.median(cpu)), f"{res.n_scored:,}",
                     f"{res.statistic:,}", res.pvalue.hex()])
    print(f"\n`detect_ids` on one stream of {stream.size / 1e6:g}M tokens, one thread; "
          f"{machine_line(machine())}\n")
    print(markdown_table(["h", "lists", "tokens/s (median wall)", "tokens per CPU-s (median)",
                          "distinct tuples", "green", "p-value (hex)"], rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/out/")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)),
                    help="context widths to run, comma-separated (default 1,2,4)")
    ap.add_argument("--lists", default="",
                    help="green lists of the keys (default: the scheme's); several, "
                         "comma-separated (256,65536): each width with each, side by side, "
                         "alternating, with the memory of detection")
    ap.add_argument("--stream-only", action="store_true",
                    help="only `detect_ids` on the stream, for each width (no transformers): "
                         "quick enough to alternate two checkouts on a busy machine")
    args = ap.parse_args(argv)
    sz = _sizes(args.quick)
    widths = [int(w) for w in args.widths.split(",")]
    lists = [int(x) for x in args.lists.split(",") if x]
    if args.stream_only:
        return _stream_only(widths, lists[0] if lists else None, sz)

    import torch

    # Imported here so that set-up timings exclude transformers' (lazy) module loading.
    from transformers import LlamaConfig, WatermarkDetector  # noqa: F401

    torch.set_num_threads(1)
    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    t0 = time.perf_counter()
    pieces = sentence_token_ids(tok, human_texts())
    corpus_tokens = sum(p.size for p in pieces)
    print(f"corpus: {len(pieces)} sentences, {corpus_tokens:,} tokens "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    n_texts_tokens = 200 * sz["n200"] + 1000 * sz["n1000"]
    text_stream = shuffled_stream(pieces, n_texts_tokens, seed=1)
    texts200 = chunks_of(text_stream[:200 * sz["n200"]], 200, sz["n200"])
    texts1000 = chunks_of(text_stream[200 * sz["n200"]:], 1000, sz["n1000"])
    stream = shuffled_stream(pieces, sz["stream"], seed=2)

    results: list[dict[str, Any]] = []
    for h in widths:
        by_lists: dict[int | None, list[dict[str, Any]]] = {}
        # With several --lists, each configuration runs twice, in the order given and then
        # reversed, so that a change of the machine's load hits both alike.
        order = lists + lists[::-1] if len(lists) > 1 else (lists or [None])
        for n_lists in order:
            params = {"context_width": h} | ({"n_lists": n_lists} if n_lists else {})
            spec = new_spec("greenlist", params, info, secret=BENCH_SECRET)
            by_lists.setdefault(n_lists, []).append(
                _dm_run(spec, texts200, texts1000, stream, sz, len(lists) > 1))

        print(f"h={h}: transformers WatermarkDetector", file=sys.stderr)
        t1 = time.perf_counter()
        det = _hf_detector(h)
        hf_setup = time.perf_counter() - t1
        budget = sz["hf_tokens"]
        hf200 = _hf_run(det, texts200[:math.ceil(budget / 200)])
        hf1000 = _hf_run(det, texts1000[:math.ceil(budget / 1000)])
        hf_stream = _hf_run(det, [stream[:budget]])
        for n_lists, runs in by_lists.items():
            dm = runs[0] if len(runs) == 1 else _median_runs(runs)
            results.append({"context_width": h, "n_lists": dm.pop("n_lists"),
                            "distillmark_setup_s": dm.pop("setup_s"),
                            "distillmark_table_build_s": dm.pop("table_build_s"),
                            "transformers_setup_s": hf_setup,
                            "memory": dm.pop("memory"), "distillmark": dm,
                            "transformers": {"texts200": hf200, "texts1000": hf1000,
                                             "stream": hf_stream}})

    rows = []
    for r in results:
        h, dm, hf = r["context_width"], r["distillmark"], r["transformers"]
        for label, dkey, hkey in INPUTS:
            if dkey not in dm:  # the whole table is built only when it is held
                continue
            label = label.format(stream=f"{stream.size / 1e6:g}M")
            d, t = dm[dkey], hf[hkey]
            ratio = d["tokens_per_s"] / t["tokens_per_s"]
            met = (d["tokens_per_s"] >= TARGET_RATE, ratio >= TARGET_RATIO)
            cpu_ratio = d["tokens_per_cpu_s"] / t["tokens_per_cpu_s"]
            rows.append([h, f"{r['n_lists']:,}", label, fmt_rate(d["tokens_per_s"]),
                         f"{d['us_per_call']:.0f}"
                         if "us_per_call" in d else f"{d['median_s'] * 1e6:,.0f}",
                         fmt_rate(t["tokens_per_s"]), f"{t['tokens']:,}", fmt_ratio(ratio),
                         fmt_rate(d["tokens_per_cpu_s"]), fmt_rate(t["tokens_per_cpu_s"]),
                         fmt_ratio(cpu_ratio),
                         " / ".join("yes" if m else "no" for m in met)])
            r.setdefault("rows", []).append({"input": label, "distillmark_tokens_per_s":
                                             d["tokens_per_s"], "transformers_tokens_per_s":
                                             t["tokens_per_s"], "ratio": ratio,
                                             "distillmark_tokens_per_cpu_s":
                                             d["tokens_per_cpu_s"],
                                             "transformers_tokens_per_cpu_s":
                                             t["tokens_per_cpu_s"], "cpu_ratio": cpu_ratio})
    info_m = machine()
    table = markdown_table(
        ["h", "lists", "input", "distillmark tok/s", "µs per text", "transformers tok/s",
         "tokens timed (transformers)", "ratio", "distillmark tok/CPU-s",
         "transformers tok/CPU-s", "ratio (CPU)", "≥10M/s / ≥1000× (wall)"], rows)
    print(f"\nDetection from token ids, one thread; {machine_line(info_m)}\n")
    print(table)

    def name(r: dict[str, Any]) -> str:
        return f"h={r['context_width']}, {r['n_lists']:,} lists"

    print("\nset-up (scheme + first call, transformers: detector): " + "; ".join(
        f"{name(r)}: {r['distillmark_setup_s'] * 1e3:.0f} ms / "
        f"{r['transformers_setup_s'] * 1e3:.0f} ms" for r in results))
    print("first call on the stream: " + "; ".join(
        f"{name(r)}: {r['distillmark']['stream']['first_call_s']:.2f} s"
        + (" (built the green table)" if r["distillmark"]["stream"]["table_built"] else "")
        for r in results))
    print("building the whole green table (for the 'table built' rows; 0 if already built): "
          + "; ".join(f"{name(r)}: {r['distillmark_table_build_s']:.2f} s"
                      for r in results if not math.isnan(r["distillmark_table_build_s"])))
    print("distinct tuples in the stream: " + "; ".join(
        f"{name(r)}: {r['distillmark']['stream']['n_scored']:,}" for r in results))
    lists_table = ""
    if len(lists) > 1:
        lists_table = _lists_table(results, lists, stream.size)
        print(f"\n{' vs '.join(map(str, lists))} lists, side by side (each configuration "
              "twice, alternating; medians):\n")
        print(lists_table)
    rates = [row["distillmark_tokens_per_s"] for r in results for row in r["rows"]]
    print(f"\nmedian over rows: {fmt_rate(statistics.median(rates))} tok/s", file=sys.stderr)
    if not args.no_json:
        path = write_json("bench_detect", {"quick": args.quick, "sizes": sz,
                                           "corpus_tokens": corpus_tokens, "machine": info_m,
                                           "results": results, "table": table,
                                           "lists_table": lists_table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
