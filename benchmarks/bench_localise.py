"""Localisation (``detect --windows``): a marked span of 200 tokens inside 5,000 human tokens.

    python benchmarks/bench_localise.py [--trials 200] [--human-docs 200] [--alpha 1e-5]

Human text: numpy's and scipy's docstrings, split into sentences, tokenised with the builtin
SmolLM2 tokenizer and shuffled into one stream; each document is a fresh stretch of it. Marked
text: the seeded toy model of ``tests/toy_model.py`` (normal logits on 500 tokens, through the
scheme's own ``process``; sd 4 of the logits is about 1.8 nats of entropy, sd 2 more), default
green-list key (h = 1, gamma 0.25, delta 2). Each trial plants 200 marked tokens at a random
place among 5,000 human tokens and runs the scan (``localise_ids``) at ``--alpha`` (corrected
for the windows). Reported:

* detection: the share of trials with a span overlapping the planted one;
* boundary error: ``|start - true start|`` and ``|end - true end|`` in tokens, of that span
  (median, 90th percentile, share within 20 tokens);
* false spans: documents of 5,200 human tokens (no mark) with any span, at ``--alpha``, at
  1e-2 and at 0.5 (where a valid test shows up to 1% and 50%: how conservative the
  correction is);
* time: ``localise_ids`` on 1M human tokens, and ``Localiser.localise`` on a text of about 1M
  tokens (tokenisation with offsets included), CPU and wall seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import (
    BENCH_SECRET,
    human_text_of_size,
    human_texts,
    machine,
    machine_line,
    markdown_table,
    repeat_timed_cpu,
    sentence_token_ids,
    shuffled_stream,
    write_json,
)
from toy_model import toy_sequence

from distillmark.verify.localise import Localiser, localise_ids
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

HUMAN, SPAN = 5000, 200


def trials(scheme: Any, stream: np.ndarray, *, n: int, scale: float, alpha: float,
           seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    found, err_start, err_end, log10p = 0, [], [], []
    for i in range(n):
        marked, plen = toy_sequence(scheme, seed * 100_000 + i, n_tokens=SPAN, scale=scale)
        at = int(rng.integers(0, HUMAN + 1))
        off = int(rng.integers(0, stream.size - HUMAN))
        human = stream[off:off + HUMAN]
        ids = np.concatenate([human[:at], marked[plen:], human[at:]])
        scan = localise_ids(ids, scheme, alpha=alpha)
        hits = [s for s in scan.spans if s.token_start < at + SPAN and s.token_end > at]
        if hits:
            s = hits[0]
            found += 1
            err_start.append(abs(s.token_start - at))
            err_end.append(abs(s.token_end - (at + SPAN)))
            log10p.append(s.log10_pvalue)
    errs = err_start + err_end
    return {
        "scale": scale, "trials": n, "found": found, "detection_rate": found / n,
        "boundary_error_median": statistics.median(errs) if errs else None,
        "boundary_error_p90": round(float(np.percentile(errs, 90)), 1) if errs else None,
        "within_20_tokens": (sum(e <= 20 for e in errs) / len(errs)) if errs else None,
        "both_within_20": (sum(a <= 20 and b <= 20 for a, b in zip(err_start, err_end))
                           / n),
        "median_log10_pvalue": statistics.median(log10p) if log10p else None,
    }


def false_spans(scheme: Any, stream: np.ndarray, *, n: int, alphas: tuple[float, ...],
                seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    size = HUMAN + SPAN
    out = {a: 0 for a in alphas}
    n_windows = 0
    for _ in range(n):
        off = int(rng.integers(0, stream.size - size))
        for a in alphas:
            scan = localise_ids(stream[off:off + size], scheme, alpha=a)
            out[a] += bool(scan.spans)
            n_windows = scan.n_windows
    return {"documents": n, "tokens_each": size, "n_windows": n_windows,
            "with_span": {str(a): k for a, k in out.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--human-docs", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=1e-5)
    ap.add_argument("--scales", type=float, nargs="+", default=[4.0, 2.0])
    args = ap.parse_args()

    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec("greenlist", {}, info, secret=BENCH_SECRET)
    scheme = scheme_for(spec)
    stream = shuffled_stream(sentence_token_ids(tok, human_texts()), 2_000_000, seed=11)

    rows = [trials(scheme, stream, n=args.trials, scale=s, alpha=args.alpha, seed=1 + k)
            for k, s in enumerate(args.scales)]
    null = false_spans(scheme, stream, n=args.human_docs, alphas=(args.alpha, 1e-2, 0.5),
                       seed=99)

    big = stream[:1_000_000]
    wall, cpu = repeat_timed_cpu(lambda: localise_ids(big, scheme, alpha=args.alpha), repeat=3)
    loc = Localiser(spec, alpha=args.alpha)
    text = human_text_of_size(4_000_000, seed=5)
    n_text = int(loc.encode(text).size)
    t_wall, t_cpu = repeat_timed_cpu(lambda: loc.localise(text), repeat=2)
    timing = {"ids_tokens": int(big.size), "ids_wall_s": statistics.median(wall),
              "ids_cpu_s": statistics.median(cpu), "text_tokens": n_text,
              "text_chars": len(text), "text_wall_s": statistics.median(t_wall),
              "text_cpu_s": statistics.median(t_cpu)}
    info_m = machine()
    write_json("localise", {"args": vars(args), "trials": rows, "human": null,
                            "timing": timing, "machine": info_m})

    print(f"# Localisation: {SPAN} marked tokens in {HUMAN} human tokens, alpha "
          f"{args.alpha:g} (corrected)\n")
    print(markdown_table(
        ["toy logits sd", "trials", "found", "boundary error median", "p90",
         "both ends within 20", "median log10 p"],
        [[f"{r['scale']:g}", r["trials"], f"{r['detection_rate']:.1%}",
          r["boundary_error_median"], r["boundary_error_p90"], f"{r['both_within_20']:.1%}",
          f"{r['median_log10_pvalue']:.1f}" if r["median_log10_pvalue"] is not None else "-"]
         for r in rows]))
    print(f"\nhuman documents ({null['documents']} x {null['tokens_each']} tokens, "
          f"{null['n_windows']} windows each) with a span: {null['with_span']}")
    print(f"1M token ids: {timing['ids_cpu_s']:.2f} s CPU, {timing['ids_wall_s']:.2f} s wall; "
          f"text of {timing['text_tokens']:,} tokens: {timing['text_cpu_s']:.2f} s CPU, "
          f"{timing['text_wall_s']:.2f} s wall (tokenisation included)")
    print(machine_line(info_m))


if __name__ == "__main__":
    main()
