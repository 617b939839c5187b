"""What a scan writes: one JSON line per record (its best key's test, p-values corrected for
the keys), and at the end the per-record file (JSON Lines or Parquet) with the Benjamini-Hochberg
flags, written atomically.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import IO

import numpy as np

from distillmark.watermark.errors import MissingDependencyError
from distillmark.watermark.files import atomic_write

from .scoring import RecordScores

__all__ = ["result_lines", "write_results"]


def _fmt_num(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else "null"


_PLAIN = re.compile(r'^[^"\\\x00-\x1f\x7f]*$')


def _json_str(s: str) -> str:
    return f'"{s}"' if _PLAIN.match(s) else json.dumps(s)


def result_lines(locs: list[str], per_key: list[RecordScores], key_ids: list[str], *,
                 accounts: list[tuple[str | None, float]] | None = None) -> str:
    """One JSON line per record: the best key's result, p-values corrected for the keys; with
    ``accounts``, each record's named account (or null) and its corrected log10 p-value."""
    n_keys = len(per_key)
    if n_keys == 1:
        rs = per_key[0]
        pv, lg = rs.pvalue, rs.log10_pvalue
        kid = [key_ids[0]] * len(locs)
        stats_, nt, ns, sm = rs.statistic, rs.n_tokens, rs.n_scored, rs.score_mean
    else:
        best = np.argmin(np.stack([r.log10_pvalue for r in per_key]), axis=0)
        take = np.arange(len(locs))

        def pick(name: str) -> np.ndarray:
            return np.stack([getattr(r, name) for r in per_key])[best, take]

        pv = np.minimum(1.0, pick("pvalue") * n_keys)
        lg = np.minimum(0.0, pick("log10_pvalue") + math.log10(n_keys))
        stats_, nt, ns, sm = (pick(n) for n in ("statistic", "n_tokens", "n_scored",
                                                "score_mean"))
        kid = [key_ids[b] for b in best.tolist()]
    integral = bool(np.all(np.mod(stats_, 1.0) == 0.0))
    st = stats_.astype(np.int64).tolist() if integral else [_fmt_num(x) for x in stats_.tolist()]
    tails = (["}\n"] * len(locs) if accounts is None else
             [f', "account": {"null" if a is None else _json_str(a)}, '
              f'"account_log10_pvalue": {_fmt_num(p)}}}\n' for a, p in accounts])
    return "".join(
        f'{{"location": {_json_str(loc)}, "n_tokens": {a}, "n_scored": {b}, "statistic": {c}, '
        f'"pvalue": {d!r}, "log10_pvalue": {e!r}, "score_mean": {f!r}, "key_id": "{k}"{t}'
        for loc, a, b, c, d, e, f, k, t in zip(locs, nt.tolist(), ns.tolist(), st,
                                               pv.tolist(), lg.tolist(), sm.tolist(), kid,
                                               tails))


def write_results(rows_path: Path, flags: np.ndarray, out: Path) -> None:
    """Final per-record file from the work file's lines and the BH flags (atomic)."""
    with atomic_write(out, text=False) as dst:
        if out.suffix.lower() == ".parquet":
            _write_parquet(rows_path, flags, dst)
        else:
            with open(rows_path, "rb") as src:
                for line, flag in zip(src, flags.tolist()):
                    dst.write(line[:-2])
                    dst.write(b', "flagged": true}\n' if flag else b', "flagged": false}\n')


_COLUMNS = ("location", "n_tokens", "n_scored", "statistic", "pvalue", "log10_pvalue",
            "score_mean", "key_id")


def _write_parquet(rows_path: Path, flags: np.ndarray, dest: IO[bytes]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("--out .parquet needs pyarrow: pip install "
                                     "'distillmark[scale]'") from None
    with open(rows_path, "rb") as src:
        first = src.readline()
    accounts = b'"account"' in first
    columns = _COLUMNS + (("account", "account_log10_pvalue") if accounts else ())
    schema = pa.schema([("location", pa.string()), ("n_tokens", pa.int64()),
                        ("n_scored", pa.int64()), ("statistic", pa.float64()),
                        ("pvalue", pa.float64()), ("log10_pvalue", pa.float64()),
                        ("score_mean", pa.float64()), ("key_id", pa.string())]
                       + ([("account", pa.string()), ("account_log10_pvalue", pa.float64())]
                          if accounts else [])
                       + [("flagged", pa.bool_())])
    with pq.ParquetWriter(dest, schema) as writer, open(rows_path, "rb") as src:
        start = 0
        while True:
            lines = [ln for _, ln in zip(range(1 << 17), src)]
            if not lines:
                break
            recs = [json.loads(ln) for ln in lines]
            cols = {c: [r[c] for r in recs] for c in columns}
            cols["flagged"] = flags[start:start + len(recs)].tolist()
            writer.write_table(pa.table(cols, schema=schema))
            start += len(recs)
        if start == 0:
            writer.write_table(schema.empty_table())
