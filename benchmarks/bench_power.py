"""Statistical power: tokens of a watermarked answer needed to reach a p-value, distillmark vs
transformers' watermark, with the embedded SmolLM2-135M-Instruct.

    python benchmarks/bench_power.py [--quick] [--prompts N] [--threads N] [--no-control]
                                     [--lists N]

The same prompts (24 by default, 8 with --quick) are answered at temperature 1.0 (no top-k, no
top-p), batch 8, max_new_tokens 300 (120 with --quick): watermarked by distillmark (greenlist,
h = 1, gamma 0.25, delta 2, the key's default number of lists unless ``--lists N``) and watermarked by transformers (``WatermarkingConfig(bias=2.0,
greenlist_ratio=0.25, context_width=1, seeding_scheme="lefthash")``); the first 8 prompts also
without a watermark (the control). Each answer is scored on
every prefix of its completion (the prompt is not scored, and not used as context) by each
tool's own detector, and the first prefix length with p below 0.02 and below 1e-6 is recorded:

* distillmark: ``detect_ids`` (exact binomial test over distinct (list, token) tuples);
* transformers: the green count of ``WatermarkDetector(ignore_repeated_ngrams=True)`` (each
  distinct bigram once), read n-gram by n-gram from the detector's own scoring function and
  checked against the detector's output on the whole answer; its p-value is computed here with
  the same exact binomial test, ``P(Binomial(T, 0.25) >= G)``, so both tools use exact tests.
  Its own p-value (a normal approximation of the z-score) is shown on a separate row.

A prefix is counted as soon as its p-value is below the threshold, even with a handful of scored
tokens: a measure of power, not a sequential test (looking at every prefix inflates the false
positive rate; the control rows show it at p < 0.02).

The model runs on one thread by default (``--threads``): on a shared machine, two OpenMP threads
that wait for each other were 5x slower than one here; on an idle machine two are faster. The
first run of the model converts the GGUF file once (about 40 s); later runs load the cache.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from _common import BENCH_SECRET, machine, machine_line, markdown_table, write_json

from distillmark.verify import detect_ids
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

GAMMA, DELTA, WIDTH = 0.25, 2.0, 1
THRESHOLDS = (0.02, 1e-6)
SEED = 20241128

#: Varied topics and styles: explanation, narrative, poetry, code, lists, letters, argument.
PROMPTS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of inflation, and how do central banks respond?",
    "Give me three tips for learning a new language as an adult.",
    "Write a poem about autumn rain in a big city.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Describe the water cycle step by step.",
    "Write a polite email to a landlord asking to fix a broken heater.",
    "What were the main consequences of the invention of the printing press?",
    "Give a recipe for a simple vegetable soup.",
    "Compare cats and dogs as pets for a small apartment.",
    "Explain how a bicycle stays upright when it moves.",
    "Write a dialogue between a detective and a nervous witness.",
    "List five ways to reduce stress before an exam, with a sentence on each.",
    "What is photosynthesis and why does it matter for life on Earth?",
    "Argue for and against a four-day working week.",
    "Describe a walk through a busy market in a city you imagine.",
    "Explain the difference between weather and climate.",
    "Write a product description for a waterproof hiking backpack.",
    "How does a computer store numbers in binary? Give examples.",
    "Tell a fable about a proud river and a patient stone.",
    "What should someone pack for a week-long camping trip?",
    "Summarise the plot of a heist movie you invent, in one paragraph per act.",
    "Explain what a budget is and how a student can make one.",
    "Write a cover letter opening for a junior data analyst job.",
    "Why do we have seasons? Correct the common misconception about distance to the Sun.",
    "Describe how to plant and care for a tomato plant on a balcony.",
    "Write a limerick about a forgetful robot, then explain the rhyme scheme.",
    "What are the pros and cons of electric cars compared with petrol cars?",
    "Explain the rules of chess to a complete beginner.",
    "Write a diary entry of a sailor on the first day of a long voyage.",
    "How do vaccines train the immune system?",
]


def _chat_texts(tok: Any, prompts: Sequence[str]) -> list[str]:
    return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                    add_generation_prompt=True) for p in prompts]


def _generate_hf_watermark(lm: Any, prompts: Sequence[str], *, max_new_tokens: int,
                           batch_size: int, seed: int) -> list[list[int]]:
    """Completions watermarked by transformers, sampled exactly like ``hf.generate`` samples."""
    import torch
    from transformers import WatermarkingConfig

    tok, model = lm.tokenizer, lm.model
    wcfg = WatermarkingConfig(bias=DELTA, greenlist_ratio=GAMMA, context_width=WIDTH,
                              seeding_scheme="lefthash")
    texts = _chat_texts(tok, prompts)
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    torch.manual_seed(seed)
    out: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0,
                                 pad_token_id=tok.pad_token_id, watermarking_config=wcfg)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            while row and row[-1] in eos:
                row = row[:-1]
            out.append(row)
    return out


def _first_below(log10_ps: Sequence[float], thresholds: Sequence[float]) -> list[int | None]:
    """Per threshold: the first prefix length (1-based) whose p is below it, or None."""
    firsts: list[int | None] = []
    for thr in thresholds:
        lt = math.log10(thr)
        firsts.append(next((t + 1 for t, lp in enumerate(log10_ps) if lp < lt), None))
    return firsts


def _dm_prefix_log10p(ids: Sequence[int], scheme: Any) -> list[float]:
    arr = np.asarray(ids, dtype=np.int64)
    return [detect_ids(arr[:t], scheme).log10_pvalue for t in range(1, arr.size + 1)]


class _HFScorer:
    """transformers' detector, n-gram by n-gram, for p-values on every prefix."""

    def __init__(self, model_config: Any) -> None:
        from transformers import WatermarkDetector, WatermarkingConfig

        wcfg = WatermarkingConfig(bias=DELTA, greenlist_ratio=GAMMA, context_width=WIDTH,
                                  seeding_scheme="lefthash")
        self.detector = WatermarkDetector(model_config=model_config, device="cpu",
                                          watermarking_config=wcfg, ignore_repeated_ngrams=True)
        self.bos = model_config.bos_token_id
        self.mismatches = 0

    def prefix_log10p(self, ids: Sequence[int]) -> tuple[list[float], list[float]]:
        """``(exact, z-approx)`` log10 p on every prefix ``ids[:t]``, t = 1..len(ids)."""
        import torch
        from scipy import stats

        seq = list(ids)
        offset = 0
        if seq and seq[0] == self.bos:  # the detector drops a leading BOS
            seq, offset = seq[1:], 1
        n = WIDTH + 1
        seen: dict[tuple[int, ...], bool] = {}
        green = scored = 0
        exact = [0.0] * len(ids)  # log10 p = 0 (p = 1) until the first n-gram is complete
        approx = [0.0] * len(ids)
        for i in range(len(seq) - n + 1):
            ngram = tuple(seq[i:i + n])
            if ngram not in seen:
                prefix = torch.tensor(ngram[:-1], dtype=torch.long)
                seen[ngram] = bool(self.detector._get_ngram_score(prefix, ngram[-1]))
                green += seen[ngram]
                scored += 1
            t = offset + i + n  # prefix length in tokens of the original ids
            p = float(stats.binom.sf(green - 1, scored, GAMMA))
            exact[t - 1] = math.log10(p) if p > 0 else -math.inf
            z = (green - GAMMA * scored) / math.sqrt(scored * GAMMA * (1 - GAMMA))
            pz = float(stats.norm.sf(z))
            approx[t - 1] = math.log10(pz) if pz > 0 else -math.inf
        if len(seq) >= n:
            out = self.detector(torch.tensor([list(ids)]), return_dict=True)
            if (int(out.num_green_tokens[0]), int(out.num_tokens_scored[0])) != (green, scored):
                self.mismatches += 1
        return exact, approx


