"""The HTML view of a report: one self-contained page (no script, no external asset).

Every string from the report is escaped (``html.escape``, quotes included): the text tested is
hostile input. A detect report's ``details`` show the text with each token coloured by its
status (green, not green, repeated and not scored, prompt or unscored) and the running log10
p-value along the text as an inline SVG line; other reports show their figures only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distillmark.watermark.files import atomic_write

__all__ = ["render_html", "write_html"]

_STATUS = {"g": ("green", "scored, green (above the null's mean)"),
           "n": ("notgreen", "scored, not green"),
           "r": ("repeated", "repeated tuple, not scored"),
           "u": ("unscored", "prompt or context, not scored")}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top;font-size:.9em}th{background:#f3f3f3}
.decision{font-size:1.3em;font-weight:bold}
.text{white-space:pre-wrap;word-wrap:break-word;font-family:ui-monospace,monospace;
border:1px solid #ccc;padding:1em;line-height:1.6}
.green{background:#9be29b}.notgreen{background:#f6c6c6}.repeated{background:#ffe58a}
.unscored{color:#888;background:#eee}
.legend span{padding:0 .4em;margin-right:.6em}
svg{border:1px solid #ccc;background:#fff}
code{word-break:break-all}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: Sequence[tuple[Any, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _svg(running: Sequence[Sequence[float]], n_tokens: int, alpha: float | None) -> str:
    """The running log10 p-value: x the token index, y log10 p (0 at the top)."""
    if not running:
        return "<p>No token was scored: no running p-value.</p>"
    w, h, pad = 800, 220, 40
    lows = [float(v) for _, v in running if math.isfinite(float(v))]
    floor = min([*lows, math.log10(alpha) if alpha else 0.0, -1.0])
    floor = math.floor(floor)
    span = max(n_tokens - 1, 1)

    def xy(i: float, v: float) -> tuple[float, float]:
        v = v if math.isfinite(v) else floor
        return (pad + (w - 2 * pad) * i / span, pad / 2 + (h - pad) * (v / floor))

    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(float(i), float(v)) for i, v in running))
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
              f'viewBox="0 0 {w} {h}" role="img" aria-label="running log10 p-value">'),
             (f'<line x1="{pad}" y1="{h - pad / 2}" x2="{w - pad}" y2="{h - pad / 2}" '
              'stroke="#999"/>'),
             f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{h - pad / 2}" stroke="#999"/>',
             f'<text x="2" y="{pad / 2 + 4}" font-size="11">0</text>',
             f'<text x="2" y="{h - pad / 2}" font-size="11">{floor}</text>',
             f'<text x="{w / 2 - 60}" y="{h - 4}" font-size="11">token position</text>']
    if alpha:
        _, ya = xy(0, math.log10(alpha))
        parts.append(f'<line x1="{pad}" y1="{ya:.1f}" x2="{w - pad}" y2="{ya:.1f}" '
                     'stroke="#c00" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{w - pad - 120}" y="{ya - 4:.1f}" font-size="11" '
                     f'fill="#c00">log10 alpha = {math.log10(alpha):.2f}</text>')
    parts.append(f'<polyline fill="none" stroke="#063" stroke-width="2" points="{pts}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _text_section(t: Mapping[str, Any], alpha: float | None) -> str:
    pieces = [str(p) for p in t.get("pieces", [])]
    status = str(t.get("status", ""))
    spans = []
    for i, piece in enumerate(pieces):
        cls, _ = _STATUS.get(status[i] if i < len(status) else "u", _STATUS["u"])
        spans.append(f'<span class="{cls}">{_e(piece)}</span>')
    counts = {c: status.count(c) for c in _STATUS}
    legend = "".join(f'<span class="{cls}">{_e(title)}: {counts[c]}</span>'
                     for c, (cls, title) in _STATUS.items())
    return (f"<h2>Text: {_e(t.get('name', ''))}</h2>"
            f'<p class="legend">{legend}</p>'
            f"<h3>Running log10 p-value</h3>{_svg(t.get('running', []), len(pieces), alpha)}"
            f'<h3>Tokens</h3><div class="text">{"".join(spans)}</div>')


def render_html(report: Mapping[str, Any]) -> str:
    """The page of ``report`` (a dict as :func:`~.report.read_report` returns it)."""
    test = report.get("test", {}) or {}
    command = report.get("command", "")
    alpha = test.get("alpha")
    alpha = float(alpha) if isinstance(alpha, (int, float)) and 0 < alpha < 1 else None
    keys = report.get("keys", []) or []
    sig = report.get("signature")
    head = _table([
        ("command", command),
        ("decision", test.get("decision", "")),
        ("test", test.get("name", "")), ("statistic", test.get("statistic", "")),
        ("p-value", test.get("pvalue", "")), ("log10 p-value", test.get("log10_pvalue", "")),
        ("alpha", test.get("alpha", "")),
        ("tests corrected for", f"{test.get('n_tests', 1)} ({test.get('correction', 'none')})"),
        ("keys", ", ".join(str(k.get("key_id", "")) for k in keys if isinstance(k, Mapping))),
        ("tokenizer", (report.get("tokenizer") or {}).get("sha256", "")),
        ("tool", " ".join(str((report.get("tool") or {}).get(k, ""))
                          for k in ("name", "version"))),
        ("created", report.get("created", "")),
        ("signature", "present: check it with `distillmark report verify`" if sig
         else "none (unsigned report)"),
    ])
    inputs = _table([(i.get("name", ""), f"sha256 {i.get('sha256', '')}, {i.get('size', '')} bytes")
                     for i in report.get("inputs", []) if isinstance(i, Mapping)])
    counts = _table(sorted((report.get("counts") or {}).items()))
    options = _table(sorted((report.get("options") or {}).items()))
    controls = _table([(c.get("name", ""), c.get("description", ""))
                       for c in report.get("controls", []) if isinstance(c, Mapping)])
    details = report.get("details") or {}
    texts = "".join(_text_section(t, alpha) for t in details.get("texts", [])
                    if isinstance(t, Mapping))
    title = f"distillmark {command} report"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>"
            f'<p class="decision">{_e(test.get("decision", ""))} '
            f'(p = {_e(test.get("pvalue", ""))})</p>{head}{texts}'
            f"<h2>Inputs</h2>{inputs}<h2>Counts</h2>{counts}<h2>Options</h2>{options}"
            f"<h2>Controls</h2>{controls}</body></html>\n")


def write_html(path: str | Path, report: Mapping[str, Any]) -> None:
    """Write the page of ``report`` to ``path`` atomically."""
    with atomic_write(path, what=f"HTML report {path}") as fh:
        fh.write(render_html(report))
