"""Robustness: TPR at FPR 1e-5 against attack strength, and watermark stealing's spoof and scrub
success against the number of stolen answers, the context width and the number of lists.

    python benchmarks/robustness.py [--quick] [--paraphrase N] [--texts N] [--tokens N]

Watermarked answers come from a seeded *bigram stand-in* of a language model
(``tests/toy_model.py``, ``BigramModel``: normal logits, sd 4, over 1,000 tokens of the SmolLM2
vocabulary, each previous token with its own distribution), sampled at temperature 1 through
each scheme's own ``process``; not from SmolLM2, which on 2 shared cores would take hours for
the thousands of answers below. Figures on the stand-in show the *shape* of each curve (which
attack costs what, which parameter makes stealing easy); their absolute level depends on the
stand-in's entropy. ``--paraphrase N`` adds the one attack that needs a real model: N answers of
the embedded SmolLM2-135M-Instruct (llama.cpp), watermarked with the default green list, then
paraphrased by the same model without a watermark.

1. Robustness. Each scheme's ``--texts`` answers of ``--tokens`` tokens, attacked: random
   substitution, deletion and insertion at 0..50% of the tokens, and copy-paste dilution (the
   answer pasted whole into unwatermarked stand-in text at a share of 100..10% of the tokens).
   TPR: the share still detected at p < 1e-5 (the detector's exact test; its false-positive
   rate is the nominal 1e-5, and unwatermarked texts are checked too).
2. Stealing (Jovanovic et al. 2024). For green lists of context width h and n lists, the
   attacker learns from N watermarked answers and N unwatermarked answers of the same stand-in
   (no key; it assumes the right h), then: spoof by editing unwatermarked texts (every
   estimated-red token replaced if an estimated-green candidate exists), spoof by generation
   (the stand-in writing with ``StolenBias``, strength 3), and scrub by editing at most 30% of
   a watermarked answer's tokens, beside random substitution of 30% as the baseline. Success:
   the share of spoofed texts detected at p < 1e-5, of scrubbed answers (detected before) no
   longer detected.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import BENCH_SECRET, machine, machine_line, markdown_table, write_json

from distillmark.verify import detect_ids_batch
from distillmark.verify.attacks import (
    StolenBias,
    StolenLists,
    dilute,
    edit_ids,
    rewrite_ids,
)
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from toy_model import BigramModel

ALPHA = 1e-5
V = 49152
RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
SHARES = (1.0, 0.5, 0.25, 0.1)
ROBUST = [("greenlist h=0", "greenlist", {"context_width": 0, "n_lists": 1}),
          ("greenlist h=1", "greenlist", {"context_width": 1}),
          ("greenlist h=2", "greenlist", {"context_width": 2}),
          ("gumbel h=2", "gumbel", {}),
          ("tournament h=4", "tournament", {})]
STEAL = [("h=0, 1 list", {"context_width": 0, "n_lists": 1}),
         ("h=1, 4 lists", {"context_width": 1, "n_lists": 4}),
         ("h=1, 65536 lists", {"context_width": 1, "n_lists": 65536}),
         ("h=2, 65536 lists", {"context_width": 2, "n_lists": 65536})]


def _tpr(seqs: list[np.ndarray], scheme: Any) -> float:
    return float(np.mean([r.pvalue < ALPHA for r in detect_ids_batch(seqs, scheme)]))


def _spec(name: str, params: dict[str, Any]) -> Any:
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    return new_spec(name, params, info, secret=BENCH_SECRET)


def robustness(model: BigramModel, n_texts: int, n_tokens: int) -> list[dict[str, Any]]:
    human = model.sample(None, 99, n_seqs=n_texts,
                         n_tokens=int(n_tokens * (1 - min(SHARES)) / min(SHARES)) + 1)
    vocab = np.arange(V)
    rows = []
    for label, name, params in ROBUST:
        t0 = time.perf_counter()
        scheme = scheme_for(_spec(name, params))
        marked = model.sample(scheme, 1, n_seqs=n_texts, n_tokens=n_tokens)
        row: dict[str, Any] = {"scheme": label, "fpr_unmarked": _tpr(human, scheme)}
        for attack in ("substitute", "delete", "insert"):
            for rate in RATES:
                rng = np.random.default_rng(17)
                row[f"{attack} {rate:.0%}"] = _tpr(
                    [edit_ids(x, attack, rate, rng, vocab)[0] for x in marked], scheme)
        for share in SHARES:
            rng = np.random.default_rng(18)
            row[f"dilute {share:.0%}"] = _tpr(
                [dilute(x, h, share, rng)[0] for x, h in zip(marked, human)], scheme)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"  {label}: {row['seconds']} s", file=sys.stderr)
    return rows


def stealing(model: BigramModel, ns: list[int], n_eval: int, n_tokens: int
             ) -> list[dict[str, Any]]:
    base = model.sample(None, 2, n_seqs=max(ns), n_tokens=n_tokens)
    human = model.sample(None, 3, n_seqs=n_eval, n_tokens=n_tokens)
    rows = []
    for label, params in STEAL:
        t0 = time.perf_counter()
        scheme = scheme_for(_spec("greenlist", params))
        h = params["context_width"]
        pool = model.sample(scheme, 1, n_seqs=max(ns) + n_eval, n_tokens=n_tokens)
        test, learnt = pool[:n_eval], pool[n_eval:]
        detected = [x for x, r in zip(test, detect_ids_batch(test, scheme)) if r.pvalue < ALPHA]
        rng = np.random.default_rng(5)
        random30 = 1 - _tpr([edit_ids(x, "substitute", 0.3, rng, np.arange(V))[0]
                             for x in detected], scheme) if detected else float("nan")
        for n in ns:
            stolen = StolenLists(learnt[:n], base[:n], vocab_size=V, context_width=h)
            spoofed = [rewrite_ids(x, stolen, "spoof", rate=1.0) for x in human]
            written = model.sample(StolenBias(stolen, 3.0), 7, n_seqs=n_eval, n_tokens=n_tokens)
            scrubbed = [rewrite_ids(x, stolen, "scrub", rate=0.3) for x in detected]
            rows.append({
                "config": label, "n_answers": n, "n_tokens_learnt": n * n_tokens,
                "spoof_edit": _tpr([s for s, _ in spoofed], scheme),
                "spoof_edit_share_edited": float(np.mean([k for _, k in spoofed])) / n_tokens,
                "spoof_generate": _tpr(written, scheme),
                "scrub_edit_30": (1 - _tpr([s for s, _ in scrubbed], scheme)) if detected
                else float("nan"),
                "scrub_share_edited": float(np.mean([k for _, k in scrubbed])) / n_tokens
                if detected else float("nan"),
                "scrub_random_30": random30, "n_detected_before": len(detected)})
        print(f"  {label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows


def paraphrase_run(n: int, n_tokens: int) -> dict[str, Any]:
    """N answers of the embedded model, watermarked (greenlist defaults), then paraphrased."""
    from distillmark.verify.attacks import paraphrase
    from distillmark.watermark.engines import load_generator

    spec = _spec("greenlist", {})
    scheme = scheme_for(spec)
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    gen = load_generator("auto", None)
    topics = ["the history of the printing press", "how vaccines train the immune system",
              "why the sky is blue", "the rules of chess", "how a bill becomes law",
              "the water cycle", "how compilers work", "the causes of inflation",
              "the life of honeybees", "how to bake bread", "plate tectonics",
              "the French revolution"]
    prompts = [f"Write a detailed explanation of {topics[i % len(topics)]}." for i in range(n)]
    t0 = time.perf_counter()
    outs = gen.generate(prompts, scheme=scheme, max_new_tokens=n_tokens, temperature=1.0,
                        seed=1)
    t_gen = time.perf_counter() - t0
    texts = [o.text for o in outs]
    count = (lambda s: len(tok.encode(s, add_special_tokens=False).ids))
    t0 = time.perf_counter()
    para = paraphrase(texts, gen, count=count, chunk_tokens=120, seed=2)
    t_para = time.perf_counter() - t0
    enc = (lambda ts: [np.asarray(tok.encode(t, add_special_tokens=False).ids) for t in ts])
    before = detect_ids_batch(enc(texts), scheme)
    after = detect_ids_batch(enc([p.text for p in para]), scheme)
    return {"n": n, "tokens_before": float(np.mean([r.n_tokens for r in before])),
            "tokens_after": float(np.mean([r.n_tokens for r in after])),
            "tpr_before": float(np.mean([r.pvalue < ALPHA for r in before])),
            "tpr_after": float(np.mean([r.pvalue < ALPHA for r in after])),
            "median_log10_p_before": float(np.median([r.log10_pvalue for r in before])),
            "median_log10_p_after": float(np.median([r.log10_pvalue for r in after])),
            "seconds_generate": round(t_gen, 1), "seconds_paraphrase": round(t_para, 1)}


def _pct(x: float) -> str:
    return "-" if np.isnan(x) else f"{x:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer texts and N values (minutes)")
    ap.add_argument("--texts", type=int, default=None, help="answers per scheme (64; quick 32)")
    ap.add_argument("--tokens", type=int, default=150, help="tokens per answer")
    ap.add_argument("--paraphrase", type=int, default=0,
                    help="also paraphrase N answers of the embedded model (slow)")
    ap.add_argument("--no-curves", action="store_true",
                    help="skip the stand-in curves (with --paraphrase: that alone)")
    args = ap.parse_args(argv)
    n_texts = args.texts or (32 if args.quick else 64)
    ns = [10, 30, 100, 300] if args.quick else [10, 30, 100, 300, 1000]
    info = machine()
    start = time.perf_counter()
    model = BigramModel(0, n_support=1000)
    rob: list[dict[str, Any]] = []
    steal: list[dict[str, Any]] = []
    if not args.no_curves:
        print("robustness…", file=sys.stderr)
        rob = robustness(model, n_texts, args.tokens)
        print("stealing…", file=sys.stderr)
        steal = stealing(model, ns, n_texts, args.tokens)
    para = paraphrase_run(args.paraphrase, 200) if args.paraphrase else None
    elapsed = time.perf_counter() - start
    info_end = machine()
    if rob:
        _print_tables(rob, steal, n_texts, args.tokens)
    if para:
        print(f"\nParaphrase (SmolLM2, {para['n']} answers): {para}")
    print(f"\n{elapsed:.0f} s; {machine_line(info)} at the start, load average "
          f"{info_end.get('loadavg_1m')} at the end")
    path = write_json("robustness" if rob else "robustness_paraphrase", {
        "command": "python benchmarks/robustness.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
        "machine": info, "machine_end": info_end, "seconds": round(elapsed, 1),
        "texts": n_texts, "tokens": args.tokens, "alpha": ALPHA,
        "robustness": rob, "stealing": steal, "paraphrase": para})
    print(f"wrote {path}", file=sys.stderr)


def _print_tables(rob: list[dict[str, Any]], steal: list[dict[str, Any]], n_texts: int,
                  n_tokens: int) -> None:
    cols = [c for c in rob[0] if c not in ("scheme", "seconds")]
    print(f"\nTPR at FPR 1e-5, {n_texts} stand-in answers of {n_tokens} tokens per scheme\n")
    print(markdown_table(["attack", *[r["scheme"] for r in rob]],
                         [[c, *[_pct(r[c]) for r in rob]] for c in cols]))
    print("\nStealing: success against N stolen answers (spoof: detected at p < 1e-5; scrub: "
          "no longer detected)\n")
    print(markdown_table(
        ["config", "N", "spoof (edit)", "spoof (generate)", "scrub (edit <= 30%)",
         "random 30%"],
        [[r["config"], r["n_answers"], _pct(r["spoof_edit"]), _pct(r["spoof_generate"]),
          _pct(r["scrub_edit_30"]), _pct(r["scrub_random_30"])] for r in steal]))


if __name__ == "__main__":
    main()
