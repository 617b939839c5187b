"""Calibration harness: the realised false-positive rate of many keys on human-written text,
per key and pooled, against nominal, with exact (Clopper-Pearson) bounds.

    python benchmarks/calibration.py [--keys 100] [--texts 2000] [--schemes LIST]
                                     [--json OUT] [--quick]

Corpus (offline, human-written): the Python source and documentation shipped with installed
packages of this environment (numpy, scipy, rich, click, typer, httpx, dask, distributed,
fastapi, pytest, hypothesis, cryptography, fsspec, huggingface_hub; their own licences: BSD,
MIT, Apache-2.0, MPL-2.0), the licence and METADATA files of every installed distribution, and
this project's docs. Files are cut into line-aligned texts of about 1,200 characters
(:func:`distillmark.verify.calibrate.split_text`), identical texts once, the same number
taken from each source in path order, tokenised once with the SmolLM2 tokenizer.

For each scheme and context width, ``--keys`` keys (secrets from a fixed seed) each test every
text through ``detect_ids_batch`` three ways:

* ``exact``: the exact test over distinct tuples (what ``detect`` does on one text);
* ``exact+shared``: the same with the tuples found in many of the corpus's texts left out
  (:mod:`distillmark.verify.shared`: by default those found in two texts or more, so that no
  two texts share a scored tuple; ``--min-texts``, ``--max-share`` relax it), what
  ``distillmark calibrate`` does;
* ``z-nodedup`` (binomial schemes only): the plain z-test on every token, repeated tuples
  counted each time, ``norm.sf(z)``, for contrast.

Per key: the share of texts with ``pvalue < alpha`` at 1e-2 .. 1e-5, and whether its
Clopper-Pearson interval (simultaneous over keys and levels, 95%) lies above alpha
(``exceeded``); the spread of the per-key share at 1e-2 against the binomial's; pooled over
keys: the share and its 95% interval. Texts with fewer than 25 scored tuples are not tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from distillmark.verify import detect_ids_batch
from distillmark.verify.calibrate import corpus_texts, level_rates, tested_pvalues
from distillmark.verify.grouping import batch_tuple_keys
from distillmark.verify.shared import (
    DEFAULT_MAX_SHARE,
    DEFAULT_MIN_TEXTS,
    ngram_codes,
    shared_tuples,
)
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

LEVELS = (1e-2, 1e-3, 1e-4, 1e-5)
SITE = Path(np.__file__).resolve().parent.parent
PACKAGES = ["numpy", "scipy", "rich", "click", "typer", "httpx", "dask", "distributed",
            "fastapi", "_pytest", "hypothesis", "cryptography", "fsspec", "huggingface_hub"]
ROOT = Path(__file__).resolve().parent.parent
#: (label, scheme, params)
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("greenlist h=0", "greenlist", {"context_width": 0}),
    ("greenlist h=1", "greenlist", {"context_width": 1}),
    ("greenlist h=2", "greenlist", {"context_width": 2}),
    ("gumbel h=2", "gumbel", {}),
    ("tournament h=4", "tournament", {}),
]


def corpus(n_texts: int) -> list[str]:
    """``n_texts`` texts, about as many from each source, in a fixed order."""
    sources: list[list[Path]] = [[SITE / p] for p in PACKAGES if (SITE / p).is_dir()]
    sources.append(sorted(p for p in SITE.glob("*.dist-info/*")
                          if p.is_file() and (p.name.startswith(("LICENSE", "LICENCE", "COPYING"))
                                              or p.name == "METADATA"))
                   + sorted(SITE.glob("*.dist-info/licenses/*")))
    sources.append([ROOT / "docs", ROOT / "README.md"])
    per = -(-n_texts // len(sources))
    seen: set[str] = set()
    texts: list[str] = []
    for paths in sources:
        got = 0
        for t in corpus_texts([p for p in paths if p.exists()], max_texts=4 * per):
            if t not in seen:
                seen.add(t)
                texts.append(t)
                got += 1
                if got >= per:
                    break
    return texts[:n_texts]


def secret(i: int) -> bytes:
    return hashlib.sha256(b"distillmark calibration key %d" % i).digest()


def z_nodedup(seqs: list[np.ndarray], scheme: Any) -> np.ndarray:
    """The plain z-test on every scored token (repeats counted): ``(n_texts,)`` p-values."""
    keys, owner = batch_tuple_keys(seqs, scheme)
    green = scheme.key_scores(keys)
    n = np.bincount(owner, minlength=len(seqs)).astype(float)
    g = np.bincount(owner, weights=green, minlength=len(seqs))
    p = scheme.test_params["p"]
    z = (g - p * n) / np.sqrt(np.maximum(n, 1) * p * (1 - p))
    pv = stats.norm.sf(z)
    pv[n < 25] = np.nan
    return np.asarray(pv)


def power_check(seqs: list[np.ndarray], h: int, shared: Any, *, green_rate: float = 0.5,
                gamma: float = 0.25, level: float = 1e-6, seed: int = 0) -> dict[str, Any]:
    """A synthetic check of the power cost (no model): each text is taken as watermarked, each
    of its distinct scored tuples green with probability ``green_rate`` (about what a green
    list with delta 2 gives), and read token by token; recorded: the share of texts whose
    exact test reaches ``level`` within the text, and the median tokens it takes them."""
    rng = np.random.default_rng(seed)
    tokens_needed: list[int] = []
    for s in seqs:
        codes = ngram_codes(s, h + 1)
        keep = np.ones(codes.size, dtype=bool) if shared is None else ~shared.left_out(s)
        _, first = np.unique(codes, return_index=True)
        new = np.zeros(codes.size, dtype=bool)
        new[first] = True
        new &= keep
        green = new & (rng.random(codes.size) < green_rate)
        n, g = np.cumsum(new), np.cumsum(green)
        sf = stats.binom.sf(g - 1, np.maximum(n, 1), gamma)
        hit = np.flatnonzero((sf < level) & (n > 0))
        if hit.size:
            tokens_needed.append(int(hit[0]) + h + 1)
    return {"texts": len(seqs), "reached": len(tokens_needed),
            "median_tokens": float(np.median(tokens_needed)) if tokens_needed else None}


def summarise(per_key: list[np.ndarray]) -> dict[str, Any]:
    k = len(per_key)
    rows = [level_rates(p[np.isfinite(p)], LEVELS, n_comparisons=k) for p in per_key]
    pooled = level_rates(np.concatenate([p[np.isfinite(p)] for p in per_key]), LEVELS)
    n_tests = [r[0].n_tests for r in rows]
    out: dict[str, Any] = {"n_keys": k, "n_tests": int(sum(n_tests)), "levels": []}
    for j, a in enumerate(LEVELS):
        rates = np.array([r[j].rate for r in rows])
        out["levels"].append({
            "alpha": a,
            "keys_exceeded": int(sum(r[j].exceeded() for r in rows)),
            "key_rate_min": float(rates.min()), "key_rate_max": float(rates.max()),
            "key_rate_sd": float(rates.std(ddof=1)),
            "binomial_sd": float(np.sqrt(a * (1 - a) / np.mean(n_tests))),
            "pooled": pooled[j].to_dict()})
    return out


def run(n_keys: int, n_texts: int, labels: list[str], max_share: float | None, min_texts: int
        ) -> dict[str, Any]:
    t0 = time.time()
    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    texts = corpus(n_texts)
    seqs = [np.asarray(e.ids, dtype=np.int64)
            for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    print(f"corpus: {len(texts)} texts, {sum(s.size for s in seqs)} tokens "
          f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    report: dict[str, Any] = {"n_texts": len(texts), "n_tokens": int(sum(s.size for s in seqs)),
                              "configs": {}}
    for label, name, params in CONFIGS:
        if label not in labels:
            continue
        t1 = time.time()
        h = scheme_for(new_spec(name, params, info, secret=secret(0))).context_width
        shared = shared_tuples(seqs, h, max_share=max_share, min_texts=min_texts)
        ways: dict[str, list[np.ndarray]] = {"exact": [], "exact+shared": []}
        scored: dict[str, list[float]] = {"exact": [], "exact+shared": []}
        binom = name == "greenlist"
        if binom:
            ways["z-nodedup"] = []
        for i in range(n_keys):
            scheme = scheme_for(new_spec(name, params, info, secret=secret(i)))
            for way, sh in (("exact", None), ("exact+shared", shared)):
                res = detect_ids_batch(seqs, scheme, shared=sh)
                pv, mean = tested_pvalues(res, 25)
                ways[way].append(pv)
                scored[way].append(mean)
            if binom:
                ways["z-nodedup"].append(z_nodedup(seqs, scheme))
        entry = {way: summarise(pvs) for way, pvs in ways.items()}
        for way, means in scored.items():
            entry[way]["mean_scored"] = float(np.mean(means))
        entry["shared"] = shared.to_dict()
        entry["power"] = {"exact": power_check(seqs, h, None),
                          "exact+shared": power_check(seqs, h, shared)}
        entry["seconds"] = round(time.time() - t1, 1)
        report["configs"][label] = entry
        print(table(label, entry), flush=True)
    return report


def table(label: str, entry: dict[str, Any]) -> str:
    head = (f"\n### {label} ({entry['seconds']} s; shared tuples left out: "
            f"{entry['shared']['n_left_out']}, found in >= {entry['shared']['threshold']} "
            "texts)\n")
    cols = ("| test | tests | scored/text | alpha | keys exceeded | per-key rate min-max | "
            "per-key sd (binomial) | pooled rate [95% CP] |")
    lines = [head, cols, "|---|---|---|---|---|---|---|---|"]
    for way, pw in entry.get("power", {}).items():
        head += (f"\npower (synthetic, green rate 0.5): {way}: {pw['reached']}/{pw['texts']} "
                 f"texts reach p < 1e-6, median {pw['median_tokens']} tokens")
    lines[0] = head + "\n"
    for way, s in entry.items():
        if not isinstance(s, dict) or "levels" not in s:
            continue
        for lv in s["levels"]:
            p = lv["pooled"]
            lines.append(
                f"| {way} | {s['n_tests']} | {s.get('mean_scored', float('nan')):.0f} | "
                f"{lv['alpha']:.0e} | {lv['keys_exceeded']}/{s['n_keys']} | "
                f"{lv['key_rate_min']:.2e}-{lv['key_rate_max']:.2e} | "
                f"{lv['key_rate_sd']:.1e} ({lv['binomial_sd']:.1e}) | "
                f"{p['rate']:.2e} [{p['lower']:.1e}, {p['upper']:.1e}] |")
    return "\n".join(lines)


def power_only(n_texts: int, max_share: float | None, min_texts: int) -> None:
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    seqs = [np.asarray(e.ids, dtype=np.int64)
            for e in tok.encode_batch_fast(corpus(n_texts), add_special_tokens=False)]
    for h in (1, 2):
        shared = shared_tuples(seqs, h, max_share=max_share, min_texts=min_texts)
        for way, sh in (("exact", None), ("exact+shared", shared)):
            print(f"h={h} {way}: {power_check(seqs, h, sh)}")
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--schemes", default=",".join(c[0] for c in CONFIGS),
                    help="comma-separated labels of CONFIGS")
    ap.add_argument("--max-share", type=float, default=DEFAULT_MAX_SHARE)  # type: ignore[arg-type]
    ap.add_argument("--min-texts", type=int, default=DEFAULT_MIN_TEXTS)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="10 keys, 500 texts")
    ap.add_argument("--power-only", action="store_true",
                    help="only the synthetic power check, no keys")
    a = ap.parse_args()
    if a.quick:
        a.keys, a.texts = 10, 500
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    if a.power_only:
        power_only(a.texts, a.max_share, a.min_texts)
        return
    report = run(a.keys, a.texts, [s.strip() for s in a.schemes.split(",")], a.max_share,
                 a.min_texts)
    report["load_average_after"] = os.getloadavg()
    print(f"\nload average after: {report['load_average_after']}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
