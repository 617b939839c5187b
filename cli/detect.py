"""``distillmark detect``: test texts for the watermark of one key or a key ring."""

from __future__ import annotations

import json
from typing import Annotated, Any

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
from distillmark.watermark import DistillmarkError, InputError, ParameterError
from distillmark.watermark.ring import KeyRing, merge_keys, read_key_file

from . import reporting
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
    HtmlOption,
    KeyRingOption,
    ReportOption,
    SignOption,
    TokenizerOverrideOption,
    json_option,
    max_bytes_option,
    min_scored_option,
)
from .reporting import ReportPlan


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
    report: ReportOption = None,
    sign: SignOption = None,
    html: HtmlOption = None,
    windows: Annotated[bool, typer.Option(
        "--windows", help="Also find marked spans inside long texts (windows of 32 to 2048 "
        "tokens, p corrected for the windows); exit 0 when a span is found.")] = False,
) -> None:
    """Test texts for the watermark of KEY with an exact p-value.

    KEY may be a key ring: every key of it, active and retired, is tried and the p-value
    corrected for their number. With --report (one input), a canonical JSON report with every
    token's status; --html shows it as a page.
    """
    params = dict(locals())
    require_open_unit("--alpha", alpha)
    names = list(files) if files else ["-"]
    with errors_exit():
        plan = ReportPlan.check(report, sign, html)
        if plan.wanted and len(names) != 1:
            raise InputError(f"--report and --html cover one text; got {len(names)} inputs "
                             "(run detect once per file)")
        read = [(k, read_key_file(k)) for k in key]
        specs = merge_keys(read)
        # a ring is always tested as one, so that its results say how many keys were tried
        ring = len(specs) > 1 or any(isinstance(r, KeyRing) for _, r in read)
        if windows and ring:
            raise ParameterError(f"--windows takes one key, not a key ring ({len(specs)} keys)")
        detector: Detector | KeyRingDetector = (
            KeyRingDetector(specs, tokenizer=tokenizer, min_scored=min_scored) if ring
            else Detector(specs[0], tokenizer=tokenizer, min_scored=min_scored))
        localiser = (Localiser(specs[0], alpha=alpha, tokenizer=tokenizer, min_scored=min_scored)
                     if windows else None)
    found = errors = 0
    for name in names:
        try:
            text = read_text(name, max_bytes)
            result: DetectionResult | KeyRingResult | LocalisationResult = (
                localiser.localise(text, prompt=prompt) if localiser is not None
                else detector.detect(text, prompt=prompt))
            if plan.wanted:
                plan.write(_report(detector, specs, text, name, result, alpha, params))
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


def _report(detector: Detector | KeyRingDetector, specs: list[Any], text: str, name: str,
            found: DetectionResult | KeyRingResult | LocalisationResult, alpha: float,
            params: dict[str, Any]) -> dict[str, Any]:
    """detect's report of one text: the test (with ``--windows``, the spans too), and every
    token's status under the key that decided (the best one of a ring)."""
    from distillmark.verify.report import text_digest
    from distillmark.verify.tokens import token_detail

    d = found.to_dict(alpha)
    result = found.detection if isinstance(found, LocalisationResult) else found
    if isinstance(detector, KeyRingDetector):
        assert isinstance(result, KeyRingResult)
        best = next(x for x in detector.detectors if x.scheme.key_id == result.best.key_id)
    else:
        best = detector
    prompt = params.get("prompt")
    detail = token_detail(best, text, prompt=prompt)
    best_result = result.best if isinstance(result, KeyRingResult) else result
    if detail.result != best_result:  # one test path: the detail is the test itself
        raise InputError(f"{input_label(name)}: the per-token test differs from the test")
    inputs = [text_digest(input_label(name), text)]
    if prompt:
        inputs.append(text_digest("--prompt", prompt))
    controls = [
        {"name": "dedup", "description": "repeated (context, token) tuples counted once",
         "n_repeated": best_result.n_repeated},
        {"name": "prompt-excluded", "description": "the prompt is context, never scored",
         "n_prompt_tokens": detail.n_prompt},
        {"name": "key-correction", "description": "p-value corrected for the keys tested "
         "(Bonferroni)", "n_keys": len(specs)},
    ]
    skipped = best_result.n_tokens - best_result.n_scored - best_result.n_repeated
    return reporting.build(
        "detect", inputs=inputs, specs=specs, params=params, result=d, alpha=alpha,
        counts=reporting.counts_of(d, skipped=skipped), controls=controls,
        details={"key_id": best_result.key_id, "texts": [
            {"name": input_label(name), **detail.to_dict()}]})
