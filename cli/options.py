"""Options that several commands take, declared once as ``typing.Annotated`` aliases.

A command writes ``alpha: AlphaOption = DEFAULT_ALPHA``: the alias carries the option's names
and help, the default stays in the command's signature. Where commands word an option's help
for what they test (tokens, tuples, cells), the option is a function of that wording, used as
``Annotated[int, min_scored_option("scored tokens")]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def key_option(help: str) -> Any:
    """``--key/-k``: the watermark key (spec file) or a key ring, told apart by its format."""
    return typer.Option("--key", "-k", help=help)


def alpha_option(help: str) -> Any:
    """``--alpha``: the significance level of a verdict."""
    return typer.Option(help=help)


def min_scored_option(units: str) -> Any:
    """``--min-scored``: below this many scored ``units`` the verdict is insufficient
    evidence."""
    return typer.Option(help=f"Fewer {units} than this is 'insufficient evidence'.")


def max_bytes_option(help: str) -> Any:
    """``--max-bytes``: the largest text input read."""
    return typer.Option(help=help)


def json_option(help: str) -> Any:
    """``--json``: print results as JSON rather than for people."""
    return typer.Option("--json", help=help)


def no_watermark_option(help: str) -> Any:
    """``--no-watermark``: the control run, without a key."""
    return typer.Option("--no-watermark", help=help)


KeyRingOption = Annotated[list[Path], key_option(
    "The watermark key (spec file) or a key ring (every key of it is tried); repeat it to test "
    "several keys (Bonferroni-corrected).")]

AlphaOption = Annotated[float, alpha_option("Significance level of the verdict.")]

TokenizerOverrideOption = Annotated[str | None, typer.Option(
    help="Tokenizer to use instead of the one recorded in the key (must match it).")]

JsonResultOption = Annotated[bool, json_option("Print the result as one JSON object.")]

ModelOption = Annotated[str | None, typer.Option(
    help="GGUF file or local Hugging Face model directory (default: the embedded "
         "SmolLM2-135M-Instruct).")]

EngineOption = Annotated[str, typer.Option(
    help="Generation engine: auto (llama.cpp for GGUF models where installed, else "
         "transformers), transformers, or llama.cpp.")]

AccountsOption = Annotated[Path | None, typer.Option(
    help="The candidate accounts: the server's accounts file, or a file of account ids (one per "
         "line, numbered by position, or NUMBER ID).")]

AccountSpaceOption = Annotated[int | None, typer.Option(
    help="Or every account number 1..N as a candidate, named by its number.")]


ReportOption = Annotated[Path | None, typer.Option(
    "--report", help="Write a report a third party can check: canonical JSON of the inputs' "
    "SHA-256, the key id and parameters (never the secret), the options, counts, test and "
    "decision (docs/reports.md).")]

SignOption = Annotated[Path | None, typer.Option(
    "--sign", help="Sign the --report with this Ed25519 private key (keygen --signing).")]

HtmlOption = Annotated[Path | None, typer.Option(
    "--html", help="Write the report's self-contained HTML view there.")]
