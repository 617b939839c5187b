"""``distillmark demo``: the whole story on one machine, from a fresh key to audited students.

The first stage makes a key, generates watermarked answers and unwatermarked controls and
detects them all. The second trains a student on each set of answers, serves and probes both
on loopback and audits their weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from distillmark.verify import DEFAULT_ALPHA, DetectionResult, Detector
from distillmark.verify.aggregate import AggregateAccumulator
from distillmark.verify.stats import format_pvalue
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    InputError,
    load_spec,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)
from distillmark.watermark.engine_types import Completion
from distillmark.watermark.engines import load_generator, resolve_engine

from .common import EXIT_FOUND, EXIT_NOT_FOUND, errors_exit, info
from .options import EngineOption, ModelOption, alpha_option, json_option

#: Teacher answers per student (the first ones are the demo's own four) and held-out probe
#: prompts of the demo's distillation story. Four answers suffice for a clear result (the
#: demo section of docs/cli.md gives the p-values).
DEMO_TRAIN_ANSWERS = 4
DEMO_PROBE_PROMPTS = 16

DEMO_PROMPTS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of inflation, and how do central banks respond?",
    "Give me three tips for learning a new language as an adult.",
]


def demo(
    model: ModelOption = None,
    engine: EngineOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 120,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    alpha: Annotated[float, alpha_option("Significance level of the verdicts.")] = DEFAULT_ALPHA,
    seed: Annotated[int, typer.Option(help="Random seed of the sampler.")] = 0,
    students: Annotated[bool, typer.Option(
        "--students/--no-students",
        help="Then train a student on the watermarked answers and a control student on the "
             "unwatermarked ones, probe both on loopback and audit their weights (needs the "
             "serve extra).")] = True,
    train_answers: Annotated[int, typer.Option(
        help="Teacher answers each student learns from: the demo's own four, then answers to "
             "further built-in prompts.")] = DEMO_TRAIN_ANSWERS,
    probe_prompts: Annotated[int, typer.Option(
        help="Held-out prompts each student is probed with.")] = DEMO_PROBE_PROMPTS,
    samples: Annotated[int, typer.Option(help="Answers per probe prompt.")] = 4,
    as_json: Annotated[bool, json_option(
        "One JSON object per answer, then one per student.")] = False,
) -> None:
    """Make a key, generate watermarked answers and unwatermarked controls, detect them all;
    then the distillation story: was a model trained on our answers?

    A bigram student is trained on the teacher's watermarked answers and a control student on
    its unwatermarked answers to the same prompts; each is served on loopback and probed
    (closed-model test), and its weights are audited (open-model test). Exit status 0 if the
    watermarked answers, tested together, carry the mark, no control answer is flagged, and
    the student trained on watermarked answers was found by both tests while the control was
    found by neither; 1 otherwise; 2 on an error.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    with errors_exit():
        resolve_engine(engine, model)
        info("loading the model (a first transformers run converts it once, about a "
             "minute)…", as_json)
        gen = load_generator(engine, model)
        # the key and its tokenizer live here until the end of the demo (both stages)
        workspace = tempfile.TemporaryDirectory(prefix="distillmark-demo-")
        tmp = workspace.name
        if model is None:
            tok_source: str | Path = BUILTIN_SMOLLM2
        elif gen.engine == "transformers":
            tok_source = Path(tmp) / "tokenizer.json"
            tok_json = gen.tokenizer_json()  # type: ignore[attr-defined]
            tok_source.write_text(tok_json, encoding="utf-8")
        else:
            raise InputError("demo with --model needs --engine transformers (to read the "
                             "model's tokenizer)")
        _, tok_info = load_tokenizer(tok_source)
        spec = new_spec("greenlist", {}, tok_info)
        key_path = save_spec(spec, Path(tmp) / "demo-key.json")
        info(f"made key {spec.key_id} ({key_path.name}, mode 0600, deleted after the demo)",
             as_json)
        gen.check_tokenizer(spec)
        scheme = scheme_for(spec)
        detector = Detector(load_spec(key_path), tokenizer=tok_source)
        if students:
            if train_answers < 1 or probe_prompts < 1 or samples < 1:
                raise InputError(f"--train-answers, --probe-prompts and --samples must be "
                                 f">= 1, got {train_answers}, {probe_prompts}, {samples}")
            try:
                import fastapi  # noqa: F401
                import httpx  # noqa: F401
            except ImportError:
                raise InputError("the students' stage serves and probes them: it needs "
                                 "the serve extra (pip install 'distillmark[serve]'), or "
                                 "pass --no-students") from None
        rows: list[tuple[str, Completion, DetectionResult | None]] = []
        for label, sch in (("watermarked", scheme), ("control", None)):
            info(f"generating {len(DEMO_PROMPTS)} {label} answers…", as_json)
            outs = gen.generate(DEMO_PROMPTS, scheme=sch, max_new_tokens=max_new_tokens,
                                temperature=temperature, batch_size=len(DEMO_PROMPTS),
                                seed=seed)
            for o in outs:
                if not o.text.strip():
                    rows.append((label, o, None))
                    continue
                rows.append((label, o, detector.detect(o.text)))
    correct = 0
    if as_json:
        for label, o, r in rows:
            d = {"kind": label, "prompt": o.prompt, "text": o.text}
            d.update(r.to_dict(alpha) if r is not None else {"verdict": "empty answer"})
            typer.echo(json.dumps(d))
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  title=f"distillmark demo ({gen.engine}): key {spec.key_id}, greenlist "
                        f"γ={spec.params['gamma']} δ={spec.params['delta']} "
                        f"h={spec.params['context_width']}, alpha={alpha:g}")
    for col in ("answer", "prompt", "tokens", "scored", "green", "p-value", "verdict"):
        table.add_column(col, justify="right" if col in ("tokens", "scored", "green",
                                                         "p-value") else "left",
                         no_wrap=True, overflow="ellipsis",
                         min_width={"answer": 11, "p-value": 8, "verdict": 15}.get(col, len(col)),
                         max_width=16 if col == "prompt" else None)
    undecided = 0  # watermarked answers too short to decide
    for label, o, r in rows:
        ok = r is not None and (r.is_watermarked(alpha) == (label == "watermarked"))
        short = r is not None and label == "watermarked" and not r.is_sufficient()
        correct += ok
        undecided += short
        if r is None:
            table.add_row(label, o.prompt, "0", "0", "-", "-", "empty answer")
            continue
        table.add_row(label, o.prompt, str(r.n_tokens), str(r.n_scored), f"{r.score_mean:.0%}",
                      format_pvalue(r.pvalue, r.log10_pvalue), r.verdict(alpha))
    console = Console(stderr=as_json)
    console.print(table)
    short_note = (f" ({undecided} watermarked too short to decide: fewer than "
                  f"{detector.min_scored} scored tokens)" if undecided else "")
    console.print(f"{correct}/{len(rows)} answers classified correctly{short_note}: "
                  f"watermarked answers should be found, controls not. Expected green share "
                  f"without the key: {spec.params['gamma']:.0%}.")
    if rows:
        sample = next(o for label, o, _ in rows if label == "watermarked")
        console.print(f"\nA watermarked answer:\n[italic]{sample.text.strip()[:400]}[/italic]")
    # The verdict on the mark is one test on all the watermarked answers together, as an
    # investigator pools a suspect's texts: a short answer has too little evidence alone.
    pooled = AggregateAccumulator(scheme)
    for label, o, r in rows:
        if label == "watermarked" and r is not None:
            pooled.add(detector.encode(o.text))
    together = pooled.result(min_scored=detector.min_scored)
    flagged = sum(label == "control" and r is not None and r.is_watermarked(alpha)
                  for label, o, r in rows)
    n_control = sum(label == "control" for label, _, _ in rows)
    console.print(f"The watermarked answers together: {together.verdict(alpha)} (p = "
                  f"{format_pvalue(together.pvalue, together.log10_pvalue)}; "
                  f"{together.statistic}/{together.n_scored} distinct tuples green); controls "
                  f"flagged: {flagged}/{n_control}.")
    right = together.is_watermarked(alpha) and flagged == 0
    if students:
        with errors_exit():
            info("\nNow the distillation story: was a model trained on our answers?", as_json)
            marked, control = ([o for label, o, _ in rows if label == kind][:train_answers]
                               for kind in ("watermarked", "control"))
            given = (marked, control)
            from distillmark.verify.lab import demo_story

            story = demo_story(gen, spec, Path(tmp) / "students", given,
                               train_answers=train_answers, probe_prompts=probe_prompts,
                               samples=samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed,
                               progress=lambda m: info(m, as_json))
        if as_json:
            for st in story.students:
                typer.echo(json.dumps({"kind": "student", **st.to_dict(alpha)}))
        _render_story(console, story, alpha)
        right = right and story.is_right(alpha)
    workspace.cleanup()
    raise typer.Exit(EXIT_FOUND if right else EXIT_NOT_FOUND)


