"""``distillmark report``: check a report's signature, show a report as a page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distillmark.watermark import DistillmarkError

from .common import EXIT_ERROR, err, errors_exit

REPORT_EXIT_HELP = ("Exit status of verify: 0 if the signature is valid, 1 if it is not (the "
                    "report was changed, signed by another key, or not signed), 2 if the "
                    "report or the key cannot be read.")

report_app = typer.Typer(help="Check and show reports written by --report.",
                         no_args_is_help=True, epilog=REPORT_EXIT_HELP)


@report_app.command("verify", epilog=REPORT_EXIT_HELP)
def verify(
    file: Annotated[Path, typer.Argument(help="The report (JSON, from --report).")],
    public_key: Annotated[Path, typer.Option(
        "--public-key", help="The signer's public key (PEM, FILE.pub of keygen --signing).")],
) -> None:
    """Check a signed report against the public key you trust."""
    from distillmark.verify.report import read_report
    from distillmark.verify.signing import check_signature, load_public_key

    try:
        report = read_report(file)
        key = load_public_key(public_key)
    except DistillmarkError as exc:
        err(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    check = check_signature(report, key)
    if check.valid:
        typer.echo(f"{file}: {check.reason} ({report.get('command')}, "
                   f"{(report.get('test') or {}).get('decision')})")
        raise typer.Exit(0)
    typer.echo(f"{file}: INVALID: {check.reason}")
    raise typer.Exit(1)


@report_app.command("html")
def html(
    file: Annotated[Path, typer.Argument(help="The report (JSON, from --report).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the page.")],
) -> None:
    """Write a report's self-contained HTML view (no script, no external asset)."""
    from distillmark.verify.report import read_report
    from distillmark.verify.report_html import write_html

    with errors_exit():
        write_html(out, read_report(file))
    typer.echo(f"wrote {out}")