def _mann_whitney(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value (scipy; ties, including ∞, handled by ranks)."""
    from scipy import stats

    big = 1e12  # ranks only: ∞ as a large finite number
    res = stats.mannwhitneyu([min(x, big) for x in a], [min(x, big) for x in b],
                             alternative="two-sided")
    return float(res.pvalue)


def _median_first(firsts: Sequence[int | None]) -> str:
    vals = sorted(math.inf if f is None else f for f in firsts)
    med = statistics.median(vals) if vals else math.inf
    return "never" if med == math.inf else f"{med:g}"


def _median_reached(firsts: Sequence[int | None]) -> str:
    vals = [f for f in firsts if f is not None]
    return f"{statistics.median(vals):g}" if vals else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 prompts, 120 new tokens")
    ap.add_argument("--prompts", type=int, default=None,
                    help=f"number of prompts, up to {len(PROMPTS)} (default 24, 8 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--no-control", action="store_true", help="skip the unwatermarked answers")
    ap.add_argument("--no-json", action="store_true", help="do not write benchmarks/out/")
    ap.add_argument("--lists", type=int, default=None,
                    help="lists of distillmark's key (default: the key's default)")
    args = ap.parse_args(argv)
    n_prompts = args.prompts or (8 if args.quick else 24)
    if not 1 <= n_prompts <= len(PROMPTS):
        ap.error(f"--prompts must be in 1..{len(PROMPTS)}, got {n_prompts}")
    prompts = PROMPTS[:n_prompts]
    control_prompts = prompts[:8]
    max_new = 120 if args.quick else 300
    batch = 8

    import torch

    torch.set_num_threads(args.threads)
    from distillmark.watermark import hf

    t0 = time.perf_counter()
    lm = hf.load_model()
    load_s = time.perf_counter() - t0
    print(f"model loaded in {load_s:.1f} s", file=sys.stderr)
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    params = {"gamma": GAMMA, "delta": DELTA, "context_width": WIDTH}
    if args.lists is not None:
        params["n_lists"] = args.lists
    spec = new_spec("greenlist", params, info, secret=BENCH_SECRET)
    lm.check_tokenizer(spec)  # the embedded model's tokenizer is the builtin one
    scheme = scheme_for(spec)

    arms: dict[str, list[list[int]]] = {}
    gen_stats: dict[str, dict[str, float]] = {}

    def timed(name: str, fn: Any) -> None:
        print(f"generating answers: {name}", file=sys.stderr)
        t = time.perf_counter()
        arms[name] = fn()
        dt = time.perf_counter() - t
        n = sum(len(c) for c in arms[name])
        gen_stats[name] = {"seconds": dt, "tokens": n, "tokens_per_s": n / dt}
        print(f"  {n} tokens in {dt:.0f} s ({n / dt:.1f} tokens/s)", file=sys.stderr)

    timed("distillmark", lambda: [list(c.completion_ids) for c in hf.generate(
        lm, prompts, scheme=scheme, max_new_tokens=max_new, temperature=1.0,
        batch_size=batch, seed=SEED)])
    timed("transformers", lambda: _generate_hf_watermark(
        lm, prompts, max_new_tokens=max_new, batch_size=batch, seed=SEED))
    if not args.no_control:
        timed("control", lambda: [list(c.completion_ids) for c in hf.generate(
            lm, control_prompts, scheme=None, max_new_tokens=max_new, temperature=1.0,
            batch_size=batch, seed=SEED)])

    print("scoring prefixes", file=sys.stderr)
    hf_scorer = _HFScorer(lm.model.config)
    scored: dict[str, dict[str, list[Any]]] = {}

    def score(arm: str, detector: str) -> None:
        recs: list[Any] = []
        for ids in arms[arm]:
            if detector == "distillmark":
                lp = _dm_prefix_log10p(ids, scheme)
                recs.append({"n": len(ids), "first": _first_below(lp, THRESHOLDS),
                             "final_log10p": lp[-1] if lp else 0.0})
            else:
                ex, ap_ = hf_scorer.prefix_log10p(ids)
                recs.append({"n": len(ids), "first": _first_below(ex, THRESHOLDS),
                             "first_z": _first_below(ap_, THRESHOLDS),
                             "final_log10p": ex[-1] if ex else 0.0,
                             "final_log10p_z": ap_[-1] if ap_ else 0.0})
        scored.setdefault(arm, {})[detector] = recs

    score("distillmark", "distillmark")
    score("transformers", "transformers")
    if "control" in arms:
        score("control", "distillmark")
        score("control", "transformers")

    def power_row(label: str, recs: list[Any], key: str = "first",
                  final: str = "final_log10p") -> list[str]:
        n_ans = len(recs)
        cells = [label, str(n_ans), f"{statistics.median(r['n'] for r in recs):g}"]
        for j in range(len(THRESHOLDS)):
            firsts = [r[key][j] for r in recs]
            never = sum(f is None for f in firsts)
            cells += [_median_first(firsts), _median_reached(firsts), f"{never}/{n_ans}"]
        cells.append(f"{statistics.median(r[final] for r in recs):.1f}")
        return cells

    headers = ["watermark, detector", "answers", "median length",
               "median tokens to p<0.02 (never = ∞)", "median, those reaching it",
               "never reached p<0.02", "median tokens to p<1e-6 (never = ∞)",
               "median, those reaching it", "never reached p<1e-6",
               "median log10 p, whole answer"]
    rows = [power_row("distillmark h=1, its exact binomial test",
                      scored["distillmark"]["distillmark"]),
            power_row("transformers lefthash h=1, exact binomial on its green count",
                      scored["transformers"]["transformers"]),
            power_row("transformers lefthash h=1, its own z-test p (normal approx.)",
                      scored["transformers"]["transformers"], "first_z", "final_log10p_z")]
    if "control" in arms:
        rows += [power_row("control (no watermark), distillmark detector",
                           scored["control"]["distillmark"]),
                 power_row("control (no watermark), transformers detector, exact",
                           scored["control"]["transformers"])]
    info_m = machine()
    table = markdown_table(headers, rows)
    print(f"\nTokens to detection, SmolLM2-135M-Instruct, temperature 1.0, {len(prompts)} prompts, "
          f"max_new_tokens {max_new}, gamma {GAMMA}, delta {DELTA}; {machine_line(info_m)}, "
          f"{args.threads} torch thread(s)\n")
    print(table)
    print("\ngeneration: " + "; ".join(f"{k}: {v['tokens']} tokens, {v['tokens_per_s']:.1f} tok/s"
                                       for k, v in gen_stats.items()))
    dm_first = [r["first"][1] for r in scored["distillmark"]["distillmark"]]
    hf_first = [r["first"][1] for r in scored["transformers"]["transformers"]]
    mwu = _mann_whitney([math.inf if f is None else f for f in dm_first],
                        [math.inf if f is None else f for f in hf_first])
    print(f"tokens to p<1e-6, distillmark vs transformers (exact): two-sided Mann-Whitney U "
          f"p = {mwu:.2g} (never = ∞)")
    n_hf = len(scored["transformers"]["transformers"]) + len(scored.get("control", {}).get(
        "transformers", []))
    print(f"transformers' green counts read n-gram by n-gram agree with WatermarkDetector on the "
          f"whole answer for {n_hf - hf_scorer.mismatches}/{n_hf} answers")
    if "control" in arms:
        for det in ("distillmark", "transformers"):
            recs = scored["control"][det]
            full = sum(r["final_log10p"] < math.log10(0.02) for r in recs)
            print(f"control, {det} detector: whole answer p < 0.02 in {full}/{len(recs)}")
    if hf_scorer.mismatches:
        print(f"WARNING: {hf_scorer.mismatches} answers where the n-gram scoring disagreed with "
              "WatermarkDetector's own count", file=sys.stderr)
    if not args.no_json:
        path = write_json("bench_power", {
            "quick": args.quick, "prompts": list(prompts), "max_new_tokens": max_new,
            "threads": args.threads, "control_prompts": len(control_prompts),
            "batch_size": batch, "gamma": GAMMA, "delta": DELTA, "context_width": WIDTH,
            "seed": SEED, "thresholds": THRESHOLDS, "machine": info_m, "model_load_s": load_s,
            "generation": gen_stats, "scores": scored, "completions": arms,
            "hf_count_mismatches": hf_scorer.mismatches, "mann_whitney_p": mwu,
            "table": table})
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
