"""``distillmark detect``: test texts for the watermark of one key or a key ring."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distillmark.verify import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_SCORED,
    DetectionResult,
    Detector,
    KeyRingDetector,
    KeyRingResult,
)
from distillmark.verify.stats import format_pvalue
from distillmark.watermark import DistillmarkError, load_spec

from .common import (
    DEFAULT_MAX_BYTES,
    EXIT_ERROR,
    EXIT_FOUND,
    EXIT_NOT_FOUND,
    err,
    errors_exit,
    input_label,
    read_text,
    require_open_unit,
)


def _fmt_key(result: DetectionResult | KeyRingResult) -> str:
    if isinstance(result, KeyRingResult):
        b = result.best
        return (f"{b.n_tokens} tokens; best of {result.n_keys} keys: {b.key_id}, "
                f"p corrected for {result.n_keys} keys")
    return f"{result.n_tokens} tokens; key {result.key_id}"


def _fmt_score(result: DetectionResult | KeyRingResult) -> str:
    if isinstance(result, KeyRingResult):
        result = result.best
    if result.test == "binomial":
        return (f"{result.statistic}/{result.n_scored} scored tokens green, "
                f"{result.score_mean:.1%}, {result.null_mean:.1%} expected without the key")
    return (f"{result.n_scored} scored tokens, mean score {result.score_mean:.3g}, "
            f"{result.null_mean:.3g} expected without the key")


def detect(
    files: list[str] = typer.Argument(None, help="Text files to test; - or nothing: stdin."),
    key: list[Path] = typer.Option(..., "--key", "-k", help="The watermark key (spec file); "
                                   "repeat it to test several keys (Bonferroni-corrected)."),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="Significance level of the verdict."),
    min_scored: int = typer.Option(DEFAULT_MIN_SCORED, help="Fewer scored tokens than this "
                                   "is 'insufficient evidence'."),
    tokenizer: str | None = typer.Option(None, help="Tokenizer to use instead of the one "
                                            "recorded in the key (must match it)."),
    prompt: str | None = typer.Option(None, help="The prompt the text answers (context "
                                         "for its first tokens, never scored)."),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, help="Refuse inputs larger than this."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input."),
) -> None:
    """Test texts for the watermark of KEY with an exact p-value."""
    require_open_unit("--alpha", alpha)
    with errors_exit():
        specs = [load_spec(k) for k in key]
        detector: Detector | KeyRingDetector = (
            Detector(specs[0], tokenizer=tokenizer, min_scored=min_scored) if len(specs) == 1
            else KeyRingDetector(specs, tokenizer=tokenizer, min_scored=min_scored))
    names = list(files) if files else ["-"]
    found = errors = 0
    for name in names:
        try:
            result = detector.detect(read_text(name, max_bytes), prompt=prompt)
        except DistillmarkError as exc:
            msg, label = str(exc), input_label(name)
            err(msg if msg.startswith(label + ":") else f"{label}: {msg}")
            errors += 1
            continue
        except MemoryError:
            err(f"{name}: out of memory while testing it; lower --max-bytes or split the file")
            errors += 1
            continue
        found += result.is_watermarked(alpha)
        label = input_label(name)
        if as_json:
            typer.echo(json.dumps({"source": label, **result.to_dict(alpha)}))
        else:
            typer.echo(f"{label}: {result.verdict(alpha)} (p = {format_pvalue(result.pvalue, result.log10_pvalue)}; "
                       f"{_fmt_score(result)}; {_fmt_key(result)})")
    raise typer.Exit(EXIT_ERROR if errors else EXIT_FOUND if found else EXIT_NOT_FOUND)
