"""``distillmark detect``: test texts for the watermark of one key or a key ring."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from distillmark.verify import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_SCORED,
    DetectionResult,
    Detector,
    KeyRingDetector,
    KeyRingResult,
)
from distillmark.verify.localise import LocalisationResult, Localiser
from distillmark.verify.stats import format_pvalue
from distillmark.watermark import DistillmarkError, ParameterError, load_spec

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
from .options import (
    AlphaOption,
    KeyRingOption,
    TokenizerOverrideOption,
    json_option,
    max_bytes_option,
    min_scored_option,
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


def _fmt_spans(result: LocalisationResult) -> list[str]:
    """One line per span, or one saying none was found."""
    w = f"{result.n_windows:,} windows"
    if not result.n_windows:
        return [f"  no marked span (no window has {result.detection.min_scored} scored tokens)"]
    if not result.spans:
        return [f"  no marked span (p corrected for {w})"]
    return [f"  span {i}: characters {s.start}-{s.end} (tokens {s.token_start}-{s.token_end}), "
            f"p = {format_pvalue(s.pvalue, s.log10_pvalue)} corrected for {w}; "
            f"{s.statistic}/{s.scored} scored tokens green"
            for i, s in enumerate(result.spans, 1)]


def detect(
    files: Annotated[list[str] | None, typer.Argument(
        help="Text files to test; - or nothing: stdin.")] = None,
    *,
    key: KeyRingOption,
    alpha: AlphaOption = DEFAULT_ALPHA,
    min_scored: Annotated[int, min_scored_option("scored tokens")] = DEFAULT_MIN_SCORED,
    tokenizer: TokenizerOverrideOption = None,
    prompt: Annotated[str | None, typer.Option(
        help="The prompt the text answers (context for its first tokens, never scored).")] = None,
    max_bytes: Annotated[int, max_bytes_option(
        "Refuse inputs larger than this.")] = DEFAULT_MAX_BYTES,
    as_json: Annotated[bool, json_option("One JSON object per input.")] = False,
    windows: Annotated[bool, typer.Option(
        "--windows", help="Also find marked spans inside long texts (windows of 32 to 2048 "
        "tokens, p corrected for the windows); exit 0 when a span is found.")] = False,
) -> None:
    """Test texts for the watermark of KEY with an exact p-value."""
    require_open_unit("--alpha", alpha)
    with errors_exit():
        specs = [load_spec(k) for k in key]
        if windows and len(specs) > 1:
            raise ParameterError(f"--windows takes one --key, got {len(specs)}")
        detector: Detector | KeyRingDetector = (
            Localiser(specs[0], alpha=alpha, tokenizer=tokenizer, min_scored=min_scored)
            if windows else
            Detector(specs[0], tokenizer=tokenizer, min_scored=min_scored) if len(specs) == 1
            else KeyRingDetector(specs, tokenizer=tokenizer, min_scored=min_scored))
    names = list(files) if files else ["-"]
    found = errors = 0
    for name in names:
        try:
            text = read_text(name, max_bytes)
            result: DetectionResult | KeyRingResult | LocalisationResult = (
                detector.localise(text, prompt=prompt) if isinstance(detector, Localiser)
                else detector.detect(text, prompt=prompt))
        except DistillmarkError as exc:
            msg, label = str(exc), input_label(name)
            err(msg if msg.startswith(label + ":") else f"{label}: {msg}")
            errors += 1
            continue
        except MemoryError:
            err(f"{name}: out of memory while testing it; lower --max-bytes or split the file")
            errors += 1
            continue
        whole = result.detection if isinstance(result, LocalisationResult) else result
        found += (result.found() if isinstance(result, LocalisationResult)
                  else result.is_watermarked(alpha))
        label = input_label(name)
        if as_json:
            typer.echo(json.dumps({"source": label, **result.to_dict(alpha)}))
        else:
            p = format_pvalue(result.pvalue, result.log10_pvalue)
            typer.echo(f"{label}: {result.verdict(alpha)} (p = {p}; {_fmt_score(whole)}; "
                       f"{_fmt_key(whole)})")
            if isinstance(result, LocalisationResult):
                typer.echo("\n".join(_fmt_spans(result)))
    raise typer.Exit(EXIT_ERROR if errors else EXIT_FOUND if found else EXIT_NOT_FOUND)
