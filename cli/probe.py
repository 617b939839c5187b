"""``distillmark probe``: was this model (behind an API) trained on our watermarked answers?"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from distillmark.verify import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, Detector
from distillmark.verify.probe import (
    DEFAULT_MAX_ANSWER_BYTES,
    ProbeResult,
    SamplingParams,
    probe,
    read_reference,
)
from distillmark.verify.prompts import builtin_prompts, prompts_from_log, read_prompts
from distillmark.verify.stats import format_pvalue
from distillmark.watermark import InputError
from distillmark.watermark.ring import load_keys

from . import reporting
from .common import EXIT_FOUND, EXIT_NOT_FOUND, errors_exit, info, require_open_unit
from .options import (
    AlphaOption,
    KeyRingOption,
    ReportOption,
    SignOption,
    TokenizerOverrideOption,
    json_option,
    min_scored_option,
)
from .reporting import ReportPlan

PROBE_EXIT_HELP = ("Exit status: 0 if the watermark was found in the answers, 1 if not (or the "
                   "evidence was insufficient), 2 on a usage or input error or an endpoint that "
                   "cannot be used, 130 if interrupted (answers already received stay in "
                   "--cache: rerun to resume).")


def render(result: ProbeResult, alpha: float) -> str:
    """The human report: verdict line, evidence line, cost line, and a power statement."""
    a, q = result.answers.aggregate, result.queries
    green = (f"{a.statistic:g}/{a.n_scored} scored tuples green, {a.score_mean:.1%}, "
             f"{a.null_mean:.1%} expected without the key" if a.test == "binomial" else
             f"{a.n_scored} scored tuples, mean score {a.score_mean:.3g}, {a.null_mean:.3g} "
             "expected without the key")
    keys = (f"best of {result.n_keys} keys: {a.key_id}, p corrected for {result.n_keys} keys"
            if result.n_keys > 1 else f"key {a.key_id}")
    head = (f"{result.model} at {result.endpoint}: {result.verdict(alpha)} "
            f"(p = {format_pvalue(result.pvalue, result.log10_pvalue)}; {green}; {keys})")
    asked = (f"{q.n_prompts} prompts" if q.n_samples == 1 else
             f"{q.n_wanted} ({q.n_prompts} prompts x {q.n_samples} samples)")
    cost = (f"answers: {result.answers.n_answers} of {asked} "
            f"({q.n_fetched} fetched, {q.n_cached} from the cache, {q.n_failed} unanswered, "
            f"{result.answers.n_empty} empty); {q.n_queries} requests sent, {q.n_retries} "
            "of them retries" + ("; the request budget ran out" if q.budget_exhausted else ""))
    tuples = (f"tuples: {a.n_tokens} answer tokens, {a.n_scored} distinct tuples scored, "
              f"{a.n_repeated} repeats, {result.answers.n_prompt_excluded} in prompts"
              + (f", {a.n_filtered} outside the reference ({a.n_reference} reference tuples)"
                 if a.n_reference else ""))
    lines = [head, cost, tuples]
    if result.answers.reference_log10_pvalue < -3:
        lines.append(f"warning: the reference carries the key's watermark (p = "
                     f"1e{result.answers.reference_log10_pvalue:.1f}): this p-value is not "
                     "exact, it can find the watermark in a model that never saw it")
    if not result.is_watermarked(alpha):
        frac = result.detectable_fraction(alpha)
        if math.isfinite(frac):
            lines.append(f"power: at this level the test finds, one time in two, a mark "
                         f"carried by {frac:.1%} of the scored tuples; a weaker mark needs "
                         "more answers (not found is not proof of innocence)")
        else:
            lines.append(f"power: too few tuples ({a.n_scored}) to find even a fully "
                         "watermarked model at this level; ask more prompts")
    return "\n".join(lines)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("probing", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=None) as bar:
        task = bar.add_task("probe", total=total)

        def update(done: int, _total: int) -> None:
            bar.update(task, completed=done)

        yield update


def probe_command(
    endpoint: Annotated[str, typer.Option(
        help="OpenAI-compatible server: http://HOST:PORT, its /v1 URL or the full "
             "/v1/chat/completions URL.")],
    model: Annotated[str, typer.Option(help="Model id to ask for.")],
    key: KeyRingOption,
    api_key_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the API key (sent as Bearer; never printed).")
    ] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="Prompts: one per line, or JSONL with a 'prompt' field (default: the built-in "
             "set).")] = None,
    prompts_from: Annotated[Path | None, typer.Option(
        help="Ask the prompts of a server's request log (serve --log): what a campaign asked.")
    ] = None,
    account: Annotated[str | None, typer.Option(
        help="With --prompts-from: only this account's prompts.")] = None,
    n_prompts: Annotated[int, typer.Option(
        help="How many built-in prompts to ask (without --prompts).")] = 200,
    samples: Annotated[int, typer.Option(
        help="Answers per prompt, asked in one request (OpenAI's n; one request per answer "
             "where the endpoint returns fewer).")] = 1,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each query.")] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of each query.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="top_p of each query.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Send seed + i with the i-th prompt.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 4,
    max_requests: Annotated[int | None, typer.Option(
        help="Request budget of this run, retries included (cached answers are free).")
    ] = None,
    retries: Annotated[int, typer.Option(
        help="Retries after a 429, a 5xx, a timeout, a dropped connection or a malformed or "
             "oversized answer (exponential "
             "backoff).")] = 5,
    timeout: Annotated[float, typer.Option(
        help="Seconds for one whole answer, from the request to its last byte.")] = 120.0,
    max_answer_bytes: Annotated[int, typer.Option(
        help="Largest answer read; a larger one is dropped as it streams in.")
    ] = DEFAULT_MAX_ANSWER_BYTES,
    backoff: Annotated[float, typer.Option(
        help="First retry delay in seconds (doubles each time).")] = 0.5,
    cache: Annotated[Path | None, typer.Option(
        help="Directory caching every answer: an interrupted probe resumes without "
             "re-paying.")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Reference corpus (JSONL with a 'text' field, or a text file): score only its "
             "tuples (the supervised test). Exact only if it does not carry the key: use the "
             "teacher's answers generated without the watermark.")] = None,
    allow_marked_reference: Annotated[bool, typer.Option(
        "--allow-marked-reference", help="Accept a --reference that carries the key's "
        "watermark (the p-value is then biased toward 'watermarked').")] = False,
    tokenizer: TokenizerOverrideOption = None,
    alpha: AlphaOption = DEFAULT_ALPHA,
    min_scored: Annotated[int, min_scored_option("scored tuples")] = DEFAULT_MIN_SCORED,
    as_json: Annotated[bool, json_option(
        "One JSON object: detect's keys plus the probe's (n_queries, n_cached, ...).")] = False,
    report: ReportOption = None,
    sign: SignOption = None,
) -> None:
    """Query a suspect model through its API and test all its answers for KEY's watermark.

    Repeat --key, or give a key ring, to test several keys on the same answers
    (Bonferroni-corrected). The answers
    are re-tokenised with the key's tokenizer (valid whatever tokenizer the suspect
    uses); repeated (context, token) tuples count once across all answers; tuples found in the
    prompts are left out; the p-value is exact.
    """
    params = dict(locals())
    require_open_unit("--alpha", alpha)
    with errors_exit():
        plan = ReportPlan.check(report, sign)
        api_key = None
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise InputError(f"environment variable {api_key_env} (--api-key-env) is not "
                                 "set or empty")
        if prompts is not None and prompts_from is not None:
            raise InputError("give --prompts or --prompts-from, not both")
        if account is not None and prompts_from is None:
            raise InputError("--account selects prompts of --prompts-from LOG")
        if prompts is not None:
            asked = read_prompts(prompts)
        elif prompts_from is not None:
            asked = prompts_from_log(prompts_from, account=account)
        else:
            asked = builtin_prompts(n_prompts)
        detectors = [Detector(s, tokenizer=tokenizer, min_scored=min_scored)
                     for s in load_keys(key)]
        refs = ([read_reference(reference, d) for d in detectors] if reference is not None
                else None)
        try:
            sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                      top_p=top_p, seed=seed)
        except ValueError as exc:
            raise InputError(str(exc).replace("`", "--", 1).replace("`", "", 1)) from None
        if samples < 1:
            raise InputError(f"--samples must be >= 1, got {samples}")
        show = not as_json and sys.stderr.isatty()
        with _progress(show, len(asked) * samples) as progress:
            result = probe(endpoint, model, detectors, asked, reference=refs,
                           min_scored=min_scored, api_key=api_key, sampling=sampling,
                           allow_marked_reference=allow_marked_reference, samples=samples,
                           concurrency=concurrency, max_requests=max_requests,
                           cache=cache, retries=retries, timeout=timeout, backoff=backoff,
                           max_answer_bytes=max_answer_bytes,
                           progress=progress)
        if plan.wanted:
            plan.write(_report(result, [d.spec for d in detectors], asked, alpha, params))
    if result.queries.n_failed and not as_json:
        info(f"{result.queries.n_failed} of {result.queries.n_wanted} answers were not obtained"
             + (" (the request budget ran out)" if result.queries.budget_exhausted else ""))
    if as_json:
        typer.echo(json.dumps(result.to_dict(alpha)))
    else:
        typer.echo(render(result, alpha))
    raise typer.Exit(EXIT_FOUND if result.is_watermarked(alpha) else EXIT_NOT_FOUND)


def _report(result: ProbeResult, specs: list[Any], asked: list[str], alpha: float,
            params: dict[str, Any]) -> dict[str, Any]:
    """probe's report: the pooled test of the answers, the prompts asked and the files read."""
    from distillmark.verify.report import path_digests, text_digest

    inputs = [text_digest("prompts asked", "\n".join(asked))]
    for opt in ("prompts", "prompts_from", "reference", "cache"):
        if params.get(opt) is not None:
            inputs += path_digests([params[opt]])
    d = result.to_dict(alpha)
    a, q = result.answers, result.queries
    controls = [
        {"name": "dedup", "description": "each distinct (context, token) tuple counted once "
         "across all answers", "n_repeated": a.aggregate.n_repeated},
        {"name": "prompt-tuples-excluded", "description": "tuples found in the prompts are "
         "left out", "n_excluded": a.n_prompt_excluded},
        {"name": "key-correction", "description": "p-value corrected for the keys tested "
         "(Bonferroni)", "n_keys": result.n_keys},
    ]
    if params.get("reference") is not None:
        controls.append({"name": "reference-unmarked", "description": "the reference corpus "
                         "does not carry the key's watermark",
                         "log10_pvalue": a.reference_log10_pvalue})
    counts = reporting.counts_of(d, skipped=q.n_failed + a.n_empty, answers=a.n_answers,
                                 requests=q.n_queries)
    return reporting.build("probe", inputs=inputs, specs=specs, params=params, result=d,
                           alpha=alpha, counts=counts, controls=controls)
