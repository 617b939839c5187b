"""``distillmark calibrate``: a key's realised false-positive rate on the operator's own
human-written text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from distillmark.verify import DEFAULT_MIN_SCORED
from distillmark.verify.calibrate import DEFAULT_CHUNK_CHARS, calibrate, corpus_texts
from distillmark.verify.shared import DEFAULT_MAX_SHARE, DEFAULT_MIN_TEXTS
from distillmark.watermark import InputError, load_spec

from .common import errors_exit, info, require_open_unit
from .options import TokenizerOverrideOption, json_option, key_option, min_scored_option

CALIBRATE_EXIT_HELP = ("Exit status: 0 if every level's realised rate is within its bounds, 1 "
                       "if one is exceeded (its interval lies above the level), 2 on a usage "
                       "or input error, 130 if interrupted.")


def _levels(raw: str) -> list[float]:
    try:
        levels = [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--levels must be comma-separated numbers, got {raw!r}") from None
    if not levels or not all(0.0 < a < 1.0 for a in levels):
        raise InputError(f"--levels must be numbers in (0, 1), got {raw!r}")
    return levels


def calibrate_command(
    corpus: Annotated[list[Path], typer.Argument(
        help="Files or directories of human-written text (never marked with KEY).")],
    *,
    key: Annotated[Path, key_option("The watermark key (spec file) to check.")],
    levels: Annotated[str, typer.Option(
        help="Comma-separated levels whose realised rate is measured.")] = "1e-2,1e-3,1e-4,1e-5",
    confidence: Annotated[float, typer.Option(
        help="Confidence of the intervals, simultaneous over the levels.")] = 0.95,
    chunk_chars: Annotated[int, typer.Option(
        help="Files are cut into line-aligned texts of about this many characters.")
    ] = DEFAULT_CHUNK_CHARS,
    max_texts: Annotated[int | None, typer.Option(
        help="Test at most this many texts (the first ones).")] = None,
    min_scored: Annotated[int, min_scored_option("scored tuples")] = DEFAULT_MIN_SCORED,
    shared: Annotated[bool, typer.Option(
        "--shared/--no-shared",
        help="Leave out the tuples found in many of the corpus's texts, as a corpus scan "
             "should (--no-shared: score every tuple, as detect does one text).")] = True,
    min_texts: Annotated[int, typer.Option(
        help="Leave out the tuples found in at least this many texts.")] = DEFAULT_MIN_TEXTS,
    max_share: Annotated[float | None, typer.Option(
        help="...or, when larger, in at least this share of the texts.")
    ] = DEFAULT_MAX_SHARE,
    tokenizer: TokenizerOverrideOption = None,
    as_json: Annotated[bool, json_option("Print the result as one JSON object.")] = False,
) -> None:
    """Measure how often KEY's test flags human-written text at each level, with exact
    (Clopper-Pearson) bounds: the key's realised false-positive rate on this kind of text."""
    require_open_unit("--confidence", confidence)
    with errors_exit():
        if max_texts is not None and max_texts < 1:
            raise InputError(f"--max-texts must be >= 1, got {max_texts}")
        spec = load_spec(key)
        wanted = _levels(levels)
        texts = corpus_texts(corpus, chunk_chars=chunk_chars, max_texts=max_texts)
        if not texts:
            raise InputError("the corpus holds no text long enough to test "
                             "(300 non-blank characters or more)")
        info(f"testing {len(texts)} texts", quiet=as_json)
        result = calibrate(spec, texts, levels=wanted, confidence=confidence,
                           min_scored=min_scored, leave_out_shared=shared,
                           max_share=max_share, min_texts=min_texts, tokenizer=tokenizer)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        sh = result.shared
        left = (f"; {sh['n_left_out']} tuples found in >= {sh['threshold']} texts left out"
                if sh else "; every tuple scored")
        typer.echo(f"key {result.key_id} ({result.scheme}): {result.n_tests} of "
                   f"{result.n_texts} texts tested, {result.mean_scored:.0f} scored tuples "
                   f"each on average{left}")
        for r in result.levels:
            mark = "EXCEEDED" if r.exceeded() else "ok"
            typer.echo(f"  alpha {r.alpha:g}: {r.n_below}/{r.n_tests} = {r.rate:.3g} "
                       f"[{r.lower:.3g}, {r.upper:.3g}] {mark}")
    raise typer.Exit(1 if result.exceeded() else 0)


__all__ = ["CALIBRATE_EXIT_HELP", "calibrate_command"]
