"""Reports a third party can check: canonical JSON, the inputs' digests, an optional signature.

A report is one JSON object (see docs/reports.md for every field)::

    {"distillmark_report": 1, "command": "detect", "tool": {...}, "created": "...",
     "inputs": [{"name", "sha256", "size"}...], "keys": [spec.public_dict()...],
     "tokenizer": {...}, "options": {...}, "counts": {...}, "test": {...},
     "controls": [...], "result": {...}, "signature": {...}}

**Canonical form** (what is written and what is signed), after RFC 8785 (JCS):

- UTF-8, no byte-order mark, no whitespace between tokens, no trailing newline;
- object members sorted by their names' UTF-16 code units (as JCS; for the ASCII names used
  here the same as byte order), each name once;
- strings as ECMAScript's ``JSON.stringify`` writes them: ``"`` and ``\\`` escaped,
  ``\\b \\f \\n \\r \\t`` for those controls, ``\\u00xx`` (lower-case hex) for the other
  characters below U+0020, everything else as itself (non-ASCII is not escaped);
- integers (Python ``int``) in plain decimal; other numbers as ECMAScript writes a double
  (shortest round-trip digits: ``1e-7``, ``0.25``, ``2`` for 2.0, ``1e+21``), ``-0`` as ``0``;
  NaN and infinities are not JSON: they are written as the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"``; ``true``, ``false``, ``null`` as such.

A report parsed and written again in this form gives the same bytes, which is how
:func:`check_signature` checks it: the signature covers the canonical bytes of the report
without its ``signature`` member.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distillmark.watermark.errors import InputError
from distillmark.watermark.files import atomic_write, decode_json, read_bounded

from .decision import Decision

__all__ = [
    "REPORT_FIELD",
    "REPORT_VERSION",
    "canonical_json",
    "directory_digests",
    "file_digest",
    "new_report",
    "pvalue_string",
    "read_report",
    "test_section",
    "text_digest",
    "tool_version",
    "unsigned_bytes",
    "write_report",
]

REPORT_FIELD = "distillmark_report"
REPORT_VERSION = 1
#: Reports larger than this are not read back (a detect report of a long text holds its tokens).
MAX_REPORT_BYTES = 1 << 30
_CHUNK = 1 << 20

# -- canonical JSON ----------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _number(x: float) -> str:
    """A double as ECMAScript's ``Number.prototype.toString`` writes it (RFC 8785 §3.2.2.3)."""
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    digits, _, exp = repr(abs(x)).partition("e")  # repr: the shortest round-trip digits
    int_part, _, frac = digits.partition(".")
    mantissa = (int_part + frac).lstrip("0")
    # value = 0.d1d2...dk x 10^n with n as in ECMAScript's algorithm
    n = len(int_part.lstrip("0")) if int_part.strip("0") else -(len(frac) - len(frac.lstrip("0")))
    n += int(exp or 0)
    mantissa = mantissa.rstrip("0")
    k = len(mantissa)
    if k <= n <= 21:
        return sign + mantissa + "0" * (n - k)
    if 0 < n <= 21:
        return sign + mantissa[:n] + "." + mantissa[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + mantissa
    e = n - 1
    es = f"+{e}" if e > 0 else str(e)
    body = mantissa if k == 1 else mantissa[0] + "." + mantissa[1:]
    return sign + body + "e" + es


def _emit(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        names = list(value)
        if not all(isinstance(n, str) for n in names):
            raise TypeError("report object names must be strings")
        out.append("{")
        for i, name in enumerate(sorted(names, key=lambda s: s.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(_string(name))
            out.append(":")
            _emit(value[name], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out)
        out.append("]")
    elif hasattr(value, "item"):  # numpy scalars
        _emit(value.item(), out)
    else:
        raise TypeError(f"cannot put a {type(value).__name__} in a report")


def canonical_json(value: Any) -> bytes:
    """``value``'s canonical JSON bytes (the module's rule)."""
    out: list[str] = []
    _emit(value, out)
    return "".join(out).encode("utf-8")


def unsigned_bytes(report: Mapping[str, Any]) -> bytes:
    """What a signature covers: the canonical bytes of ``report`` without ``signature``."""
    return canonical_json({k: v for k, v in report.items() if k != "signature"})


# -- inputs -------------------------------------------------------------------------------------


def text_digest(name: str, text: str) -> dict[str, Any]:
    """An input read as UTF-8 text: its bytes are the text's UTF-8 encoding (strict decoding
    round-trips), so the digest is the file's."""
    data = text.encode("utf-8")
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def file_digest(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """SHA-256 and size of one file, read in chunks; ``name``: how the report names it."""
    p = Path(path)
    h, size = hashlib.sha256(), 0
    try:
        with open(p, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise InputError(f"{name or p}: cannot read to take its digest: {exc.strerror}") from None
    return {"name": str(p) if name is None else name, "sha256": h.hexdigest(), "size": size}


def directory_digests(path: str | Path) -> list[dict[str, Any]]:
    """:func:`file_digest` of every file under a folder (or of the file itself), in path
    order, each named ``FOLDER/relative/path``."""
    p = Path(path)
    if not p.is_dir():
        return [file_digest(p)]
    files = sorted((Path(root) / f for root, _, names in os.walk(p) for f in names),
                   key=lambda q: q.relative_to(p).as_posix())
    return [file_digest(f, f"{p.as_posix().rstrip('/')}/{f.relative_to(p).as_posix()}")
            for f in files if f.is_file()]


def path_digests(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """:func:`directory_digests` of each path, in the order given."""
    return [d for p in paths for d in directory_digests(p)]


# -- the test -----------------------------------------------------------------------------------


def pvalue_string(pvalue: float, log10_pvalue: float) -> str:
    """The p-value exactly as computed: the float's shortest round-trip digits
    (``"3.0517578125e-05"``), or, where it underflows to 0, ``"10^-412.25..."`` from its
    log10 (17 significant digits)."""
    if pvalue > 0 or not math.isfinite(log10_pvalue):
        return repr(float(pvalue))
    return f"10^{log10_pvalue:.17g}"


def test_section(result: Decision, *, name: str, alpha: float, statistic: float,
                 correction: str | None = None, n_tests: int = 1) -> dict[str, Any]:
    """The ``test`` member: the test's name, statistic, exact p-value (string and log10), the
    level and the decision."""
    return {"name": name, "statistic": statistic,
            "pvalue": pvalue_string(result.pvalue, result.log10_pvalue),
            "log10_pvalue": float(result.log10_pvalue), "alpha": alpha,
            "decision": result.verdict(alpha), "sufficient": result.is_sufficient(),
            "n_tests": n_tests, "correction": correction or "none"}


# -- the report ---------------------------------------------------------------------------------


def tool_version() -> str:
    """The installed distillmark's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distillmark")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def new_report(command: str, *, inputs: Sequence[Mapping[str, Any]],
               keys: Sequence[Mapping[str, Any]], tokenizer: Mapping[str, Any] | None,
               options: Mapping[str, Any], counts: Mapping[str, int],
               test: Mapping[str, Any], controls: Sequence[Mapping[str, Any]],
               result: Mapping[str, Any], details: Mapping[str, Any] | None = None,
               created: str | None = None) -> dict[str, Any]:
    """A report as a dict, ready for :func:`write_report`. ``keys`` are the specs'
    ``public_dict()`` (never the secret); ``tokenizer`` the fingerprint the keys are bound to;
    ``options`` the command's options that change its result; ``details``: extra data for
    the HTML view (detect: every token's status)."""
    d: dict[str, Any] = {
        REPORT_FIELD: REPORT_VERSION, "command": command,
        "tool": {"name": "distillmark", "version": tool_version()},
        "created": created or _now(), "inputs": list(inputs), "keys": list(keys),
        "tokenizer": dict(tokenizer) if tokenizer is not None else None,
        "options": dict(options), "counts": dict(counts), "test": dict(test),
        "controls": list(controls), "result": dict(result),
    }
    if details is not None:
        d["details"] = dict(details)
    canonical_json(d)  # every value must be one a report can hold: fail before writing
    return d


def write_report(path: str | Path, report: Mapping[str, Any]) -> bytes:
    """Write ``report``'s canonical bytes to ``path`` atomically; returns them."""
    data = canonical_json(report)
    with atomic_write(path, text=False, what=f"report {path}") as fh:
        fh.write(data)
    return data


def read_report(path: str | Path) -> dict[str, Any]:
    """Read a report file; one :class:`InputError` line if it cannot be read or is not a
    report."""
    where = f"report {path}"
    if Path(path).is_dir():
        raise InputError(f"{where} is a directory")
    raw = read_bounded(path, MAX_REPORT_BYTES, what=where)
    d = decode_json(raw, what=where)
    if not isinstance(d, dict) or REPORT_FIELD not in d:
        raise InputError(f"{where} is not a distillmark report (no {REPORT_FIELD!r} field)")
    if d[REPORT_FIELD] != REPORT_VERSION:
        raise InputError(f"{where} has report version {d[REPORT_FIELD]!r}; this distillmark "
                         f"reads version {REPORT_VERSION}")
    return d
