"""``distillmark audit``: the open-model test, when the suspect model's weights are at hand."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from distillmark.verify import DEFAULT_ALPHA, DEFAULT_MIN_SCORED
from distillmark.verify.stats import format_pvalue
from distillmark.watermark import InputError
from distillmark.watermark.files import JSONProblem, parse_json
from distillmark.watermark.ring import load_keys

from . import reporting
from .common import (
    DEFAULT_MAX_BYTES,
    EXIT_FOUND,
    EXIT_NOT_FOUND,
    errors_exit,
    info,
    input_label,
    read_text,
    require_open_unit,
)
from .options import (
    AlphaOption,
    JsonResultOption,
    KeyRingOption,
    ReportOption,
    SignOption,
    max_bytes_option,
    min_scored_option,
)

DEFAULT_GENERATE = 64


def _texts(name: str, max_bytes: int) -> list[str]:
    """A text file, or JSON Lines with a ``text`` field (``name:line`` on a broken line)."""
    raw = read_text(name, max_bytes)
    label = input_label(name)
    if not name.endswith(".jsonl"):
        return [raw]
    out = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line, line=True)
        except JSONProblem as exc:
            raise InputError(f"{label}:{i}: {exc}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise InputError(f"{label}:{i}: each line needs a string field 'text'")
        out.append(rec["text"])
    return out


def audit(
    model: Annotated[str, typer.Option(
        "--model", "-m", help="The suspect model: a Hugging Face model directory or a GGUF file "
        "(required).")],
    key: KeyRingOption,
    text: Annotated[str | None, typer.Option(
        "--text", help="Contexts to read the model on: a text file, or .jsonl with a 'text' "
        "field per line; must not carry the watermark. Default: --generate.")] = None,
    generate: Annotated[int | None, typer.Option(
        "--generate", help=f"Read the model on N sequences it samples itself (default "
        f"{DEFAULT_GENERATE} when no --text).")] = None,
    context_len: Annotated[int, typer.Option(
        help="Tokens per context sequence (--text: cut to this; --generate: sampled length).")
    ] = 256,
    mode: Annotated[str, typer.Option(
        help="distribution (probability mass on green cells, Chernoff bound; more power) or "
             "reading (argmax/top-k tokens, exact binomial).")] = "distribution",
    top_k: Annotated[int, typer.Option(
        help="distribution: tokens per context read; reading: tokens per context scored is "
             "--reading-k.")] = 64,
    reading_k: Annotated[int, typer.Option(
        help="reading: tokens per context scored (1 = argmax).")] = 1,
    min_prob: Annotated[float, typer.Option(
        help="reading: score only those of the --reading-k tokens with at least this "
             "probability.")] = 0.0,
    weighting: Annotated[str, typer.Option(
        help="distribution: coverage (a cell weighs the chance that one sampled token per "
             "context draws it: the black-box test's statistic without its sampling noise), "
             "window (each distinct window of the key weighs one), context (each distinct "
             "context weighs one), or auto: coverage, window for a key with h = 0.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Random seed of --generate.")] = 0,
    alpha: AlphaOption = DEFAULT_ALPHA,
    min_scored: Annotated[int, min_scored_option("scored cells")] = DEFAULT_MIN_SCORED,
    max_bytes: Annotated[int, max_bytes_option(
        "Refuse a --text larger than this.")] = DEFAULT_MAX_BYTES,
    as_json: JsonResultOption = False,
    report: ReportOption = None,
    sign: SignOption = None,
) -> None:
    """Test a model's weights for the watermark of KEY.

    Do its next-token distributions favour the key's green tokens more than chance allows? A
    negative result is not proof that the model never saw watermarked text.
    """
    params = dict(locals())
    require_open_unit("--alpha", alpha)
    with errors_exit():
        from distillmark.verify import audit as au

        plan = reporting.ReportPlan.check(report, sign)

        if text is not None and generate is not None:
            raise InputError("give --text FILE or --generate N, not both")
        if mode not in au.AUDIT_MODES:
            raise InputError(f"--mode must be one of {', '.join(au.AUDIT_MODES)}, got {mode!r}")
        if weighting != "auto" and weighting not in au.WEIGHTINGS:
            raise InputError(f"--weighting must be one of auto, {', '.join(au.WEIGHTINGS)}, "
                             f"got {weighting!r}")
        specs = load_keys(key)
        texts = _texts(text, max_bytes) if text is not None else None
        if texts is not None:
            contexts = au.text_contexts(texts, specs[0], context_len=context_len,
                                        source="<stdin>" if text == "-" else str(text))
            for s in specs[1:]:  # a ring: the text must be free of every key's mark
                au.text_contexts(texts, s, context_len=context_len, source=str(text))
        info(f"loading {model}…", as_json)
        lm = au.load_suspect(model, specs, device=device)
        if texts is None:
            n = generate if generate is not None else DEFAULT_GENERATE
            info(f"sampling {n} sequences of {context_len} tokens from the model…", as_json)
            contexts = au.generate_contexts(lm, n, length=context_len, seed=seed,
                                            batch_size=batch_size)
        info(f"reading the model over {sum(c.size for c in contexts)} context tokens…",
             as_json)
        readings = au.read_model(lm, contexts, top_k=max(top_k, reading_k),
                                 batch_size=batch_size)
        result, _ = au.audit_specs(readings, specs, mode=mode, top_k=top_k,
                                   reading_k=reading_k, min_prob=min_prob,
                                   weighting=weighting, min_scored=min_scored)
        if plan.wanted:
            plan.write(_report(result, specs, model, text, alpha, params))
    if as_json:
        typer.echo(json.dumps({"source": model, **result.to_dict(alpha)}))
    else:
        p = format_pvalue(result.pvalue, result.log10_pvalue)
        if result.mode == "reading":
            what = "green share of the predicted cells"
        elif result.weighting == "coverage":
            what = "green share of the cells one sampled pass draws"
        else:
            what = "green share of the probability mass"
        keys = (f"best of {result.n_keys} keys: {result.key_id}, p corrected"
                if result.n_keys > 1 else f"key {result.key_id}")
        typer.echo(f"{model}: {result.verdict(alpha)} (p = {p}; {result.mode} test; {what} "
                   f"{result.score_mean:.1%}, {result.null_mean:.1%} expected without the key; "
                   f"{result.n_scored} cells from {result.n_contexts} contexts; {keys})")
    raise typer.Exit(EXIT_FOUND if result.is_watermarked(alpha) else EXIT_NOT_FOUND)


def _report(result: Any, specs: list[Any], model: str, text: str | None, alpha: float,
            params: dict[str, Any]) -> dict[str, Any]:
    """audit's report: the test of the weights, and the digests of the model's files."""
    from distillmark.verify.report import path_digests

    inputs = path_digests([model] + ([text] if text is not None and text != "-" else []))
    d = {"source": model, **result.to_dict(alpha)}
    controls = [
        {"name": "dedup", "description": "a context whose prefix was already read is read once",
         "n_repeated": result.n_repeated},
        {"name": "key-correction", "description": "p-value corrected for the keys tested "
         "(Bonferroni)", "n_keys": result.n_keys},
    ]
    if text is not None:
        controls.append({"name": "contexts-unmarked", "description": "the --text contexts do "
                         "not carry the key's watermark (checked before reading the model)"})
    counts = reporting.counts_of(d, contexts=result.n_contexts)
    return reporting.build("audit", inputs=inputs, specs=specs, params=params, result=d,
                           alpha=alpha, counts=counts, controls=controls)
