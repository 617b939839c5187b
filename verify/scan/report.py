"""Self-contained HTML report of a dataset scan (matplotlib figures embedded as PNG).

The figures: the histogram of the records' p-values (uniform without the watermark), their
QQ-plot against the uniform law (on the ``-log10`` scale, where a watermarked minority shows as
a tail above the diagonal), the distribution of the records' scores with the expectations with
and without the watermark, then the verdict and its numbers. Only the key's public id appears.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distillmark.watermark.errors import MissingDependencyError
from distillmark.watermark.files import atomic_write

from ..stats import format_pvalue

if TYPE_CHECKING:
    from .result import ScanResult
    from .state import KeyState

__all__ = ["write_report"]

_MAX_QQ_POINTS = 4000


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _done(plt: Any, fig: Any, ax: Any, name: str, labels: tuple[str, str, str]
          ) -> tuple[str, str]:
    """Label a figure's axes and title (``labels``), and close it: ``(name, PNG as base64)``."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    png = _png(fig)
    plt.close(fig)
    return name, png


def _figures(result: ScanResult, rec_log10p: np.ndarray, ks: KeyState) -> list[tuple[str, str]]:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("--report needs matplotlib: pip install "
                                     "'distillmark[scale]'") from None
    scored = ks.n_scored > 0
    lg = rec_log10p[scored]
    p = np.power(10.0, lg)
    out: list[tuple[str, str]] = []

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(p, bins=20, range=(0, 1), color="#4878a8", edgecolor="white")
    if p.size:
        ax.axhline(p.size / 20, color="#c44e52", ls="--", label="uniform (no watermark)")
        ax.legend(loc="upper right", fontsize=8)
    out.append(_done(plt, fig, ax, "p-value histogram", ("record p-value", "records",
                                                          "Per-record p-values")))

    fig, ax = plt.subplots(figsize=(6, 3.8))
    if lg.size:
        obs = np.sort(-lg)[::-1]
        m = obs.size
        idx = np.unique(np.linspace(0, m - 1, min(m, _MAX_QQ_POINTS)).astype(np.int64))
        expected = -np.log10((idx + 0.5) / m)
        ax.plot(expected, obs[idx], ".", ms=3, color="#4878a8", label="records")
        top = float(max(expected.max(), 1.0))
        ax.plot([0, top], [0, top], color="#c44e52", ls="--", label="uniform")
        ax.legend(loc="upper left", fontsize=8)
    out.append(_done(plt, fig, ax, "QQ-plot", ("expected -log10 p (uniform)",
                                               "observed -log10 p",
                                               "QQ-plot against the uniform law")))

    agg = result.aggregate
    fig, ax = plt.subplots(figsize=(6, 3.4))
    sm = ks.score_means[ks.n_scored >= agg.min_scored]
    if sm.size:
        ax.hist(sm, bins=50, color="#4878a8", edgecolor="white")
    sd = math.sqrt(agg.null_mean * (1 - agg.null_mean)) if 0 < agg.null_mean < 1 else 1.0
    ax.axvline(agg.null_mean, color="#55a868", ls="--", label=f"no watermark: {agg.null_mean:.3g}")
    wm = agg.null_mean + agg.effect * sd
    ax.axvline(wm, color="#c44e52", ls="--", label=f"watermarked (typical): {wm:.3g}")
    ax.legend(loc="upper right", fontsize=8)
    out.append(_done(plt, fig, ax, "score distribution", (
        "record score (mean per scored unit)", "records",
        f"Record scores (records with >= {agg.min_scored} scored tuples)")))
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return "-"
        return f"{x:.4g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def render(result: ScanResult, rec_log10p: np.ndarray, ks: KeyState, *,
           alpha: float) -> str:
    """The report as one HTML string."""
    d = result.to_dict(alpha)
    p_text = format_pvalue(result.pvalue, result.log10_pvalue)
    verdict = d["verdict"]
    frac = result.fraction
    det = d["detectable_fraction"]
    if verdict == "watermarked":
        summary = (f"The dataset carries the watermark of key {d['key_id']}: p = "
                   f"{p_text} over {d['n_scored']:,} distinct "
                   f"tuples pooled from {d['n_records_scored']:,} records.")
    elif verdict == "insufficient evidence":
        summary = (f"Insufficient evidence: only {d['n_scored']:,} distinct tuples were scored "
                   f"(at least {d['min_scored']} needed).")
    else:
        power = (f"with this much evidence a watermark on {det:.2%} of the tuples would have "
                 "been found half of the time" if det is not None
                 else "even a fully watermarked dataset of this size could go unnoticed")
        summary = (f"No watermark found (p = {p_text}) over "
                   f"{d['n_scored']:,} distinct tuples from {d['n_records_scored']:,} records; "
                   f"{power}." + (f" At most {frac.ci_high:.2%} of the {frac.n_records:,} "
                                  "records with enough evidence are watermarked "
                                  f"({frac.confidence:.0%} upper bound)."
                                  if frac.is_estimated() else ""))
    rows = [
        ("verdict", f"{verdict} (alpha = {alpha:g})"),
        ("dataset p-value", p_text
         + (f" (Bonferroni for {result.n_keys} keys)" if result.n_keys > 1 else "")),
        ("key id", d["key_id"]), ("scheme", d["scheme"]), ("test", d["test"]),
        ("records read / scored / skipped",
         f"{d['n_records_read']:,} / {d['n_records_scored']:,} / {d['n_records_skipped']:,}"),
        ("tokens", d["n_tokens"]), ("distinct tuples scored", d["n_scored"]),
        ("repeated tuples left out", d["n_repeated"]),
        ("score mean / without the key", f"{_fmt(d['score_mean'])} / {_fmt(d['null_mean'])}"),
        ("z-score (for reading)", d["z_score"]),
        ((f"watermarked fraction of the {frac.n_records:,} records with >= {frac.min_units} "
         "(fresh) scored units"),
         (f"{frac.estimate:.3%} ({frac.confidence:.0%} CI {frac.ci_low:.3%} to "
          f"{frac.ci_high:.3%}; {frac.method})" if frac.is_estimated() else
          "cannot be estimated (too few records, or they rule out no fraction)")),
        (f"records flagged at FDR {result.fdr:g} (Benjamini-Hochberg)", d["n_flagged"]),
        ("smallest detectable watermarked share of tuples",
         f"{det:.3%}" if det is not None else "none within 100%"),
    ]
    table = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                      for k, v in rows)
    figs = "\n".join(f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
                     f"<figcaption>{html.escape(t)}</figcaption></figure>"
                     for t, b in _figures(result, rec_log10p, ks))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>distillmark scan report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }}
th {{ font-weight: 600; }}
figure {{ display: inline-block; margin: .5em; }}
.verdict {{ font-size: 1.2em; padding: .6em; background: #f3f3f3; }}
</style></head><body>
<h1>distillmark scan report</h1>
<p class="verdict">{html.escape(summary)}</p>
<table>{table}</table>
{figs}
<p>Per-record p-values are exact tests on each record's distinct tuples; the dataset p-value is
the exact test on the distinct tuples of all records pooled (a tuple in several records counts
once). The fraction is a two-component mixture fitted by maximum likelihood, its interval by
profile likelihood.</p>
</body></html>
"""


def write_report(path: Path, result: ScanResult, rec_log10p: np.ndarray, ks: KeyState, *,
                 alpha: float) -> None:
    """Write the report to ``path`` atomically."""
    text = render(result, rec_log10p, ks, alpha=alpha)
    with atomic_write(path) as fh:
        fh.write(text)
