"""``distillmark attribute``: which account was each text or record served to?"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from distillmark.verify import DEFAULT_ALPHA, DEFAULT_MIN_SCORED
from distillmark.verify.stats import format_pvalue
from distillmark.watermark.ring import load_keys

from . import reporting
from .common import (
    DEFAULT_MAX_BYTES,
    EXIT_FOUND,
    EXIT_NOT_FOUND,
    errors_exit,
    info,
    read_text,
    require_open_unit,
)
from .options import (
    AccountsOption,
    AccountSpaceOption,
    AlphaOption,
    ReportOption,
    SignOption,
    TokenizerOverrideOption,
    json_option,
    key_option,
    min_scored_option,
)

ATTRIBUTE_EXIT_HELP = ("Exit status: 0 if some account was named, 1 if none was (or the "
                       "evidence was insufficient), 2 on a usage or input error, 130 if "
                       "interrupted.")


def _human(r: Any, alpha: float, in_log: bool | None) -> str:
    p = format_pvalue(r.pvalue, r.log10_pvalue)
    keys = f" and {r.n_keys} keys (best: {r.key_id})" if r.n_keys > 1 else ""
    cells = (f"{r.statistic}/{r.n_scored} cells green for it, {r.null_mean:.0%} expected; "
             f"p corrected for {r.n_candidates:,} accounts{keys}")
    if r.is_watermarked(alpha):
        logged = {None: "", True: "; in the request log", False: "; NOT in the request log"}
        return f"{r.source}: attributed to {r.candidate} (p = {p}; {cells}{logged[in_log]})"
    if not r.is_sufficient():
        return f"{r.source}: insufficient evidence ({r.n_scored} cells scored)"
    return f"{r.source}: not attributed (best {r.candidate}, p = {p}; {cells})"


def _summary_lines(run: Any, alpha: float) -> list[str]:
    ds = run.dataset
    lines = [(f"records: {run.n_read:,} read, {run.n_skipped:,} skipped, "
              f"{run.n_attributed:,} attributed at alpha {alpha:g}")]
    found = ds.found(alpha)
    if not found:
        lines.append(f"dataset: no account found among {ds.n_candidates:,}")
    for a in found:
        lines.append(f"dataset: {a.account} found (p = {format_pvalue(a.pvalue, a.log10_pvalue)}"
                     f"; {a.statistic}/{a.n_scored} held-out cells of its {a.n_records:,} "
                     f"records green for it" + (f"; key {a.key_id}" if ds.n_keys > 1 else "")
                     + ")")
    return lines


def attribute(
    inputs: Annotated[list[str], typer.Argument(
        help="Text files ('-' is stdin), or datasets as scan reads them: JSON Lines, Parquet, "
             "CSV, datasets folders.")],
    key: Annotated[Path, key_option(
        "The master key (it must have an account layer), or a key ring: every key of it with an "
        "account layer is tried (Bonferroni-corrected).")],
    accounts: AccountsOption = None,
    account_space: AccountSpaceOption = None,
    field: Annotated[str | None, typer.Option(
        help="Dotted path of the text in each record (e.g. response, output.text; default "
             "text, which is also what a text file is).")] = None,
    chat: Annotated[str | None, typer.Option(
        help="Dotted path of OpenAI-style chat messages: assistant turns are attributed.")
    ] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="Input format: auto (from file names), jsonl, parquet, csv, text, "
                         "hf.")] = "auto",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write per-record results there (JSON Lines, atomically); stdout "
                            "then shows the summary only.")] = None,
    log: Annotated[Path | None, typer.Option(
        "--log", help="The server's request log: say whether each attributed text is there.")
    ] = None,
    alpha: AlphaOption = DEFAULT_ALPHA,
    min_scored: Annotated[int, min_scored_option("distinct scored cells")] = DEFAULT_MIN_SCORED,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip bad records (counted and named on stderr) instead of stopping.")
    ] = False,
    max_record_bytes: Annotated[int, typer.Option(help="Longer records are bad records.")
                                ] = 8 << 20,
    tokenizer: TokenizerOverrideOption = None,
    as_json: Annotated[bool, json_option(
        "JSON Lines: one object per record (detect's keys, plus account), then the summary.")
    ] = False,
    report: ReportOption = None,
    sign: SignOption = None,
) -> None:
    """Name the account each text was served to, with a p-value corrected for every candidate
    account; then the accounts a whole dataset points to.
    """
    from distillmark.verify.attribute import Attributor
    from distillmark.verify.attribute_run import attribute_inputs, logged_answers
    from distillmark.verify.candidates import Candidates
    from distillmark.watermark.files import atomic_write, check_writable

    params = dict(locals())
    require_open_unit("--alpha", alpha)
    named_records: list[dict[str, Any]] = []
    with errors_exit(), tempfile.TemporaryDirectory(prefix="distillmark-attribute-") as tmp:
        if out is not None:  # refused now, not after every record is attributed
            check_writable(out, what=f"--out {out}")
        plan = reporting.ReportPlan.check(report, sign)
        specs = load_keys(key)
        # a ring's keys without an account layer name no account; with none, say so (Attributor)
        layered = [s for s in specs if s.accounts is not None] or specs[:1]
        cands = Candidates.given(accounts, account_space)
        att = [Attributor(s, cands, tokenizer=tokenizer, min_scored=min_scored) for s in layered]
        logged = logged_answers(log) if log is not None else None
        paths = list(inputs)
        stdin_file = Path(tmp) / "stdin.txt"
        if "-" in paths:
            stdin_file.write_text(read_text("-", DEFAULT_MAX_BYTES), encoding="utf-8")
            paths[paths.index("-")] = str(stdin_file)

        def emit(records: list[Any], sink: IO[str] | None) -> None:
            for rec in records:
                r = rec.result
                if str(stdin_file) in r.source:
                    r = replace(r, source=r.source.replace(str(stdin_file), "<stdin>"))
                d = r.to_dict(alpha)
                if logged is not None:
                    d["in_log"] = rec.in_log
                if plan.wanted and r.is_watermarked(alpha):
                    named_records.append(d)
                if sink is not None:
                    sink.write(json.dumps(d) + "\n")
                elif as_json:
                    typer.echo(json.dumps(d))
                else:
                    typer.echo(_human(r, alpha, rec.in_log))

        quiet = as_json or not sys.stderr.isatty()
        progress = None if quiet else (lambda n: info(f"\r{n:,} records", False))
        kwargs: dict[str, Any] = {
            "field_path": field if field or chat else "text", "chat": chat, "fmt": fmt,
            "skip_bad": skip_bad, "max_record_bytes": max_record_bytes, "alpha": alpha,
            "log": logged, "progress": progress}
        if out is not None:
            with atomic_write(out, what=f"--out {out}") as fh:
                run = attribute_inputs(paths, att, on_records=lambda b: emit(b, fh), **kwargs)
        else:
            run = attribute_inputs(paths, att, on_records=lambda b: emit(b, None), **kwargs)
        for loc, reason in run.rejects:
            info(f"distillmark: skipped {loc}: {reason}")
        if plan.wanted:
            from distillmark.verify.report import path_digests

            digests = path_digests([*paths, *([log] if log is not None else [])])
            for dg in digests:
                if dg["name"] == str(stdin_file):
                    dg["name"] = "<stdin>"
            plan.write(_report(run, layered, digests, named_records, alpha, params))
    assert run.dataset is not None
    if as_json:
        summary = {"summary": True, "n_records": run.n_read, "n_skipped": run.n_skipped,
                   "n_attributed": run.n_attributed, **run.dataset.to_dict(alpha)}
        typer.echo(json.dumps(summary))
    else:
        for line in _summary_lines(run, alpha):
            typer.echo(line)
    named = run.n_attributed > 0 or bool(run.dataset.found(alpha))
    raise typer.Exit(EXIT_FOUND if named else EXIT_NOT_FOUND)


def _report(run: Any, specs: list[Any], inputs: list[dict[str, Any]], named: list[dict[str, Any]],
            alpha: float, params: dict[str, Any]) -> dict[str, Any]:
    """attribute's report: the dataset's best account (its test corrected for every
    candidate), the records attributed, every input's digest."""
    from distillmark.verify.report import pvalue_string

    ds = run.dataset
    found = [a.account for a in ds.found(alpha)]
    best = ds.accounts[0] if ds.accounts else None
    decision = (f"accounts found: {', '.join(found)}" if found else
                f"{run.n_attributed} records attributed" if run.n_attributed else
                "no account named")
    test = {"name": "binomial (account layer, held-out cells)",
            "statistic": best.statistic if best else 0,
            "pvalue": pvalue_string(best.pvalue, best.log10_pvalue) if best else "1.0",
            "log10_pvalue": best.log10_pvalue if best else 0.0, "alpha": alpha,
            "decision": decision, "n_tests": ds.n_candidates * ds.n_keys,
            "correction": "bonferroni"}
    result = {"n_records": run.n_read, "n_skipped": run.n_skipped,
              "n_attributed": run.n_attributed, **ds.to_dict(alpha),
              "records_attributed": named}
    counts = {"tokens": 0, "scored": best.n_scored if best else 0, "repeated": 0,
              "skipped": run.n_skipped, "records_read": run.n_read,
              "records_attributed": run.n_attributed}
    controls = [{"name": "candidate-correction", "description": "p-values corrected for every "
                 "candidate account (Bonferroni)", "n_candidates": ds.n_candidates},
                {"name": "held-out-cells", "description": "accounts selected on one half of "
                 "the cells, tested on the other half", "select_alpha": ds.select_alpha}]
    return reporting.build("attribute", inputs=inputs, specs=specs, params=params,
                           result=result, alpha=alpha, counts=counts, controls=controls,
                           test=test)
