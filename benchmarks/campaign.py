"""A distillation campaign through many accounts, end to end.

    python benchmarks/campaign.py            # 1,000 accounts, one 128-token answer each
    python benchmarks/campaign.py --quick    # 1,000 accounts, 48-token answers

1. A master key (green-list, h = 1, 65,536 lists) with its account layer; an accounts file of
   ``--accounts`` accounts, each with its own API key; ``distillmark``'s OpenAI-compatible
   server (the embedded SmolLM2 on llama.cpp) serves them on loopback and logs every request.
2. The campaign: every account asks ``--prompts-each`` prompts of the experiment's prompt pool,
   many accounts at once over the OpenAI API. The control harvest: ONE account asks the same
   prompts.
3. A student (the package's neural bigram trainer) is trained on each harvest; each is served
   on loopback and probed with held-out prompts, and its weights audited, with the master key
   alone: the provider layer must survive the split over accounts.
4. Every harvested answer is attributed to an account (alone, and pooled per account), and
   checked against the server's request log.
5. A leaked dataset: the campaign's answers mixed into four times as many human-written records
   (docstrings and Python sources of installed packages), attributed record by record and as a
   whole: which accounts harvested it.

Harvests and students are cached in benchmarks/out/campaign/, so a rerun asks nothing again.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distillation as dist
from _common import BENCH_SECRET, machine, machine_line, markdown_table, write_json
from _distill_prompts import prompt_set
from bench_attribution import human_chunks

from distillmark.verify.attribute import Attributor
from distillmark.verify.attribute_dataset import attribute_cells
from distillmark.verify.candidates import Candidates
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.serve.accounts import Accounts
from distillmark.watermark.serve.log import read_log, text_digest

OUT = Path(__file__).resolve().parent / "out" / "campaign"
ALPHA = 1e-6
MODEL = "smollm2"


def master_spec() -> Any:
    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    return new_spec("greenlist", {"n_lists": 65536}, info, secret=BENCH_SECRET,
                    accounts=AccountLayerParams())


def api_key(i: int) -> str:
    return "sk-" + hashlib.sha256(f"campaign account {i}".encode()).hexdigest()[:32]


async def _ask_all(url: str, jobs: list[tuple[str, str]], max_tokens: int, concurrency: int
                   ) -> list[str]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=3600) as client:
        async def one(key: str, prompt: str) -> str:
            async with sem:
                r = await client.post(url + "/chat/completions",
                                      headers={"Authorization": f"Bearer {key}"},
                                      json={"model": MODEL, "max_tokens": max_tokens,
                                            "temperature": 1.0,
                                            "messages": [{"role": "user", "content": prompt}]})
                r.raise_for_status()
                return str(r.json()["choices"][0]["message"]["content"])

        return list(await asyncio.gather(*(one(k, p) for k, p in jobs)))


def harvest(args: argparse.Namespace, spec: Any, prompts: list[str]) -> dict[str, Any]:
    """Both harvests through one server (cached): the campaign's and the single account's."""
    tag = hashlib.sha256(json.dumps([spec.key_id, args.accounts, args.prompts_each,
                                     args.max_tokens, prompts]).encode()).hexdigest()[:12]
    cache = OUT / f"harvest-{tag}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    from distillmark.watermark import llamacpp
    from distillmark.watermark.serve import ServeConfig, create_app, start_server
    from distillmark.watermark.serve.log import RequestLog

    n = args.accounts
    mapping = {api_key(i): f"acct-{i:05d}" for i in range(n + 1)}  # the last one: the control
    accounts = Accounts.from_mapping(mapping)
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / f"requests-{tag}.jsonl"
    done = _answered(log_path)  # an interrupted harvest resumes from the server's own log
    gen = llamacpp.load_model(None)
    conf = ServeConfig(model_name=MODEL, spec=spec, accounts=accounts, max_batch=1,
                       default_max_tokens=args.max_tokens,
                       log=RequestLog(log_path, max_bytes=1 << 30))
    k = args.prompts_each
    campaign = [(api_key(i // k), p) for i, p in enumerate(prompts)]
    solo = [(api_key(n), p) for p in prompts]
    out: dict[str, Any] = {"log": str(log_path)}
    with start_server(create_app(gen, conf)) as server:
        for name, jobs in (("campaign", campaign), ("solo", solo)):
            t0 = time.perf_counter()
            todo = [(k, p) for k, p in jobs if (mapping[k], p) not in done]
            dist.log(f"{name}: {len(jobs) - len(todo)} answers logged before, "
                     f"{len(todo)} to ask")
            asked = asyncio.run(_ask_all(server.url, todo, args.max_tokens, args.concurrency))
            done.update({(mapping[k], p): t for (k, p), t in zip(todo, asked)})
            texts = [done[(mapping[k], p)] for k, p in jobs]
            out[name] = [{"account": mapping[key], "prompt": p, "answer": t}
                         for (key, p), t in zip(jobs, texts)]
            out[f"{name}_seconds"] = time.perf_counter() - t0
            out[f"{name}_asked"] = len(todo)
            dist.log(f"{name}: {len(todo)} answers in {out[f'{name}_seconds']:.0f} s")
    cache.write_text(json.dumps(out), encoding="utf-8")
    return out


def _answered(log_path: Path) -> dict[tuple[str, str], str]:
    """(account, prompt) -> answer of every request already in the server's log."""
    done: dict[tuple[str, str], str] = {}
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            done[(rec["account"], rec["messages"][-1]["content"])] = rec["answers"][0]
    return done


