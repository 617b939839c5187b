"""Every scheme side by side on SmolLM2 answers: power, text quality, unbiasedness, step cost.

    python benchmarks/bench_schemes.py [--quick] [--prompts N] [--max-new-tokens N]
                                       [--schemes NAME,...] [--lists N]

For each scheme (green-list h = 1, unigram, Gumbel/EXP, tournament, DiPmark) and each
temperature (0.7, 1.0), the same varied prompts are answered by the embedded
SmolLM2-135M-Instruct (transformers, batch 8, no top-k/top-p), plus unwatermarked answers.
``--schemes`` runs only the named schemes (``none``: the unwatermarked answers), and then times
only their hooks. ``--lists N`` gives the green-list keys N lists (default: the key's default,
65,536; ``--lists 256`` reproduces tables measured with the earlier default). Reported per setting:

* TPR at FPR 1e-5 after 25, 50, 100 and 200 completion tokens: the share of answers whose exact
  p-value (dedup, prompt as context but never scored) on that prefix is below 1e-5 — the tests
  are exact, so the FPR is 1e-5 by construction (checked on human text in the test suite);
  answers shorter than the prefix count as misses;
* the median number of tokens to reach p < 0.02 (MarkMyWords' "size") and p < 1e-6 (answers that
  never reach it count as infinite, so the median may be "never");
* perplexity of the answers under the unwatermarked model (median over answers) and distinct-2/3
  over all answers of the setting;
* for the distortion-free schemes, a chi-square test that the token chosen by the scheme,
  over many keys, follows the model's next-token distribution (3 real contexts);
* the per-step cost of each scheme's generation hook at V = 49,152, batch 1 and 8, next to
  transformers' own processors where they exist (KGW lefthash, SynthID).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import numpy as np
from _common import BENCH_SECRET, machine, machine_line, markdown_table, write_json
from bench_power import PROMPTS
from scipy import stats

from distillmark.verify import detect_ids
from distillmark.watermark import BUILTIN_SMOLLM2, SCHEMES, load_tokenizer, new_spec, scheme_for

PREFIXES = (25, 50, 100, 200)
SETTINGS = [  # label, scheme, params
    ("greenlist h=1 δ=2", "greenlist", {}),
    ("unigram δ=2", "greenlist", {"context_width": 0}),
    ("gumbel (EXP)", "gumbel", {}),
    ("tournament", "tournament", {}),
    ("dipmark α=0.45", "dipmark", {}),
]
#: Schemes whose per-step distribution is the model's, averaged over keys.
DISTORTION_FREE = ("gumbel", "tournament", "dipmark")


def first_below(ids: np.ndarray, plen: int, scheme: Any, thr: float) -> float:
    """Fewest completion tokens whose prefix has p < thr (inf if none)."""
    for k in range(1, ids.size - plen + 1):
        r = detect_ids(ids[:plen + k], scheme, prompt_len=plen, min_scored=1)
        if r.pvalue < thr:
            return float(k)
    return math.inf


def distinct_n(seqs: list[tuple[int, ...]], n: int) -> float:
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def perplexities(lm: Any, outs: list[Any]) -> list[float]:
    import torch

    ppl = []
    for o in outs:
        if not o.completion_ids:
            continue
        ids = torch.tensor([o.prompt_ids + o.completion_ids])
        with torch.inference_mode():
            logits = lm.model(ids).logits[0, :-1].float()
        logp = torch.log_softmax(logits, -1)
        tgt = ids[0, 1:]
        nll = -logp[torch.arange(tgt.numel()), tgt][len(o.prompt_ids) - 1:]
        ppl.append(float(torch.exp(nll.mean())))
    return ppl


def unbiasedness(lm: Any, info: Any, scheme_name: str, n_keys: int) -> list[float]:
    """Chi-square p-values: scheme's choice over ``n_keys`` keys vs the model's distribution."""
    import torch

    tok = lm.tokenizer
    pvals = []
    for prompt in PROMPTS[:3]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = lm.model(ids).logits[0, -1, :info.vocab_size].float().numpy()
        lg = logits.astype(np.float64)
        p = np.exp(lg - lg.max())
        p /= p.sum()
        rng = np.random.default_rng(0)
        counts: dict[int, int] = {}
        for _ in range(n_keys):
            spec = new_spec(scheme_name, {"n_lists": 1}, info, secret=rng.bytes(32))
            out = scheme_for(spec).process(logits[None, :], ids.numpy(),
                                           prompt_width=ids.shape[1])[0]
            q = np.exp(out - out.max())
            t = int(rng.choice(q.size, p=q / q.sum()))
            counts[t] = counts.get(t, 0) + 1
        # Bins: tokens with expected count >= 5, the rest pooled.
        big = np.flatnonzero(p * n_keys >= 5)
        obs = [counts.get(int(t), 0) for t in big]
        exp = list(p[big] * n_keys)
        rest_obs, rest_exp = n_keys - sum(obs), n_keys - sum(exp)
        if rest_exp >= 5:
            obs.append(rest_obs)
            exp.append(rest_exp)
        exp_a = np.asarray(exp, dtype=np.float64)
        exp_a *= sum(obs) / exp_a.sum()  # exact equal sums, as chisquare wants
        pvals.append(float(stats.chisquare(obs, exp_a).pvalue))
    return pvals


def step_costs(info: Any, settings: list[tuple[str, str, dict[str, Any]]],
               batches: tuple[int, ...] = (1, 8), *, references: bool = True
               ) -> list[list[Any]]:
    """ms per row of each scheme's generation hook, and of transformers' processors."""
    import torch
    from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor
    from transformers.generation.logits_process import WatermarkLogitsProcessor as HFKGW

    from distillmark.watermark.hf import WatermarkLogitsProcessor

    V = info.vocab_size
    rows = []
    rng = np.random.default_rng(0)

    def timeit(proc: Any, ids: Any, scores: Any, n: int) -> float:
        for _ in range(3):
            proc(ids, scores.clone())
        t = time.perf_counter()
        for _ in range(n):
            proc(ids, scores.clone())
        return (time.perf_counter() - t) / n

    for B in batches:
        ids = torch.from_numpy(rng.integers(0, V, size=(B, 300)))
        scores = torch.from_numpy(rng.standard_normal((B, V)).astype(np.float32))
        for label, name, params in settings:
            proc = WatermarkLogitsProcessor(scheme_for(new_spec(name, params, info,
                                                                secret=BENCH_SECRET)))
            dt = timeit(proc, ids, scores, 30)
            rows.append([label, B, f"{dt / B * 1e3:.3f}"])
        if not references:
            continue
        hf_kgw = HFKGW(vocab_size=V, device="cpu", greenlist_ratio=0.25, bias=2.0,
                       context_width=1, seeding_scheme="lefthash")
        rows.append(["transformers KGW lefthash h=1", B,
                     f"{timeit(hf_kgw, ids, scores, 30) / B * 1e3:.3f}"])
        synth = SynthIDTextWatermarkLogitsProcessor(
            ngram_len=5, keys=list(range(654, 684)), sampling_table_size=2**16,
            sampling_table_seed=0, context_history_size=1024, device="cpu")
        rows.append(["transformers SynthID (30 layers)", B,
                     f"{timeit(synth, ids, scores, 10) / B * 1e3:.3f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=220)
    ap.add_argument("--keys", type=int, default=2000, help="keys for the chi-square test")
    ap.add_argument("--schemes", default=None,
                    help="comma-separated scheme names to run (none = unwatermarked answers); "
                         "default: all, with the unwatermarked answers and transformers' "
                         "processors for reference")
    ap.add_argument("--lists", type=int, default=None,
                    help="lists of the green-list keys (default: the key's default)")
    args = ap.parse_args()
    lists = {} if args.lists is None else {"n_lists": args.lists}
    chosen = None if args.schemes is None else {s.strip() for s in args.schemes.split(",")
                                                if s.strip()}
    if chosen is not None and not chosen <= set(SCHEMES) | {"none"}:
        ap.error(f"--schemes: unknown {', '.join(sorted(chosen - set(SCHEMES) - {'none'}))}; "
                 f"known: {', '.join(s for s in SCHEMES)}, none")
    n_prompts = 8 if args.quick else min(args.prompts, len(PROMPTS))
    max_new = 120 if args.quick else args.max_new_tokens
    n_keys = 300 if args.quick else args.keys
    import torch

    torch.set_num_threads(1)
    from distillmark.watermark import hf

    lm = hf.load_model()
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    prompts = PROMPTS[:n_prompts]
    settings = [(label, name, {**lists, **params} if name == "greenlist" else params)
                for label, name, params in SETTINGS
                if name in SCHEMES and (chosen is None or name in chosen)]
    baseline: list[tuple[str, str | None, dict[str, Any]]] = (
        [("no watermark", None, {})] if chosen is None or "none" in chosen else [])
    results: list[dict[str, Any]] = []
    t0 = time.time()
    for temp in (0.7, 1.0):
        for label, name, params in settings + baseline:
            scheme = (scheme_for(new_spec(name, params, info, secret=BENCH_SECRET))
                      if name else scheme_for(new_spec("greenlist", {}, info,
                                                       secret=BENCH_SECRET)))
            outs = hf.generate(lm, prompts, scheme=scheme if name else None,
                               max_new_tokens=max_new, temperature=temp, batch_size=8,
                               seed=1234)
            row: dict[str, Any] = {"setting": label, "temperature": temp}
            for k in PREFIXES:
                hits = 0
                for o in outs:
                    ids = np.array(o.prompt_ids + o.completion_ids)
                    if len(o.completion_ids) >= k:
                        r = detect_ids(ids[:len(o.prompt_ids) + k], scheme,
                                       prompt_len=len(o.prompt_ids))
                        hits += r.pvalue < 1e-5
                row[f"tpr@{k}"] = hits / len(outs)
            # standardised per-tuple effect over whole answers: sum (stat - null) / sum n
            full = [detect_ids(np.array(o.prompt_ids + o.completion_ids), scheme,
                               prompt_len=len(o.prompt_ids), min_scored=1) for o in outs]
            n_all = sum(r.n_scored for r in full)
            row["effect"] = (sum(r.z_score * math.sqrt(r.n_scored) for r in full) / n_all
                             if n_all else 0.0)
            for thr in (0.02, 1e-6):
                firsts = [first_below(np.array(o.prompt_ids + o.completion_ids),
                                      len(o.prompt_ids), scheme, thr) for o in outs]
                row[f"size@{thr:g}"] = statistics.median(firsts)
            row["ppl"] = statistics.median(perplexities(lm, outs))
            seqs = [o.completion_ids for o in outs]
            row["distinct2"], row["distinct3"] = distinct_n(seqs, 2), distinct_n(seqs, 3)
            row["mean_len"] = statistics.mean(len(s) for s in seqs)
            results.append(row)
            print(f"[{time.time() - t0:.0f}s] {label} T={temp}: {row}", file=sys.stderr)

    unbiased = {name: unbiasedness(lm, info, name, n_keys)
                for _, name, _ in settings if name in DISTORTION_FREE}
    costs = step_costs(info, settings, references=chosen is None)

    def fmt_size(x: float) -> str:
        return "never" if math.isinf(x) else f"{x:.0f}"

    print(f"\n{machine_line(machine())}; {n_prompts} prompts x {max_new} new tokens, "
          "SmolLM2-135M-Instruct (transformers, batch 8)\n")
    print(markdown_table(
        ["setting", "T", "TPR@25", "TPR@50", "TPR@100", "TPR@200", "size p<0.02",
         "size p<1e-6", "ppl", "distinct-2", "distinct-3", "mean tokens"],
        [[r["setting"], r["temperature"], *(f"{r[f'tpr@{k}']:.2f}" for k in PREFIXES),
          fmt_size(r["size@0.02"]), fmt_size(r["size@1e-06"]), f"{r['ppl']:.2f}",
          f"{r['distinct2']:.3f}", f"{r['distinct3']:.3f}", f"{r['mean_len']:.0f}"]
         for r in results]))
    print(f"\nUnbiasedness (chi-square p-values, {n_keys} keys, 3 real contexts): "
          + "; ".join(f"{k}: {', '.join(f'{p:.3f}' for p in v)}" for k, v in unbiased.items()))
    print("\nGeneration hook, ms per row at V = 49,152 (one thread):\n")
    print(markdown_table(["processor", "batch", "ms/row"], costs))
    out_name = "schemes" if chosen is None else "schemes-" + "-".join(sorted(chosen))
    write_json(out_name, {"machine": machine(), "results": results, "unbiasedness": unbiased,
                           "step_costs": costs, "prompts": n_prompts, "max_new": max_new})


if __name__ == "__main__":
    main()
