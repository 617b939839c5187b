"""Attribution of single answers to accounts, its false attributions, and its speed.

    python benchmarks/bench_attribution.py [--quick] [--accounts N] [--answers-each 3]
                                           [--max-new-tokens 300] [--null-human 5000]

The embedded SmolLM2-135M-Instruct (llama.cpp, temperature 1, its top-k of 40) answers varied
built-in prompts with a green-list key (h = 1, 65,536 lists) and its account layer (gamma 1/4,
delta 2), for ``--accounts`` accounts drawn from 1..24,000, ``--answers-each`` answers per
account; the first ``--plain`` prompts are also answered without the account layer. Generated answers are
cached in benchmarks/out/ and reused by a later run with the same settings. Reported:

* single answers: the share whose top-ranked account is the serving one among 24,000 candidate
  accounts (numbers 1..24,000) and among the whole space of 2^20 - 1 numbers; the share
  formally attributed (the serving account named with family-wise alpha = 1e-6); the same for
  the answers of one account pooled three at a time; nats of evidence per scored cell;
* false attributions over more than 10,000 trials: chunks of human-written text (docstrings and
  Python sources of installed packages) and answers tested against candidate lists that do not
  hold their serving account; the share of corrected p-values below 1e-2 and 1e-3 beside the
  nominal levels, and the count of wrong names at 1e-6;
* the provider layer's cost: tokens to p < 1e-6 with the master key, answers with and without
  the account layer side by side (answers concatenated in random orders, median of 200 orders);
* speed: attributing 1M tokens of records of about 300 tokens against 1,000, 24,000 and
  1,000,000 candidate accounts, with the brute-force cost (every candidate's cells counted one
  by one) estimated from a sample.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    BENCH_SECRET,
    OUT_DIR,
    human_texts,
    machine,
    machine_line,
    markdown_table,
    write_json,
)

from distillmark.verify.attribute import Attributor
from distillmark.verify.candidates import Candidates
from distillmark.verify.prompts import builtin_prompts
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for
from distillmark.watermark.accounts import AccountLayer, AccountLayerParams, AccountMarked

ALPHA = 1e-6
SPACE_BITS = 20
N_CANDIDATES = 24_000


def make_spec() -> Any:
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    return new_spec("greenlist", {"n_lists": 65536}, info, secret=BENCH_SECRET,
                    accounts=AccountLayerParams())


def generate(spec: Any, prompts: list[str], numbers: list[int], *, layer_on: bool,
             max_new_tokens: int) -> list[dict[str, Any]]:
    """Answers to ``prompts`` (one per prompt) for account ``numbers``, cached on disk."""
    tag = hashlib.sha256(json.dumps([spec.key_id, prompts, numbers, layer_on,
                                     max_new_tokens]).encode()).hexdigest()[:16]
    cache = OUT_DIR / f"attribution-answers-{tag}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    from distillmark.watermark.engines import load_generator

    gen = load_generator("llama.cpp", None)
    provider = scheme_for(spec)
    layer = AccountLayer(spec.secret, spec.vocab_size, spec.accounts)
    out = []
    t0 = time.perf_counter()
    for i, (prompt, number) in enumerate(zip(prompts, numbers)):
        scheme = AccountMarked(provider, layer, number) if layer_on else provider
        c = gen.generate([prompt], scheme=scheme, max_new_tokens=max_new_tokens,
                         temperature=1.0, seed=10_000 + i)[0]
        out.append({"prompt": prompt, "number": number, "text": c.text,
                    "prompt_ids": list(c.prompt_ids), "ids": list(c.completion_ids)})
        if (i + 1) % 25 == 0:
            rate = sum(len(o["ids"]) for o in out) / (time.perf_counter() - t0)
            print(f"  {i + 1}/{len(prompts)} answers, {rate:.0f} tokens/s", file=sys.stderr)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out), encoding="utf-8")
    return out


def human_chunks(tok: Any, n: int, size: int = 300) -> list[np.ndarray]:
    """``n`` chunks of ``size`` tokens of human-written text: docstrings, then Python sources
    of the standard library."""
    texts = human_texts()
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts += [p.read_text(encoding="utf-8", errors="replace")
              for p in sorted(lib.glob("*.py"))]
    out: list[np.ndarray] = []
    for enc in tok.encode_batch_fast(texts, add_special_tokens=False):
        ids = np.asarray(enc.ids, dtype=np.int64)
        out += [ids[i:i + size] for i in range(0, ids.size - size + 1, size)]
        if len(out) >= n:
            break
    return out[:n]


def rate(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def single_answers(att24: Attributor, att20: Attributor, answers: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    seqs = [np.asarray(a["prompt_ids"][-1:] + a["ids"], dtype=np.int64) for a in answers]
    plens = [1] * len(seqs)
    r24 = att24.attribute_ids(seqs, prompt_lens=plens)
    r20 = att20.attribute_ids(seqs, prompt_lens=plens)
    truth = np.array([str(a["number"]) for a in answers])
    cand24 = np.array([r.candidate for r in r24])
    cand20 = np.array([r.candidate for r in r20])
    named24 = np.array([r.account_at(ALPHA) or "" for r in r24])
    named20 = np.array([r.account_at(ALPHA) or "" for r in r20])
    nats = np.array([-r.uncorrected_log10_pvalue * math.log(10) / max(r.n_scored, 1)
                     for r in r24])
    lengths = np.array([len(a["ids"]) for a in answers])
    full = lengths >= 300
    return {
        "n_answers": len(answers), "n_300_tokens": int(full.sum()),
        "median_tokens": float(np.median(lengths)),
        "median_scored": float(np.median([r.n_scored for r in r24])),
        "top1_24000": rate(cand24 == truth), "top1_2^20": rate(cand20 == truth),
        "attributed_24000": rate(named24 == truth), "attributed_2^20": rate(named20 == truth),
        "top1_24000_300_tokens": rate((cand24 == truth)[full]),
        "attributed_24000_300_tokens": rate((named24 == truth)[full]),
        "top1_2^20_300_tokens": rate((cand20 == truth)[full]),
        "attributed_2^20_300_tokens": rate((named20 == truth)[full]),
        "wrong_named": int(np.sum((named24 != "") & (named24 != truth))
                           + np.sum((named20 != "") & (named20 != truth))),
        "nats_per_scored_cell": float(np.median(nats)),
    }


def pooled(att: Attributor, answers: list[dict[str, Any]], each: int) -> dict[str, Any]:
    by: dict[int, list[str]] = {}
    for a in answers:
        by.setdefault(a["number"], []).append(a["text"])
    groups = [(n, t[:each]) for n, t in by.items() if len(t) >= each]
    named = [att.attribute_pooled(texts).account_at(ALPHA) for _, texts in groups]
    right = [name == str(n) for (n, _), name in zip(groups, named)]
    return {"n_pools": len(groups), "answers_each": each, "attributed": rate(np.array(right)),
            "wrong_named": sum(1 for (n, _), name in zip(groups, named)
                               if name is not None and name != str(n))}


def null_trials(spec: Any, answers: list[dict[str, Any]], chunks: list[np.ndarray],
                lists_each: int) -> dict[str, Any]:
    """Corrected p-values of texts whose serving account is not a candidate."""
    rng = np.random.default_rng(5)
    logs: list[float] = []
    wrong = 0
    att_h = Attributor(spec, Candidates.space(N_CANDIDATES))
    for r in att_h.attribute_ids(chunks):
        logs.append(r.log10_pvalue)
        wrong += r.account_at(ALPHA) is not None
    space = np.arange(1, 1 << SPACE_BITS)
    seqs = [np.asarray(a["prompt_ids"][-1:] + a["ids"], dtype=np.int64) for a in answers]
    for j in range(lists_each):
        # candidate lists of 24,000 numbers without the answers' own accounts
        nums = rng.choice(space, size=N_CANDIDATES + len(answers), replace=False)
        nums = np.setdiff1d(nums, [a["number"] for a in answers])[:N_CANDIDATES]
        cands = Candidates.of([(int(n), str(int(n))) for n in nums], where="trial")
        for r in Attributor(spec, cands).attribute_ids(seqs, prompt_lens=[1] * len(seqs)):
            logs.append(r.log10_pvalue)
            wrong += r.account_at(ALPHA) is not None
    lg = np.array(logs)
    return {"n_trials": int(lg.size), "n_human": len(chunks),
            "n_other_accounts": int(lg.size) - len(chunks),
            "share_below_1e-2": rate(lg < -2), "share_below_1e-3": rate(lg < -3),
            "wrong_at_1e-6": wrong}


def tokens_to_threshold(scheme: Any, answers: list[dict[str, Any]], *, orders: int = 200
                        ) -> float:
    """Median over random orders of the completion tokens, answers concatenated, before the
    pooled provider test on distinct cells reaches p < 1e-6."""
    from scipy import special

    per = []
    for a in answers:
        ids = np.asarray(a["prompt_ids"][-1:] + a["ids"], dtype=np.int64)
        keys = scheme.tuple_keys(ids)
        per.append(keys)
    rng = np.random.default_rng(0)
    p = scheme.test_params["p"]
    need = []
    for _ in range(orders):
        keys = np.concatenate([per[i] for i in rng.permutation(len(per))])
        _, first = np.unique(keys, return_index=True)
        new = np.zeros(keys.size, dtype=bool)
        new[first] = True
        green = scheme.key_scores(keys) & new
        n, k = np.cumsum(new), np.cumsum(green)
        # the first crossing only: bdtrc is exact far below 1e-6, no deep-tail sum needed
        hit = np.flatnonzero((k > 0) & (special.bdtrc(k - 1, n, p) < 1e-6))
        need.append(float(hit[0] + 1) if hit.size else math.inf)
    return float(np.median(need))


def speed(spec: Any, chunks: list[np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    n_tokens = int(sum(c.size for c in chunks))
    for n_cand in (1_000, 24_000, 1_000_000):
        att = Attributor(spec, Candidates.space(n_cand))
        sample = chunks if n_cand <= 24_000 else chunks[:200]
        t0 = time.perf_counter()
        att.attribute_ids(sample)
        t = (time.perf_counter() - t0) * len(chunks) / len(sample)
        rows.append({"candidates": n_cand, "tokens": n_tokens, "seconds": t,
                     "measured_on_records": len(sample)})
    # brute force: every candidate's green cells counted on its own, from a sample
    layer = AccountLayer(spec.secret, spec.vocab_size, spec.accounts)
    scheme = scheme_for(spec)
    cells = np.unique(np.concatenate([scheme.tuple_keys(c) for c in chunks[:50]]))
    t0 = time.perf_counter()
    layer.counts_for(cells, np.zeros(cells.size, dtype=np.int64), 1, np.arange(1, 201))
    per_pair = (time.perf_counter() - t0) / (cells.size * 200)
    cells_total = sum(np.unique(scheme.tuple_keys(c)).size for c in chunks)
    for row in rows:
        row["brute_force_seconds_estimated"] = per_pair * cells_total * row["candidates"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 accounts, 1,000 human chunks")
    ap.add_argument("--accounts", type=int, default=70)
    ap.add_argument("--answers-each", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=300)
    ap.add_argument("--plain", type=int, default=60,
                    help="answers also generated without the account layer")
    ap.add_argument("--null-human", type=int, default=5000)
    ap.add_argument("--speed-tokens", type=int, default=1_000_000)
    args = ap.parse_args()
    if args.quick:
        args.accounts, args.plain, args.null_human, args.speed_tokens = 10, 15, 1000, 100_000
    spec = make_spec()
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    rng = np.random.default_rng(1)
    numbers = rng.choice(np.arange(1, N_CANDIDATES + 1), size=args.accounts, replace=False)
    per_answer = [int(n) for n in numbers for _ in range(args.answers_each)]
    prompts = builtin_prompts(1000 + len(per_answer))[1000:]
    t0 = time.perf_counter()
    marked = generate(spec, prompts, per_answer, layer_on=True,
                      max_new_tokens=args.max_new_tokens)
    n_plain = min(args.plain, len(prompts))
    plain = generate(spec, prompts[:n_plain], per_answer[:n_plain], layer_on=False,
                     max_new_tokens=args.max_new_tokens)
    gen_s = time.perf_counter() - t0
    att24 = Attributor(spec, Candidates.space(N_CANDIDATES))
    att20 = Attributor(spec, Candidates.space((1 << SPACE_BITS) - 1))
    single = single_answers(att24, att20, marked)
    pools = pooled(att24, marked, 3)
    lists_each = max(1, math.ceil((10_000 - args.null_human) / len(marked))) \
        if not args.quick else 2
    stream = human_chunks(tok, max(args.null_human, args.speed_tokens // 300))
    nulls = null_trials(spec, marked, stream[:args.null_human], lists_each)
    provider = scheme_for(spec)
    cost = {"with_account_layer": tokens_to_threshold(provider, marked[:n_plain]),
            "without_account_layer": tokens_to_threshold(provider, plain)}
    cost["ratio"] = cost["with_account_layer"] / cost["without_account_layer"]
    speeds = speed(spec, stream[:args.speed_tokens // 300])
    info = machine()
    payload = {"machine": info, "args": vars(args), "generation_s": gen_s, "single": single,
               "pooled": pools, "null": nulls, "provider_cost": cost, "speed": speeds}
    path = write_json("attribution" + ("-quick" if args.quick else ""), payload)
    print(f"# Attribution ({machine_line(info)})\n")
    print(markdown_table(["measure", "value"], [[k, v] for k, v in single.items()]))
    print()
    print(markdown_table(["pooled", "value"], [[k, v] for k, v in pools.items()]))
    print()
    print(markdown_table(["null", "value"], [[k, v] for k, v in nulls.items()]))
    print()
    print(markdown_table(["provider layer: tokens to p < 1e-6", "value"],
                         [[k, f"{v:.3g}"] for k, v in cost.items()]))
    print()
    print(markdown_table(["candidates", "tokens", "seconds", "brute force (est.) s"],
                         [[r["candidates"], r["tokens"], f"{r['seconds']:.1f}",
                           f"{r['brute_force_seconds_estimated']:.0f}"] for r in speeds]))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