def pairs_of(records: list[dict[str, Any]], tok: Any) -> list[tuple[list[int], list[int]]]:
    """(prompt ids in the chat template, answer ids) per harvested answer."""
    heads = [f"<|im_start|>user\n{r['prompt']}<|im_end|>\n<|im_start|>assistant\n"
             for r in records]
    ph = tok.encode_batch_fast(heads, add_special_tokens=False)
    ans = tok.encode_batch_fast([r["answer"] for r in records], add_special_tokens=False)
    return [(list(p.ids), list(a.ids)) for p, a in zip(ph, ans)]


def student_tests(name: str, pairs: list[tuple[list[int], list[int]]], spec: Any,
                  held: list[str], asked: list[str], cfg: dist.Config) -> dict[str, Any]:
    """Probe (held-out prompts, and ``asked``: prompts of the campaign read back from the
    server's request log) and audit one student with the master key."""
    tag = hashlib.sha256(json.dumps([name, pairs[:3], len(pairs), cfg.steps]).encode()
                         ).hexdigest()[:12]
    mdir = OUT / f"student-{name}-{tag}"
    if not (mdir / "distill_train.json").is_file():
        dist.train_bigram(pairs, cfg, seed=0, out_dir=mdir)
    closed, probe_pairs = dist.closed_model_probe(mdir, held, spec, cfg)
    ans = dist.answer_records(probe_pairs, spec)
    ctx = [np.asarray(a["completion_ids"], dtype=np.int64) for a in ans[:cfg.audit_contexts]]
    audit = dist.open_model_test(mdir, ctx, [spec], cfg)[0]["coverage"]
    on_log, _ = dist.closed_model_probe(mdir, asked, spec, cfg)
    return {"probe_log10_p": closed["log10_pvalue"], "probe_answers": closed["queries"],
            "probe_log_prompts_log10_p": on_log["log10_pvalue"],
            "probe_log_prompts_scored": on_log["n_scored"],
            "probe_scored": closed["n_scored"],
            "queries_to_1e-6": dist.queries_to_reach(ans, spec, -6.0),
            "audit_log10_p": audit.log10_pvalue, "audit_scored": audit.n_scored}


def attribution(spec: Any, harvested: dict[str, Any], n_accounts: int) -> dict[str, Any]:
    records = harvested["campaign"]
    cands = Candidates.of([(i + 1, f"acct-{i:05d}") for i in range(n_accounts + 1)],
                          where="campaign accounts")
    att = Attributor(spec, cands)
    res = [att.attribute(r["answer"], source=r["account"]) for r in records]
    top1 = np.array([r.candidate == rec["account"] for r, rec in zip(res, records)])
    named = [r.account_at(ALPHA) for r in res]
    by: dict[str, list[str]] = {}
    for rec in records:
        by.setdefault(rec["account"], []).append(rec["answer"])
    pooled = [att.attribute_pooled(texts).account_at(ALPHA) == acct for acct, texts in by.items()]
    logged = {d for r in read_log(harvested["log"]) for d in r.answer_digests}
    in_log = np.mean([text_digest(r["answer"]) in logged for r in records])
    return {"answers": len(records), "top1": float(top1.mean()),
            "attributed": float(np.mean([n == rec["account"] for n, rec in
                                         zip(named, records)])),
            "wrong": sum(1 for n, rec in zip(named, records)
                         if n is not None and n != rec["account"]),
            "accounts_pooled": len(pooled), "pooled_attributed": float(np.mean(pooled)),
            "answers_found_in_log": float(in_log)}


