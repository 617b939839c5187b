"""A leaked dataset: which accounts harvested it? 10,000 served answers of 50 accounts inside
40,000 human-written records, attributed against 24,000 candidate accounts.

    python benchmarks/bench_leak.py [--quick] [--accounts 50] [--answers-each 200]
                                    [--human 40000] [--max-new-tokens 96]

The served model: 10,000 SmolLM2 answers take hours on these cores, so a stand-in answers: a
neural bigram LM (the package's student trainer) trained on the embedded SmolLM2's own answers
(bench_attribution.py's cache, with and without the account layer), whose next-token
distributions are SmolLM2-like. It answers varied built-in prompts at temperature 1 with the
benchmark key (green-list h = 1, 65,536 lists, account layer gamma 1/4 delta 2), each account
with its own number among 1..24,000. The human records are chunks of about 100 tokens of
numpy's and scipy's docstrings and of the standard library's Python sources. Everything is
written as one JSON Lines file, shuffled, and attributed as ``distillmark attribute`` does
(:func:`distillmark.verify.attribute_run.attribute_inputs`). Reported: the accounts found at
family-wise alpha 1e-6 against the 50 that served, wrong ones, per-record attributions right and
wrong, and the speed (tokens per second, the whole run on one process).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import OUT_DIR, human_texts, machine, machine_line, markdown_table, write_json
from bench_attribution import make_spec

from distillmark.verify.attribute import Attributor
from distillmark.verify.attribute_run import attribute_inputs
from distillmark.verify.candidates import Candidates
from distillmark.verify.prompts import builtin_prompts
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, scheme_for
from distillmark.watermark.accounts import AccountLayer, AccountMarked

ALPHA = 1e-6
OUT = OUT_DIR / "leak"


def stand_in(tok: Any) -> Path:
    """The bigram stand-in, trained once on the cached SmolLM2 answers."""
    from distillmark.verify.lab import default_tokenizer_dir, train_bigram_student

    out = OUT / "stand-in"
    if (out / "distill_train.json").is_file():
        return out
    pairs = []
    for cache in sorted(OUT_DIR.glob("attribution-answers-*.json")):
        for a in json.loads(cache.read_text(encoding="utf-8")):
            pairs.append((a["prompt_ids"], a["ids"]))
    if not pairs:
        raise SystemExit("run benchmarks/bench_attribution.py first: its SmolLM2 answers train "
                         "the stand-in")
    train_bigram_student(pairs, out, tokenizer_dir=default_tokenizer_dir(), steps=40, seed=0)
    return out


def served(spec: Any, model_dir: Path, numbers: list[int], each: int, max_new: int
           ) -> list[dict[str, Any]]:
    cache = OUT / f"served-{len(numbers)}x{each}-{max_new}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    from distillmark.watermark import hf

    lm = hf.load_model(model_dir)
    provider = scheme_for(spec)
    layer = AccountLayer(spec.secret, spec.vocab_size, spec.accounts)
    prompts = builtin_prompts(1500)
    out = []
    for j, number in enumerate(numbers):
        asked = [prompts[(j * each + i) % len(prompts)] for i in range(each)]
        outs = lm.generate(asked, scheme=AccountMarked(provider, layer, number),
                           max_new_tokens=max_new, temperature=1.0, batch_size=each, seed=j)
        out += [{"account": str(number), "text": o.text} for o in outs]
        print(f"  account {j + 1}/{len(numbers)}", file=sys.stderr)
    cache.write_text(json.dumps(out), encoding="utf-8")
    return out


def human_records(tok: Any, n: int, size: int = 100) -> list[str]:
    """``n`` chunks of about ``size`` tokens of human-written text, decoded back to text."""
    texts = human_texts()
    lib = Path(sysconfig.get_paths()["stdlib"])
    texts += [p.read_text(encoding="utf-8", errors="replace")
              for p in sorted(lib.rglob("*.py")) if "test" not in p.parts]
    out: list[str] = []
    for i in range(0, len(texts), 64):
        for enc in tok.encode_batch_fast(texts[i:i + 64], add_special_tokens=False):
            ids = enc.ids
            out += [tok.decode(ids[k:k + size]) for k in range(0, len(ids) - size + 1, size)]
        if len(out) >= n:
            break
    return out[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 accounts x 20, 2,000 human")
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--answers-each", type=int, default=200)
    ap.add_argument("--human", type=int, default=40_000)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    if args.quick:
        args.accounts, args.answers_each, args.human = 10, 20, 2000
    OUT.mkdir(parents=True, exist_ok=True)
    spec = make_spec()
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    rng = np.random.default_rng(11)
    numbers = [int(x) for x in rng.choice(np.arange(1, 24_001), args.accounts, replace=False)]
    t0 = time.perf_counter()
    answers = served(spec, stand_in(tok), numbers, args.answers_each, args.max_new_tokens)
    gen_s = time.perf_counter() - t0
    human = human_records(tok, args.human)
    rows = [{"response": a["text"], "truth": a["account"]} for a in answers]
    rows += [{"response": t, "truth": None} for t in human]
    order = rng.permutation(len(rows))
    data = OUT / "leak.jsonl"
    data.write_text("".join(json.dumps(rows[i]) + "\n" for i in order), encoding="utf-8")
    truth = [rows[i]["truth"] for i in order]
    att = Attributor(spec, Candidates.space(24_000))
    results: list[Any] = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    run = attribute_inputs([data], att, on_records=results.extend, field_path="response",
                           alpha=ALPHA)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert run.dataset is not None
    named = [r.result.account_at(ALPHA) for r in results]
    n_tokens = sum(r.result.n_tokens for r in results)
    found = {a.account for a in run.dataset.found(ALPHA)}
    served_by = {str(n) for n in numbers}
    res = {
        "records": len(rows), "harvested_records": len(answers), "accounts": len(numbers),
        "accounts_found": len(found & served_by), "wrong_accounts_found": len(found - served_by),
        "records_attributed_right": sum(1 for n, t in zip(named, truth) if n and n == t),
        "records_attributed_wrong": sum(1 for n, t in zip(named, truth) if n and n != t),
        "harvested_records_attributed": sum(1 for n, t in zip(named, truth) if t and n == t),
        "tokens": n_tokens, "wall_s": wall, "cpu_s": cpu,
        "tokens_per_wall_s": n_tokens / wall, "median_answer_tokens": float(np.median(
            [r.result.n_tokens for r, t in zip(results, truth) if t])),
        "generation_s": gen_s,
    }
    info = machine()
    path = write_json("leak" + ("-quick" if args.quick else ""),
                      {"machine": info, "args": vars(args), "result": res})
    print(f"# Leaked dataset ({machine_line(info)})\n")
    print(markdown_table(["measure", "value"], [[k, v] for k, v in res.items()]))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
