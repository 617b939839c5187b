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
from distillmark.verify.stats import format_pvalue
from distillmark.watermark import DistillmarkError
from distillmark.watermark.ring import KeyRing, merge_keys, read_key_file

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
) -> None:
    """Test texts for the watermark of KEY with an exact p-value.

    KEY may be a key ring: every key of it, active and retired, is tried and the p-value
    corrected for their number.
    """
    require_open_unit("--alpha", alpha)
    with errors_exit():
        read = [(k, read_key_file(k)) for k in key]
        specs = merge_keys(read)
        # a ring is always tested as one, so that its results say how many keys were tried
        ring = len(specs) > 1 or any(isinstance(r, KeyRing) for _, r in read)
        detector: Detector | KeyRingDetector = (
            KeyRingDetector(specs, tokenizer=tokenizer, min_scored=min_scored) if ring
            else Detector(specs[0], tokenizer=tokenizer, min_scored=min_scored))
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
            p = format_pvalue(result.pvalue, result.log10_pvalue)
            typer.echo(f"{label}: {result.verdict(alpha)} (p = {p}; {_fmt_score(result)}; "
                       f"{_fmt_key(result)})")
    raise typer.Exit(EXIT_ERROR if errors else EXIT_FOUND if found else EXIT_NOT_FOUND)
