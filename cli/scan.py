"""``distillmark scan``: test a whole dataset (JSONL, Parquet, CSV, text, datasets folders).

Thin: parse the options, call :func:`distillmark.verify.scan.scan`, render. The library (and
its optional stacks: pyarrow, dask, matplotlib) is imported only when the command runs.
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from distillmark.verify import DEFAULT_ALPHA, DEFAULT_MIN_SCORED
from distillmark.verify.fraction import MIN_FRACTION_RECORDS
from distillmark.verify.nulls import BINOMIAL_TESTS
from distillmark.verify.stats import format_pvalue

from . import reporting
from .common import (
    EXIT_ERROR,
    EXIT_FOUND,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    err,
    errors_exit,
    info,
    require_open_unit,
)
from .options import (
    AccountsOption,
    AccountSpaceOption,
    JsonResultOption,
    ReportOption,
    SignOption,
    TokenizerOverrideOption,
    alpha_option,
    key_option,
    min_scored_option,
)
from .reporting import ReportPlan

_FMT_HELP = "Input format: auto (from file names), jsonl, parquet, csv, text, hf."


def scan(
    inputs: Annotated[list[str], typer.Argument(
        help="Files and directories to scan: JSON Lines (.jsonl, .gz, .zst), Parquet, CSV, text "
             "files, datasets save_to_disk folders.")],
    key: Annotated[list[Path], key_option(
        "The watermark key, or a key ring (every key of it is tried); repeat it to test several "
        "keys (Bonferroni-corrected).")],
    field: Annotated[str | None, typer.Option(
        help="Dotted path of the text in each record (e.g. response, output.text).")] = None,
    chat: Annotated[str | None, typer.Option(
        help="Dotted path of OpenAI-style chat messages: only assistant turns are scored.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=_FMT_HELP)] = "auto",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Per-record results, .jsonl or .parquet (written atomically).")
    ] = None,
    fdr: Annotated[float, typer.Option(
        help="False-discovery rate of the per-record flags (Benjamini-Hochberg).")] = 0.05,
    alpha: Annotated[float, alpha_option(
        "Significance level of the dataset verdict.")] = DEFAULT_ALPHA,
    min_scored: Annotated[int, min_scored_option(
        "distinct scored tuples")] = DEFAULT_MIN_SCORED,
    effect: Annotated[float | None, typer.Option(
        help="Standardised per-tuple effect of watermarked text (power statement, fraction "
             "floor).")] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the fraction interval.")] = 0.95,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip bad records instead of stopping: counted, and written to the "
        "rejects file (--rejects, or OUT.rejects.jsonl with --out), else named on stderr.")
    ] = False,
    rejects: Annotated[Path | None, typer.Option(
        help="Rejects file of --skip-bad (default OUT.rejects.jsonl).")] = None,
    max_record_bytes: Annotated[int, typer.Option(
        help="Longer records are bad records.")] = 8 << 20,
    report: ReportOption = None,
    sign: SignOption = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML page of the scan, with figures (needs "
        "matplotlib).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Checkpoint, and continue an interrupted scan from its checkpoint.")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option(
        help="Checkpoint folder of --resume (default OUT.scan-state).")] = None,
    engine: Annotated[str, typer.Option(
        help="local, or dask (a cluster: --scheduler, else a LocalCluster).")] = "local",
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address, tcp://HOST:PORT.")] = None,
    workers: Annotated[int, typer.Option(
        help="Workers of the LocalCluster (dask without --scheduler).")] = 2,
    shard_mb: Annotated[float, typer.Option(help="Shard size for the dask engine (MB).")] = 64.0,
    tokenizer: TokenizerOverrideOption = None,
    accounts: AccountsOption = None,
    account_space: AccountSpaceOption = None,
    as_json: JsonResultOption = False,
) -> None:
    """Scan a dataset for the watermark of KEY.

    Every record tested, flags at a controlled FDR, one exact test of the whole dataset (tuples
    deduplicated across records), and the estimated fraction of watermarked records.
    """
    from distillmark.verify.scan import scan as run_scan
    from distillmark.watermark.ring import load_keys

    params = dict(locals())
    for name, value in (("--alpha", alpha), ("--fdr", fdr), ("--confidence", confidence)):
        require_open_unit(name, value)
    if (field is None) == (chat is None):
        err("give one of --field PATH or --chat PATH")
        raise typer.Exit(EXIT_ERROR)
    show = not as_json and sys.stderr.isatty()
    # --skip-bad with no file for the rejects: they are named on stderr, from a scratch file
    scratch = (tempfile.TemporaryDirectory(prefix="distillmark-rejects-")
               if skip_bad and out is None and rejects is None else None)
    with errors_exit(), scratch or nullcontext():
        plan = ReportPlan.check(report, sign)
        specs = load_keys(key)
        cands = None
        if accounts is not None or account_space is not None:  # each record attributed too
            from distillmark.verify.candidates import Candidates

            cands = Candidates.given(accounts, account_space)
        with _progress(show) as progress:
            try:
                result = run_scan(
                    inputs, specs, field=field, chat=chat, fmt=fmt, out=out,
                    rejects=rejects if scratch is None else Path(scratch.name) / "rejects.jsonl",
                    skip_bad=skip_bad, max_record_bytes=max_record_bytes, fdr=fdr,
                    min_scored=min_scored, effect=effect, confidence=confidence,
                    tokenizer=tokenizer, resume=resume, state_dir=state_dir, engine=engine,
                    scheduler=scheduler, n_workers=workers,
                    shard_bytes=max(1, int(shard_mb * 1e6)), html=html, alpha=alpha,
                    progress=progress, accounts=cands)
            except KeyboardInterrupt:
                hint = "; run it again with --resume to continue" if resume else ""
                err(f"interrupted{hint}")
                raise typer.Exit(EXIT_INTERRUPTED) from None
        if scratch is not None:
            _name_rejects(Path(scratch.name) / "rejects.jsonl")
        if plan.wanted:
            plan.write(_report(result, specs, inputs, alpha, params))
    if as_json:
        typer.echo(json.dumps(result.to_dict(alpha)))
    else:
        typer.echo(_human(result, alpha, rejects_path(out, rejects, skip_bad)))
    raise typer.Exit(EXIT_FOUND if result.is_watermarked(alpha) else EXIT_NOT_FOUND)


def _report(result: Any, specs: list[Any], inputs: list[str], alpha: float,
            params: dict[str, Any]) -> dict[str, Any]:
    """scan's report: the dataset test, every input file's digest."""
    from distillmark.verify.report import path_digests

    d = result.to_dict(alpha)
    a = result.aggregate
    controls = [
        {"name": "dedup", "description": "each distinct (context, token) tuple counted once "
         "across the whole dataset", "n_repeated": a.n_repeated},
        {"name": "key-correction", "description": "p-value corrected for the keys tested "
         "(Bonferroni)", "n_keys": result.n_keys},
        {"name": "record-fdr", "description": "per-record flags at a controlled false-discovery "
         "rate (Benjamini-Hochberg)", "fdr": result.fdr, "n_flagged": result.n_flagged},
    ]
    counts = reporting.counts_of(d, skipped=result.n_records_skipped,
                                 records_read=result.n_records_read,
                                 records_scored=result.n_records_scored)
    return reporting.build("scan", inputs=path_digests(inputs), specs=specs, params=params,
                           result=d, alpha=alpha, counts=counts, controls=controls)


def rejects_path(out: Path | None, rejects: Path | None, skip_bad: bool) -> Path | None:
    """Where the records ``--skip-bad`` skipped went: ``--rejects``, else OUT.rejects.jsonl,
    else nowhere but stderr (None)."""
    if rejects is not None:
        return rejects
    if out is not None and skip_bad:
        return out.with_name(out.name + ".rejects.jsonl")
    return None


def _name_rejects(path: Path) -> None:
    """Each skipped record on stderr, ``distillmark: skipped FILE:LINE: reason``."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            info(f"distillmark: skipped {rec['location']}: {rec['reason']}")


