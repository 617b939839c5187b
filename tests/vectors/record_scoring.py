"""Record the statistics and p-values that detect, scan, probe and audit give on fixed inputs.

``python tests/vectors/record_scoring.py`` writes ``tests/vectors/scoring.json``; with
``--check`` it recomputes every figure and reports those that differ. The file pins the scoring
path: tests/test_one_path.py requires the same bits (floats are stored with ``float.hex``).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from distillmark.verify import detect_ids, detect_ids_batch
from distillmark.verify.aggregate import AggregateAccumulator
from distillmark.verify.audit import ModelReadings, audit_readings
from distillmark.verify.probe import score_answers
from distillmark.verify.scan import scan
from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec, scheme_for

OUT = Path(__file__).with_name("scoring.json")
SECRET = bytes(range(32))
#: (label, scheme, params): every scheme, and the green-list's widths and table kinds. The
#: green-list's ``n_lists`` is stated (256: a table held whole; 65,536: rows computed as met),
#: so that a change of its default changes no recorded figure.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("greenlist", "greenlist", {"n_lists": 256}),
    ("unigram", "greenlist", {"context_width": 0, "n_lists": 256}),
    ("selfhash", "greenlist", {"context_width": 3, "seeding": "selfhash", "combine": "min",
                               "n_lists": 256}),
    ("greenlist-65536", "greenlist", {"n_lists": 65536}),
    ("gumbel", "gumbel", {}),
    ("tournament", "tournament", {}),
    ("dipmark", "dipmark", {}),
    ("transformers-kgw", "transformers-kgw", {"hashing_key": 15485863}),
    ("transformers-synthid", "transformers-synthid",
     {"keys": [654, 400, 836, 123, 340, 443, 597, 160, 57, 29, 590, 639, 13, 715, 468, 990,
               798, 99, 62, 71, 27, 45, 31, 21], "ngram_len": 5}),
]


def _num(x: Any) -> Any:
    if isinstance(x, float):
        return x.hex() if math.isfinite(x) else repr(x)
    if isinstance(x, (np.floating,)):
        return _num(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {k: _num(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_num(v) for v in x]
    return x


def _relative(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A scan row with its location relative to the temporary ``folder`` (which changes from
    run to run)."""
    row["location"] = row["location"].removeprefix(f"{folder}/")
    return row


def _marked_ids(scheme: Any, rng: np.random.Generator, n: int, V: int) -> np.ndarray:
    """Ids that lean on ``scheme``'s key: each step draws 8 candidates and keeps the one whose
    score is highest (a crude mark, but it gives deep tails and shared tuples)."""
    h = scheme.context_width
    ids = list(rng.integers(0, 2000, size=max(h, 1)))
    while len(ids) < n:
        cand = rng.integers(0, 2000, size=8)
        best, best_s = int(cand[0]), -math.inf
        for c in cand.tolist():
            trial = np.asarray(ids[-max(h, 1) - 4:] + [c], dtype=np.int64)
            s = np.asarray(scheme.key_scores(scheme.tuple_keys(trial)[-1:]), dtype=np.float64)
            v = float(s.sum())
            if v > best_s:
                best, best_s = c, v
        ids.append(best)
    return np.asarray(ids, dtype=np.int64)


def _inputs(scheme: Any, V: int) -> list[np.ndarray]:
    rng = np.random.default_rng(20261203)
    seqs = [rng.integers(0, V, size=n) for n in (0, 1, 3, 40, 200, 700)]
    seqs.append(np.tile(rng.integers(0, 300, size=7), 30))  # repeated tuples
    seqs += [_marked_ids(scheme, rng, n, V) for n in (30, 120, 400)]
    return [np.asarray(s, dtype=np.int64) for s in seqs]


def record_case(label: str, name: str, params: dict[str, Any], tok: Any, info: Any,
                tmp: Path) -> dict[str, Any]:
    spec = new_spec(name, params, info, secret=SECRET)
    scheme = scheme_for(spec)
    V = scheme.vocab_size
    seqs = _inputs(scheme, V)
    out: dict[str, Any] = {}
    out["detect_ids"] = [detect_ids(s, scheme, prompt_len=min(2, s.size)).to_dict()
                         for s in seqs]
    out["detect_ids_batch"] = [r.to_dict() for r in detect_ids_batch(
        seqs, scheme, prompt_lens=[min(2, s.size) for s in seqs])]
    acc = AggregateAccumulator(scheme)
    acc.add_batch(seqs)
    out["aggregate"] = acc.result().to_dict()
    texts = [tok.decode(s.tolist()) for s in seqs if s.size > 2]
    data = tmp / f"{label}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    rows = tmp / f"{label}.out.jsonl"
    res = scan([data], [spec], field="text", out=rows)
    out["scan"] = res.to_dict()
    out["scan_rows"] = [_relative(json.loads(line), tmp)
                        for line in rows.read_text().splitlines()]
    pairs = [(f"question {i}", t) for i, t in enumerate(texts)]
    out["probe"] = score_answers(pairs, spec).to_dict()
    if name == "greenlist":
        rng = np.random.default_rng(7)
        m, k = 600, 16
        sequences = tuple(seqs[4:])
        seq = np.concatenate([np.full(min(s.size, 100), j) for j, s in enumerate(sequences)])
        pos = np.concatenate([np.arange(min(s.size, 100)) for s in sequences])
        m = seq.size
        top_ids = rng.integers(0, V, size=(m, k))
        probs = np.sort(rng.dirichlet(np.ones(k), size=m).astype(np.float32), axis=1)[:, ::-1]
        readings = ModelReadings(source="synthetic", sequences=sequences, seq=seq, pos=pos,
                                 top_ids=top_ids, top_probs=np.ascontiguousarray(probs),
                                 n_tokens=int(sum(s.size for s in sequences)))
        out["audit"] = {w: audit_readings(readings, scheme, weighting=w).to_dict()
                        for w in ("window", "context", "coverage")}
        out["audit"]["reading"] = audit_readings(readings, scheme, mode="reading").to_dict()
    return _num(out)


def record_all() -> dict[str, Any]:
    """Every case's figures, as stored in the file."""
    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    with tempfile.TemporaryDirectory() as d:
        return {label: record_case(label, name, params, tok, info, Path(d))
                for label, name, params in CASES}


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which ``b`` differs from the recorded ``a`` (figures only ``b`` has are new,
    not differences)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}/{k}: missing" for k in sorted(set(a) - set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main() -> int:
    result = record_all()
    if sys.argv[1:] == ["--check"]:
        diffs = differences(json.loads(OUT.read_text(encoding="utf-8")), result)
        print("\n".join(diffs) if diffs else "same bits")
        return 1 if diffs else 0
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
