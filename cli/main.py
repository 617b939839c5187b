"""The ``distillmark`` command: thin commands that parse, call the library and render.

Exit codes, like grep: 0 = a watermark was found, 1 = not found or insufficient evidence,
2 = usage or input error. Human output goes to stdout, diagnostics to stderr; ``--json`` prints
each result's ``to_dict()`` (one object per input, JSON Lines for several).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from distillmark.verify import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_SCORED,
    DetectionResult,
    Detector,
    KeyRingDetector,
    KeyRingResult,
)
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    SCHEMES,
    DistillmarkError,
    InputError,
    derive_account_spec,
    load_spec,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)
from distillmark.watermark.engines import load_generator, resolve_engine

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2

_EXIT_HELP = ("Exit status: 0 if a watermark was found, 1 if not (or the evidence was "
              "insufficient), 2 on a usage or input error.")

app = typer.Typer(
    name="distillmark",
    help="Watermark language-model output and test texts for the watermark. " + _EXIT_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one diagnostic line on stderr, without source lines."""
    typer.echo(f"distillmark: warning: {message}", err=True)


@app.callback()
def _setup() -> None:
    warnings.showwarning = _show_warning


def _err(message: str) -> None:
    typer.echo(f"distillmark: error: {message}", err=True)


def _info(message: str, quiet: bool = False) -> None:
    if not quiet:
        typer.echo(message, err=True)


@contextmanager
def _errors_exit() -> Iterator[None]:
    """Turn library errors into one line on stderr and exit status 2, never a traceback."""
    try:
        yield
    except DistillmarkError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        _err("interrupted")
        raise typer.Exit(130) from None


def _fmt_p(result: DetectionResult | KeyRingResult) -> str:
    if result.pvalue > 0:
        return f"{result.pvalue:.3g}"
    return f"1e{result.log10_pvalue:.1f}"


DEFAULT_MAX_BYTES = 1 << 30


def _parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param must be NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[name.strip()] = raw
    return out


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