def _human(result: Any, alpha: float, rejects: Path | None) -> str:
    a = result.aggregate
    keys = (f"best of {result.n_keys} keys: {a.key_id}, p corrected for {result.n_keys} keys"
            if result.n_keys > 1 else f"key {a.key_id}")
    if a.test == "binomial":
        score = (f"{a.statistic:,}/{a.n_scored:,} distinct tuples green, {a.score_mean:.1%}, "
                 f"{a.null_mean:.1%} expected without the key")
    else:
        score = (f"{a.n_scored:,} distinct tuples, mean score {a.score_mean:.4g}, "
                 f"{a.null_mean:.4g} expected without the key")
    p = format_pvalue(result.pvalue, result.log10_pvalue)
    lines = [f"dataset: {result.verdict(alpha)} (p = {p}; {score}; {keys})"]
    skipped = f"{result.n_records_skipped:,} skipped"
    if result.n_records_skipped:
        skipped += f" (see {rejects})" if rejects is not None else " (named on stderr)"
    lines.append(f"records: {result.n_records_read:,} read, {result.n_records_scored:,} scored, "
                 f"{skipped}; {a.n_tokens:,} tokens")
    lines.append(f"flagged: {result.n_flagged:,} records at FDR {result.fdr:g} "
                 "(Benjamini-Hochberg)")
    f = result.fraction
    fresh = "fresh " if a.test in BINOMIAL_TESTS else ""  # the fraction's units (fraction.py)
    units = f">= {f.min_units} {fresh}scored units"
    if f.is_estimated():
        lines.append(f"watermarked fraction of the {f.n_records:,} records with {units}: "
                     f"{f.estimate:.2%} ({f.confidence:.0%} CI {f.ci_low:.2%} to "
                     f"{f.ci_high:.2%}; {f.method})")
    else:
        n = f.n_records
        why = (f"no record has {units}" if n == 0 else
               f"only {n} record{'s' if n != 1 else ''} with {units}, fewer than "
               f"{MIN_FRACTION_RECORDS}: the flags test each record on its own"
               if n < MIN_FRACTION_RECORDS else
               f"the {n:,} records with {units} rule out no fraction from 0% to 100% at "
               f"{f.confidence:.0%}")
        lines.append(f"watermarked fraction: cannot be estimated ({why})")
    if not result.is_watermarked(alpha):
        det = result.detectable_fraction(alpha)
        power = (f"a watermark on {det:.2%} of the {a.n_scored:,} distinct tuples would have "
                 f"been found half of the time at alpha {alpha:g}" if det != float("inf")
                 else f"{a.n_scored:,} distinct tuples are too few to find even a fully "
                      f"watermarked dataset at alpha {alpha:g}")
        bound = (f"; at most {f.ci_high:.2%} of those {f.n_records:,} records are watermarked "
                 f"({f.confidence:.0%} upper bound)" if f.is_estimated() else "")
        lines.append(f"evidence: {power}{bound}")
    if result.accounts is not None:
        found = result.accounts.found(alpha)
        lines.append(f"accounts: {len(found)} found among {result.accounts.n_candidates:,}"
                     + "".join(f"; {a.account} ({a.n_records:,} records, p = "
                               f"{format_pvalue(a.pvalue, a.log10_pvalue)})" for a in found))
    return "\n".join(lines)


class _progress:
    """A rich progress bar on stderr (bytes, records, tokens/s, ETA), or nothing."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("scanning"), BarColumn(),
                             TextColumn("{task.fields[records]:,} records"),
                             TextColumn("{task.fields[rate]} tokens/s"),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        self._task = self._bar.add_task("scan", total=None, records=0, rate="-")
        import time

        t0 = time.monotonic()

        def update(p: Any) -> None:
            dt = max(time.monotonic() - t0, 1e-9)
            self._bar.update(self._task, total=p.total_bytes, completed=p.bytes_done,
                             records=p.records, rate=f"{p.tokens / dt:,.0f}")

        return update

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
