"""Shared pieces of the benchmark scripts: human text, token ids, timing, tables, JSON output.

Scripts that measure one core set the thread variables (``OMP_NUM_THREADS``...) *before*
importing this module, which imports numpy.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "out"

#: A fixed key for every benchmark, so figures (green counts, p-values) are reproducible.
BENCH_SECRET = hashlib.sha256(b"distillmark benchmark key, not secret").digest()

#: Modules whose public callables' docstrings serve as human-written English text.
DOC_MODULES = (
    "numpy", "numpy.linalg", "numpy.fft", "numpy.random", "scipy.stats", "scipy.special",
    "scipy.optimize", "scipy.linalg", "scipy.integrate", "scipy.interpolate", "scipy.signal",
    "scipy.sparse", "scipy.ndimage",
)
_MIN_DOC_CHARS = 400
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# --------------------------------------------------------------------------------------------
# Human text and realistic token ids


def _strip_doctest(doc: str) -> str:
    # Doctest input lines go, and outputs marked "may vary": a few docstrings are generated at
    # import time with random examples, and the text must be the same in every process.
    lines = [ln for ln in doc.splitlines() if not ln.lstrip().startswith((">>>", "..."))
             and not ln.rstrip().endswith("# may vary")]
    # Sets of names printed into generated docstrings come in hash-seed order: sort them.
    return _SET_OF_NAMES.sub(_sorted_set, "\n".join(lines)).strip()


_SET_OF_NAMES = re.compile(r"\{'[^'{}]*'(?:, '[^'{}]*')+\}")


def _sorted_set(m: re.Match[str]) -> str:
    return "{" + ", ".join(sorted(m.group(0)[1:-1].split(", "))) + "}"


def human_texts() -> list[str]:
    """Docstrings (>= 400 characters, doctest lines removed) of numpy's and scipy's public
    callables: English written by people, in a deterministic order, without duplicates."""
    seen: set[str] = set()
    texts: list[str] = []
    for modname in DOC_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name, None)
            if not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            text = _strip_doctest(doc)
            if len(text) >= _MIN_DOC_CHARS and text not in seen:
                seen.add(text)
                texts.append(text)
    return texts


def sentences(texts: Iterable[str]) -> list[str]:
    """Split texts into sentences (paragraphs first, then at . ! ?), keeping a separator:
    a sentence that ends a paragraph ends with a newline, others with a space."""
    out: list[str] = []
    for text in texts:
        for para in text.split("\n\n"):
            parts = [p for p in _SENTENCE_END.split(para.strip()) if p]
            out.extend(p + " " for p in parts[:-1])
            if parts:
                out.append(parts[-1] + "\n\n")
    return out


def sentence_token_ids(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each sentence of ``texts``: a list of ``(n_i,) int64`` arrays."""
    sents = sentences(texts)
    encoded = tokenizer.encode_batch_fast(sents, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encoded if len(e.ids)]


def shuffled_stream(pieces: Sequence[np.ndarray], n_tokens: int, *, seed: int) -> np.ndarray:
    """``(n_tokens,) int64``: the pieces in random order, again and again in fresh orders, cut
    at ``n_tokens``. Real token statistics (and real repetition), unlike uniform ids."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    total = 0
    while total < n_tokens:
        for i in rng.permutation(len(pieces)):
            out.append(pieces[i])
            total += pieces[i].size
            if total >= n_tokens:
                break
    return np.concatenate(out)[:n_tokens]


def chunks_of(stream: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """The first ``count`` consecutive pieces of ``size`` tokens of ``stream``."""
    if stream.size < size * count:
        raise ValueError(f"stream of {stream.size} tokens is too short for {count} x {size}")
    return [stream[i * size:(i + 1) * size] for i in range(count)]


def human_text_of_size(n_chars: int, *, seed: int) -> str:
    """About ``n_chars`` characters of human text: the docstrings' paragraphs, shuffled again
    and again, joined with blank lines."""
    paras = [p.strip() for t in human_texts() for p in t.split("\n\n") if p.strip()]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    total = 0
    while total < n_chars:
        for i in rng.permutation(len(paras)):
            out.append(paras[i])
            total += len(paras[i]) + 2
            if total >= n_chars:
                break
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Timing


def repeat_timed(fn: Callable[[], Any], *, repeat: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones."""
    return repeat_timed_cpu(fn, repeat=repeat, warmup=warmup)[0]


def repeat_timed_cpu(fn: Callable[[], Any], *, repeat: int, warmup: int = 1
                     ) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of this process (all its threads) of ``repeat`` calls of
    ``fn`` after ``warmup`` untimed ones. On a machine shared with other jobs, CPU time shows
    what the work costs, wall time what it took."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median, best and spread of a list of timings (seconds)."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "n": len(times)}


# --------------------------------------------------------------------------------------------
# Output


def machine() -> dict[str, Any]:
    """What the figures were measured on (cores, CPU model, load, versions)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "platform": platform.platform(),
    }
    for mod in ("scipy", "tokenizers", "torch", "transformers"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    load = f", load average {info['loadavg_1m']}" if "loadavg_1m" in info else ""
    return f"{info['cores']} cores ({info['cpu']}){load}; Python {info['python']}"


def fmt_rate(x: float) -> str:
    """Tokens/s in a short human form: 12.3M, 45.6k, 789."""
    if math.isnan(x) or math.isinf(x) or x <= 0:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_ratio(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:,.0f}×" if x >= 10 else f"{x:.2f}×"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    numeric = [all(re.match(r"^[-+~<>≥≤]?[\d.,]", r[i] or "0") for r in rows) if rows else False
               for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                            for w, num in zip(widths, numeric)) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/out/NAME.json`` atomically (temp file + rename)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".json", dir=OUT_DIR)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=float)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