def leaked_dataset(spec: Any, harvested: dict[str, Any], n_accounts: int, tok: Any
                   ) -> dict[str, Any]:
    records = harvested["campaign"]
    human = human_chunks(tok, 4 * len(records), size=120)
    cands = Candidates.of([(i + 1, f"acct-{i:05d}") for i in range(n_accounts + 1)],
                          where="campaign accounts")
    att = Attributor(spec, cands)
    marked = [np.asarray(e.ids, dtype=np.int64) for e in
              tok.encode_batch_fast([r["answer"] for r in records], add_special_tokens=False)]
    rng = np.random.default_rng(3)
    seqs = marked + human
    order = rng.permutation(len(seqs))
    seqs = [seqs[i] for i in order]
    truth = [records[i]["account"] if i < len(marked) else None for i in order.tolist()]
    t0 = time.perf_counter()
    per = att.attribute_ids(seqs)
    cells, groups = att.distinct_cells(seqs)
    ds = attribute_cells(att, cells, groups, len(seqs))
    seconds = time.perf_counter() - t0
    found = {a.account for a in ds.found(ALPHA)}
    true_accounts = {t for t in truth if t is not None}
    named = [r.account_at(ALPHA) for r in per]
    return {"records": len(seqs), "harvested_records": len(marked),
            "accounts_in_data": len(true_accounts),
            "accounts_found": len(found & true_accounts),
            "wrong_accounts_found": len(found - true_accounts),
            "records_attributed": sum(1 for n, t in zip(named, truth) if n is not None
                                      and n == t),
            "records_wrongly_attributed": sum(1 for n, t in zip(named, truth)
                                              if n is not None and n != t),
            "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--prompts-each", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--probe-prompts", type=int, default=100)
    args = ap.parse_args()
    if args.quick:
        args.max_tokens, args.probe_prompts = 48, 40
    t_start = time.perf_counter()
    spec = master_spec()
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    pool = prompt_set()
    n_train = args.accounts * args.prompts_each
    prompts, held = pool[:n_train], pool[n_train:n_train + args.probe_prompts]
    harvested = harvest(args, spec, prompts)
    cfg = replace(dist.QUICK if args.quick else dist.Config(),
                  closed_queries=len(held), closed_samples=4,
                  closed_max_new=64 if args.quick else 128,
                  audit_contexts=4 * len(held))
    from distillmark.verify.prompts import prompts_from_log

    asked = prompts_from_log(harvested["log"])[:len(held)]  # what the campaign asked
    students = {name: student_tests(name, pairs_of(harvested[name], tok), spec, held, asked,
                                    cfg)
                for name in ("campaign", "solo")}
    attrib = attribution(spec, harvested, args.accounts)
    leaked = leaked_dataset(spec, harvested, args.accounts, tok)
    info = machine()
    payload = {"machine": info, "args": vars(args), "students": students,
               "attribution": attrib, "leaked": leaked,
               "harvest_seconds": {k: harvested[f"{k}_seconds"] for k in ("campaign", "solo")},
               "harvest_asked_this_run": {k: harvested.get(f"{k}_asked")
                                          for k in ("campaign", "solo")},
               "wall_seconds": time.perf_counter() - t_start}
    path = write_json("campaign" + ("-quick" if args.quick else ""), payload)
    print(f"# Campaign ({machine_line(info)})\n")
    rows = [[name, f"{s['probe_log10_p']:.1f}", s["probe_answers"], s["queries_to_1e-6"],
             f"{s['probe_log_prompts_log10_p']:.1f}", f"{s['audit_log10_p']:.1f}"]
            for name, s in students.items()]
    print(markdown_table(["student", "probe log10 p (held-out)", "answers",
                          "answers to 1e-6", "probe log10 p (logged prompts)",
                          "audit log10 p"], rows))
    print()
    print(markdown_table(["attribution", "value"], [[k, v] for k, v in attrib.items()]))
    print()
    print(markdown_table(["leaked dataset", "value"], [[k, v] for k, v in leaked.items()]))
    print(f"\nwrote {path} ({math.ceil(payload['wall_seconds'])} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