def _read_text(name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Read one input (``-`` is stdin) as strict UTF-8; problems become one-line InputErrors."""
    too_big = (f"{name}: larger than --max-bytes {max_bytes} bytes; split it, or raise "
               "--max-bytes if memory allows")
    if name == "-":
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InputError(too_big.replace(name, "<stdin>", 1))
        if isinstance(data, str):
            return data
        label = "<stdin>"
    else:
        path = Path(name)
        if path.is_dir():
            raise InputError(f"{name}: is a directory (give text files)")
        try:
            if path.stat().st_size > max_bytes:
                raise InputError(too_big)
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror}") from None
        label = name
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not valid UTF-8: byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}") from None


# --------------------------------------------------------------------------------------------
# keygen


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the key (mode 0600)."),
    scheme_name: str | None = typer.Option(None, "--scheme", help="Scheme, with its default "
                                           "parameters: " + ", ".join(SCHEMES) + "."),
    preset: str = typer.Option("greenlist", help="Parameter preset: " + ", ".join(PRESETS)),
    param: list[str] = typer.Option([], "--param", help="A scheme parameter NAME=VALUE (VALUE "
                                    "read as JSON when it parses); repeatable."),
    gamma: float | None = typer.Option(None, help="Green fraction of the vocabulary "
                                       "(dipmark: detection's threshold, default 0.5)."),
    alpha: float | None = typer.Option(None, help="dipmark: reweighting strength in [0, 0.5] "
                                       "(default 0.45)."),
    delta: float | None = typer.Option(None, help="Logit bias of green tokens."),
    context_width: int | None = typer.Option(None, "--context-width",
                                                help="Tokens before a token that pick its list "
                                                "(or row)."),
    seeding: str | None = typer.Option(None, help="lefthash or selfhash."),
    combine: str | None = typer.Option(None, help="hash or min (windows of 2+ tokens)."),
    n_lists: int | None = typer.Option(None, help="Number of green lists (power of two)."),
    hashing_key: int | None = typer.Option(None, help="transformers-kgw: WatermarkingConfig's "
                                           "hashing_key (the secret)."),
    greenlist_ratio: float | None = typer.Option(None, help="transformers-kgw: greenlist_ratio."),
    bias: float | None = typer.Option(None, help="transformers-kgw: bias."),
    seeding_scheme: str | None = typer.Option(None, help="transformers-kgw: lefthash or selfhash."),
    vocab_size: int | None = typer.Option(None, help="transformers-kgw: the model's vocab size."),
    dedup_by: str | None = typer.Option(None, help="transformers-kgw: seed (exact, default) or "
                                        "ngram (transformers' counts)."),
    keys: str | None = typer.Option(None, help="transformers-synthid: comma-separated keys (the "
                                    "secret)."),
    ngram_len: int | None = typer.Option(None, help="transformers-synthid: ngram_len."),
    sampling_table_size: int | None = typer.Option(None, help="transformers-synthid."),
    sampling_table_seed: int | None = typer.Option(None, help="transformers-synthid."),
    context_history_size: int | None = typer.Option(None, help="transformers-synthid."),
    tokenizer: str = typer.Option(BUILTIN_SMOLLM2, help="tokenizer.json, a model directory, "
                                  "or builtin:NAME."),
    derive_from: Path | None = typer.Option(None, help="Derive an account key from this "
                                               "master key (with --account)."),
    account: str | None = typer.Option(None, help="Account id for --derive-from."),
    force: bool = typer.Option(False, help="Replace an existing key file."),
    as_json: bool = typer.Option(False, "--json", help="Print the key's public fields as JSON."),
) -> None:
    """Make a new watermark key (a spec file), or derive an account's key from a master key."""
    with _errors_exit():
        if (derive_from is None) != (account is None):
            raise InputError("--derive-from and --account go together")
        if derive_from is not None and account is not None:
            spec = derive_account_spec(load_spec(derive_from), account)
        else:
            if scheme_name is not None:
                if scheme_name not in SCHEMES:
                    raise InputError(f"unknown scheme {scheme_name!r}; known: "
                                     f"{', '.join(SCHEMES)}")
                scheme, params = scheme_name, {}
            else:
                scheme, params = PRESETS.get(preset, (None, None))
                if scheme is None or params is None:
                    raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
            params = dict(params)
            params.update(_parse_params(param))
            try:
                key_list = ([int(k) for k in keys.split(",") if k.strip()]
                            if keys is not None else None)
            except ValueError:
                raise InputError(f"--keys must be comma-separated integers, got {keys!r}") from None
            for name, value in [("gamma", gamma), ("alpha", alpha), ("delta", delta),
                                ("context_width", context_width), ("seeding", seeding),
                                ("combine", combine), ("n_lists", n_lists),
                                ("hashing_key", hashing_key),
                                ("greenlist_ratio", greenlist_ratio), ("bias", bias),
                                ("seeding_scheme", seeding_scheme), ("vocab_size", vocab_size),
                                ("dedup_by", dedup_by), ("keys", key_list),
                                ("ngram_len", ngram_len),
                                ("sampling_table_size", sampling_table_size),
                                ("sampling_table_seed", sampling_table_seed),
                                ("context_history_size", context_history_size)]:
                if value is not None:
                    params[name] = value
            _, info = load_tokenizer(tokenizer)
            spec = new_spec(scheme, params, info)
        save_spec(spec, out, overwrite=force)
    if as_json:
        typer.echo(json.dumps(spec.public_dict()))
    else:
        typer.echo(f"wrote {out} (key id {spec.key_id}, scheme {spec.scheme}); keep it secret")


# --------------------------------------------------------------------------------------------
# detect


@app.command(epilog=_EXIT_HELP)
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
    if not 0.0 < alpha < 1.0:
        _err(f"--alpha must be in (0, 1), got {alpha}")
        raise typer.Exit(EXIT_ERROR)
    with _errors_exit():
        specs = [load_spec(k) for k in key]
        detector: Detector | KeyRingDetector = (
            Detector(specs[0], tokenizer=tokenizer, min_scored=min_scored) if len(specs) == 1
            else KeyRingDetector(specs, tokenizer=tokenizer, min_scored=min_scored))
    names = list(files) if files else ["-"]
    found = errors = 0
    for name in names:
        try:
            result = detector.detect(_read_text(name, max_bytes), prompt=prompt)
        except DistillmarkError as exc:
            msg, label = str(exc), "<stdin>" if name == "-" else name
            _err(msg if msg.startswith(label + ":") else f"{label}: {msg}")
            errors += 1
            continue
        except MemoryError:
            _err(f"{name}: out of memory while testing it; lower --max-bytes or split the file")
            errors += 1
            continue
        found += result.is_watermarked(alpha)
        label = "<stdin>" if name == "-" else name
        if as_json:
            typer.echo(json.dumps({"source": label, **result.to_dict(alpha)}))
        else:
            typer.echo(f"{label}: {result.verdict(alpha)} (p = {_fmt_p(result)}; "
                       f"{_fmt_score(result)}; {_fmt_key(result)})")
    raise typer.Exit(EXIT_ERROR if errors else EXIT_FOUND if found else EXIT_NOT_FOUND)


# --------------------------------------------------------------------------------------------
# generate and demo (need the hf or llama extra)

_ENGINE_HELP = ("Generation engine: auto (llama.cpp for GGUF models where installed, else "
                "transformers), transformers, or llama.cpp.")
_MODEL_HELP = ("GGUF file or local Hugging Face model directory (default: the embedded "
               "SmolLM2-135M-Instruct).")


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., help="Prompts to answer."),
    key: Path | None = typer.Option(None, "--key", "-k", help="The watermark key."),
    no_watermark: bool = typer.Option(False, "--no-watermark",
                                      help="Generate without a watermark (a control text)."),
    model: str | None = typer.Option(None, help=_MODEL_HELP),
    engine: str = typer.Option("auto", help=_ENGINE_HELP),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate per answer."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    batch_size: int = typer.Option(8, help="Prompts generated together."),
    seed: int | None = typer.Option(None, help="Random seed of the sampler."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per answer."),
) -> None:
    """Answer PROMPTS with a language model, watermarked with KEY."""
    with _errors_exit():
        if no_watermark == (key is not None):
            raise InputError("give --key KEY to watermark, or --no-watermark for a control text")
        spec = load_spec(key) if key is not None else None
        resolve_engine(engine, model)
        _info("loading model…", as_json)
        gen = load_generator(engine, model)
        scheme = None
        if spec is not None:
            gen.check_tokenizer(spec)
            scheme = scheme_for(spec)
        outs = gen.generate(prompts, scheme=scheme, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, batch_size=batch_size,
                            seed=seed)
    for o in outs:
        if as_json:
            typer.echo(json.dumps({"prompt": o.prompt, "text": o.text,
                                   "n_tokens": len(o.completion_ids),
                                   "key_id": spec.key_id if spec else None}))
        elif len(outs) > 1:
            typer.echo(f"## {o.prompt}\n{o.text}\n")
        else:
            typer.echo(o.text)


