"""Queries a probe needs, and what a served model costs: ``distillmark serve`` (llama.cpp,
embedded SmolLM2-135M-Instruct) on loopback, probed with the built-in prompts.

1. Served watermarked, and served without a watermark (the control): ask ``--prompts``
   prompts of each; then, for many random orders of the answers, the number of queries after
   which the pooled p-value first falls below 1e-6 (watermarked), and the p-value of all the
   control's answers (it must stay uniform).
2. The supervised filter. (a) With the watermarked answers as the reference (a corpus made
   with the key): the control's tuples restricted to them — the worst case, both share one
   language distribution; ``probe`` refuses such a reference, this measures why. (b) With a
   reference that does not carry the key — half of the control's answers (the teacher's
   answers without the watermark) —: the watermarked answers (power) and the other half of
   the control (null) filtered on it.
3. Throughput of the server: completion tokens per second of wall time with 1 and 4
   concurrent clients.

    python benchmarks/bench_probe.py [--prompts 16] [--max-tokens 128] [--threads 1]
    python benchmarks/bench_probe.py --throughput-only --engine transformers --port 18410
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from distillmark.verify.probe import (
    SamplingParams,
    fetch_answers,
    reference_from_texts,
    score_answers,
)
from distillmark.verify.prompts import builtin_prompts
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, save_spec

OUT = Path(__file__).resolve().parent / "out"
MODEL = "SmolLM2-135M-Instruct"
BENCH_SECRET = bytes(range(200, 232))


def start(args: list[str], port: int, threads: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "distillmark", "serve", *args, "--port", str(port),
           "--threads", str(threads), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def queries_to_reach(pairs, spec, level: float, orders: int, rng) -> list[float]:
    """For each random order of the answers, how many it takes to get p < level."""
    out = []
    for _ in range(orders):
        order = rng.permutation(len(pairs))
        need = float("inf")
        for k in range(1, len(pairs) + 1):
            if score_answers([pairs[i] for i in order[:k]], spec).pvalue < level:
                need = k
                break
        out.append(need)
    return out


def throughput(url: str, n_requests: int, clients: int, max_tokens: int) -> tuple[float, int]:
    prompts = builtin_prompts(200)[100:100 + n_requests]

    def one(p: str) -> int:
        r = httpx.post(url + "/chat/completions", timeout=600, json={
            "model": MODEL, "messages": [{"role": "user", "content": p}],
            "max_tokens": max_tokens, "temperature": 1.0})
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        n = sum(pool.map(one, prompts))
    return n / (time.perf_counter() - t), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--throughput-requests", type=int, default=8)
    ap.add_argument("--throughput-tokens", type=int, default=64)
    ap.add_argument("--engine", default="llama.cpp")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--port", type=int, default=18400,
                    help="watermarked server's port; the control uses the next one (fixed "
                         "ports keep the answer cache valid across runs)")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    spec = new_spec("greenlist", {}, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=BENCH_SECRET)
    prompts = builtin_prompts(args.prompts)
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=0)
    report: dict[str, object] = {"prompts": args.prompts, "max_tokens": args.max_tokens,
                                 "engine": args.engine, "threads": args.threads,
                                 "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        key = save_spec(spec, Path(tmp) / "wm.json")
        answers = {}
        for j, (label, mark) in enumerate((("watermarked", ["--key", str(key)]),
                                           ("control", ["--no-watermark"]))):
            port = args.port + j
            proc = start([*mark, "--engine", args.engine], port, args.threads)
            url = f"http://127.0.0.1:{port}/v1"
            try:
                if args.throughput_only:
                    for clients in (1, 4):
                        tps, n = throughput(url, args.throughput_requests, clients,
                                            args.throughput_tokens)
                        report[f"tokens_per_s_{clients}_clients"] = round(tps, 1)
                        print(f"{clients} clients: {tps:.1f} tokens/s ({n} tokens)",
                              file=sys.stderr)
                    break
                t = time.perf_counter()
                got = fetch_answers(url, MODEL, prompts, sampling=sampling, concurrency=1,
                                    timeout=900, cache=OUT / "probe-cache")
                dt = time.perf_counter() - t
                answers[label] = got.pairs
                n_tok = sum(len(a) for _, a in got.pairs)
                print(f"{label}: {len(got.pairs)} answers in {dt:.0f} s", file=sys.stderr)
                report[f"{label}_fetch_s"] = round(dt, 1)
                report[f"{label}_chars"] = n_tok
                if label == "watermarked" and not args.skip_throughput:
                    for clients in (1, 4):
                        tps, n = throughput(url, args.throughput_requests, clients,
                                            args.throughput_tokens)
                        report[f"tokens_per_s_{clients}_clients"] = round(tps, 1)
                        print(f"{clients} clients: {tps:.1f} tokens/s ({n} tokens)",
                              file=sys.stderr)
            finally:
                stop(proc)
    if args.throughput_only:
        report["load_after"] = os.getloadavg()[0]
        print(json.dumps(report, indent=1))
        name = f"bench_probe_throughput_{args.engine}.json"
        (OUT / name).write_text(json.dumps(report, indent=1) + "\n")
        return
    marked, control = answers["watermarked"], answers["control"]
    full_m = score_answers(marked, spec)
    full_c = score_answers(control, spec)
    need = queries_to_reach(marked, spec, 1e-6, args.orders, rng)
    finite = [n for n in need if n != float("inf")]
    report.update({
        "watermarked_log10_p": round(full_m.log10_pvalue, 1),
        "watermarked_n_scored": full_m.n_scored,
        "watermarked_green": round(full_m.aggregate.score_mean, 3),
        "queries_to_1e-6_median": statistics.median(need),
        "queries_to_1e-6_p90": float(np.quantile(need, 0.9)),
        "queries_to_1e-6_max": max(need),
        "queries_to_1e-6_reached": f"{len(finite)}/{len(need)}",
        "control_log10_p": round(full_c.log10_pvalue, 2),
        "control_n_scored": full_c.n_scored,
        "control_green": round(full_c.aggregate.score_mean, 3),
    })
    # the control under the supervised filter, reference = the watermarked answers
    ref = reference_from_texts([a for _, a in marked], spec)
    filt = score_answers(control, spec, reference=ref, allow_marked_reference=True)
    report.update({"control_filtered_log10_p": round(filt.log10_pvalue, 2),
                   "control_filtered_n_scored": filt.n_scored,
                   "control_filtered_green": round(filt.aggregate.score_mean, 3),
                   "reference_tuples": len(ref)})
    # the same filter, keys the reference was not made with: the null of the filtered test
    nulls = []
    for _ in range(20):
        other = new_spec("greenlist", {}, spec.tokenizer, secret=os.urandom(32))
        nulls.append(score_answers(control, other,
                                   reference=reference_from_texts([a for _, a in marked],
                                                                  other)).pvalue)
    report["control_filtered_other_keys_min_p"] = float(min(nulls))
    # a reference without the key: half of the control's answers
    half = len(control) // 2
    clean_ref = reference_from_texts([a for _, a in control[:half]], spec)
    on_marked = score_answers(marked, spec, reference=clean_ref)
    on_control = score_answers(control[half:], spec, reference=clean_ref)
    unfiltered_half = score_answers(control[half:], spec)
    report.update({
        "clean_reference_tuples": len(clean_ref),
        "clean_reference_log10_p": round(on_marked.reference_log10_pvalue, 2),
        "marked_clean_filtered_log10_p": round(on_marked.log10_pvalue, 1),
        "marked_clean_filtered_n_scored": on_marked.n_scored,
        "marked_clean_filtered_green": round(on_marked.aggregate.score_mean, 3),
        "control_half_clean_filtered_log10_p": round(on_control.log10_pvalue, 2),
        "control_half_clean_filtered_n_scored": on_control.n_scored,
        "control_half_unfiltered_log10_p": round(unfiltered_half.log10_pvalue, 2)})
    report["load_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))
    (OUT / "bench_probe.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