def _render_story(console: Any, story: Any, alpha: float) -> None:
    from rich import box
    from rich.table import Table

    first = story.students[0]
    q = first.probe.queries
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False,
                  title=f"Was a model distilled from our answers? (alpha={alpha:g})")
    for col in ("student", "trained on", "probe p", "audit p", "verdict"):
        table.add_column(col, justify="right" if col.endswith(" p") else "left")
    for st in story.students:
        found = st.probe.is_watermarked(alpha), st.audit.is_watermarked(alpha)
        verdict = ("carries the mark" if all(found) else
                   "no mark found" if not any(found) else "found by one test")
        table.add_row("marked" if st.marked else "control",
                      f"{st.n_train} {'watermarked' if st.marked else 'unwatermarked'} answers",
                      format_pvalue(st.probe.pvalue, st.probe.log10_pvalue),
                      format_pvalue(st.audit.pvalue, st.audit.log10_pvalue), verdict)
    console.print()
    console.print(table)
    console.print(f"probe: each student served on loopback, {q.n_prompts} held-out prompts x "
                  f"{q.n_samples} answers ({q.n_queries} requests); audit: its weights, over "
                  f"{first.audit.n_contexts} contexts it samples itself.")
    if story.is_right(alpha):
        console.print("The student trained on watermarked answers carries the mark (probe and "
                      "audit), the control student does not: the mark survives distillation.")
    else:
        console.print("[bold]The story did not come out as expected[/bold]: the marked student "
                      "should be found by both tests, the control by neither.")
    extra = (f"further teacher answers {story.teacher_seconds:.0f} s; "
             if story.teacher_seconds >= 0.5 else "")
    console.print(f"Students: {extra}training, serving, probing and auditing both "
                  f"{story.seconds - story.teacher_seconds:.0f} s.")
