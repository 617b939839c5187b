"""Watermarked generation speed per engine on the embedded SmolLM2-135M-Instruct.

For each engine (transformers at batch 1 and 8, llama.cpp at batch 1), generates the same
prompts with and without the watermark, in one run, and reports tokens/s and the overhead of the
watermark against the same engine unwatermarked. Also times the llama.cpp logits processor alone
per call, against llama.cpp's own step time.

    python benchmarks/bench_engines.py [--quick] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

PROMPTS = [
    "Explain how vaccines train the immune system.",
    "Write a haiku sequence about autumn in a city.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the causes of the French Revolution.",
    "Give advice to someone starting their first job.",
    "Describe how a bill becomes law in a parliament.",
    "Why do cats purr? Give several hypotheses.",
    "Plan a three-day trip to the mountains on a budget.",
]


def run(gen, prompts, scheme, max_new, batch, seed=0):
    t = time.perf_counter()
    outs = gen.generate(prompts, scheme=scheme, max_new_tokens=max_new, temperature=1.0,
                        batch_size=batch, seed=seed)
    dt = time.perf_counter() - t
    n = sum(len(o.completion_ids) for o in outs)
    return n / dt, n, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    prompts = PROMPTS[:4] if args.quick else PROMPTS
    max_new = 48 if args.quick else args.max_new_tokens
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    scheme = scheme_for(new_spec("greenlist", {}, info, secret=bytes(range(32))))
    _ = scheme.delta_table  # built once, before timing (a serving process builds it at start)

    import torch

    torch.set_num_threads(1)  # two threads that wait on each other are far slower on a busy box
    from distillmark.watermark import hf, llamacpp

    rows = []
    engines = [("transformers", hf.load_model(), 1), ("transformers", None, 8),
               ("llama.cpp", llamacpp.load_model(), 1)]
    tf_model = engines[0][1]
    for name, gen, batch in engines:
        gen = gen or tf_model
        res = {"plain": [], "watermarked": []}
        for r in range(args.repeats):  # interleave so drift hits both alike
            for label, sch in (("plain", None), ("watermarked", scheme)):
                res[label].append(run(gen, prompts, sch, max_new, batch, seed=r)[0])
        plain, wm = statistics.median(res["plain"]), statistics.median(res["watermarked"])
        rows.append({"engine": name, "batch": batch, "plain_tok_s": plain,
                     "watermarked_tok_s": wm, "overhead": plain / wm - 1.0})

    # The llama.cpp processor alone, per call, with llama.cpp's real input shapes.
    proc = llamacpp.LlamaCppWatermark(scheme)
    ids = np.random.default_rng(0).integers(0, scheme.vocab_size, 300).astype(np.intc)
    scores = np.random.default_rng(1).standard_normal(scheme.vocab_size).astype(np.float32)
    for _ in range(200):
        proc(ids, scores)
    n = 3000
    t = time.perf_counter()
    for _ in range(n):
        proc(ids, scores)
    per_call_ms = (time.perf_counter() - t) / n * 1e3
    llama_row = next(r for r in rows if r["engine"] == "llama.cpp")
    step_ms = 1e3 / llama_row["plain_tok_s"]

    print(f"\nWatermarked generation, SmolLM2-135M-Instruct, {len(prompts)} prompts x "
          f"{max_new} new tokens, temperature 1.0, median of {args.repeats}\n")
    print("| engine | batch | tokens/s plain | tokens/s watermarked | overhead |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['batch']} | {r['plain_tok_s']:.1f} | "
              f"{r['watermarked_tok_s']:.1f} | {r['overhead']:+.1%} |")
    print(f"\nllama.cpp processor alone: {per_call_ms:.4f} ms per call = "
          f"{per_call_ms / step_ms:.2%} of llama.cpp's {step_ms:.2f} ms step")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "engines.json").write_text(json.dumps(
        {"rows": rows, "processor_ms": per_call_ms, "llama_step_ms": step_ms}, indent=1))


if __name__ == "__main__":
    main()