#: Teacher answers per student (the first ones are the demo's own four) and held-out probe
#: prompts of the demo's distillation story. Four answers suffice for a clear result: bigram
#: students trained on 4 of SmolLM2's 128-token answers gave probe p = 1e-54.6 and audit
#: p = 1e-48.5 (controls 1e-1.0 and 1e-0.7); on 1 answer, 1e-15.0 and 1e-14.7.
DEMO_TRAIN_ANSWERS = 4
DEMO_PROBE_PROMPTS = 16

DEMO_PROMPTS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main causes of inflation, and how do central banks respond?",
    "Give me three tips for learning a new language as an adult.",
]


@app.command()
def demo(
    model: str | None = typer.Option(None, help=_MODEL_HELP),
    engine: str = typer.Option("auto", help=_ENGINE_HELP),
    max_new_tokens: int = typer.Option(120, help="Tokens per answer."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="Significance level of the verdicts."),
    seed: int = typer.Option(0, help="Random seed of the sampler."),
    students: bool = typer.Option(True, "--students/--no-students",
                                  help="Then train a student on the watermarked answers and "
                                  "a control student on the unwatermarked ones, probe both "
                                  "on loopback and audit their weights (needs the serve "
                                  "extra)."),
    train_answers: int = typer.Option(DEMO_TRAIN_ANSWERS, help="Teacher answers each student "
                                      "learns from: the demo's own four, then answers to "
                                      "further built-in prompts."),
    probe_prompts: int = typer.Option(DEMO_PROBE_PROMPTS, help="Held-out prompts each student "
                                      "is probed with."),
    samples: int = typer.Option(4, help="Answers per probe prompt."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per answer, then one "
                                 "per student."),
) -> None:
    """Make a key, generate watermarked answers and unwatermarked controls, detect them all;
    then the distillation story: was a model trained on our answers?

    A bigram student is trained on the teacher's watermarked answers and a control student on
    its unwatermarked answers to the same prompts; each is served on loopback and probed
    (closed-model test), and its weights are audited (open-model test). Exit status 0 if every
    answer was classified correctly and the student trained on watermarked answers was found
    by both tests while the control was found by neither; 1 otherwise; 2 on an error.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    with _errors_exit():
        resolve_engine(engine, model)
        _info("loading the model (a first transformers run converts it once, about a "
              "minute)…", as_json)
        gen = load_generator(engine, model)
        # the key and its tokenizer live here until the end of the demo (both stages)
        workspace = tempfile.TemporaryDirectory(prefix="distillmark-demo-")
        tmp = workspace.name
        if model is None:
            tok_source: str | Path = BUILTIN_SMOLLM2
        elif gen.engine == "transformers":
            tok_source = Path(tmp) / "tokenizer.json"
            tok_source.write_text(gen.tokenizer_json(), encoding="utf-8")  # type: ignore[attr-defined]
        else:
            raise InputError("demo with --model needs --engine transformers (to read the "
                             "model's tokenizer)")
        _, info = load_tokenizer(tok_source)
        spec = new_spec("greenlist", {}, info)
        key_path = save_spec(spec, Path(tmp) / "demo-key.json")
        _info(f"made key {spec.key_id} ({key_path.name}, mode 0600, deleted after the demo)",
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
        rows = []
        for label, sch in (("watermarked", scheme), ("control", None)):
            _info(f"generating {len(DEMO_PROMPTS)} {label} answers…", as_json)
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
    table = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, title=f"distillmark demo ({gen.engine}): key {spec.key_id}, greenlist "
                        f"γ={spec.params['gamma']} δ={spec.params['delta']} "
                        f"h={spec.params['context_width']}, alpha={alpha:g}")
    for col in ("answer", "prompt", "tokens", "scored", "green", "p-value", "verdict"):
        table.add_column(col, justify="right" if col in ("tokens", "scored", "green",
                                                         "p-value") else "left",
                         no_wrap=True, overflow="ellipsis",
                         min_width={"answer": 11, "p-value": 8, "verdict": 15}.get(col, len(col)),
                         max_width=16 if col == "prompt" else None)
    for label, o, r in rows:
        ok = r is not None and (r.is_watermarked(alpha) == (label == "watermarked"))
        correct += ok
        if r is None:
            table.add_row(label, o.prompt, "0", "0", "-", "-", "empty answer")
            continue
        table.add_row(label, o.prompt,
                      str(r.n_tokens), str(r.n_scored), f"{r.score_mean:.0%}", _fmt_p(r),
                      r.verdict(alpha))
    console = Console(stderr=as_json)
    console.print(table)
    console.print(f"{correct}/{len(rows)} answers classified correctly: watermarked answers "
                  f"should be found, controls not. Expected green share without the key: "
                  f"{spec.params['gamma']:.0%}.")
    if rows:
        sample = next(o for label, o, _ in rows if label == "watermarked")
        console.print(f"\nA watermarked answer:\n[italic]{sample.text.strip()[:400]}[/italic]")
    right = correct == len(rows)
    if students:
        with _errors_exit():
            _info("\nNow the distillation story: was a model trained on our answers?", as_json)
            given = tuple([o for label, o, _ in rows if label == kind][:train_answers]
                          for kind in ("watermarked", "control"))
            story = _demo_story(gen, spec, Path(tmp), given, train_answers=train_answers,
                                probe_prompts=probe_prompts, samples=samples,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                seed=seed, quiet=as_json)
        if as_json:
            for st in story.students:
                typer.echo(json.dumps({"kind": "student", **st.to_dict(alpha)}))
        _render_story(console, story, alpha)
        right = right and story.is_right(alpha)
    workspace.cleanup()
    raise typer.Exit(EXIT_FOUND if right else EXIT_NOT_FOUND)


def _demo_story(gen: Any, spec: Any, tmp: Path, given: tuple[Any, ...], *, train_answers: int,
                probe_prompts: int, samples: int, max_new_tokens: int, temperature: float,
                seed: int, quiet: bool) -> Any:
    """The demo's second stage: two students, probed and audited (verify.students)."""
    from distillmark.verify.prompts import builtin_prompts
    from distillmark.verify.students import default_tokenizer_dir, distillation_story

    source = Path(gen.source)
    if gen.engine == "transformers" and (source / "tokenizer.json").is_file():
        tok_dir = source  # a model directory: the teacher's own tokenizer files
    else:  # a GGUF model (the embedded one by default): its transformers copy holds them
        tok_dir = default_tokenizer_dir(source if source.suffix == ".gguf" else None)
    extra = train_answers - len(given[0])
    prompts = builtin_prompts(extra + probe_prompts)
    return distillation_story(gen, spec, prompts[:extra], prompts[extra:], tmp / "students",
                              answers=(given[0], given[1]), tokenizer_dir=tok_dir,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed, samples=samples,
                              progress=lambda m: _info(m, quiet))


def _fmt_pv(result: Any) -> str:
    return f"{result.pvalue:.3g}" if result.pvalue > 0 else f"1e{result.log10_pvalue:.1f}"


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
                      _fmt_pv(st.probe), _fmt_pv(st.audit), verdict)
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


def main() -> None:
    """Console-script entry point."""
    app()


# Commands in their own modules (they import this module's helpers, hence at the end).
from distillmark.cli.audit import audit as _audit
from distillmark.cli.probe import _EXIT_HELP as _PROBE_EXIT_HELP
from distillmark.cli.probe import probe_command as _probe
from distillmark.cli.scan import scan as _scan
from distillmark.cli.serve import serve as _serve

app.command("scan", epilog=_EXIT_HELP)(_scan)
app.command("serve")(_serve)
app.command("probe", epilog=_PROBE_EXIT_HELP)(_probe)
app.command("audit", epilog=_EXIT_HELP)(_audit)
