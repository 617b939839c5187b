"""``distillmark generate``: answer prompts with a language model, watermarked with a key."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distillmark.watermark import InputError, load_spec, scheme_for
from distillmark.watermark.engines import load_generator, resolve_engine

from .common import errors_exit, info
from .options import ENGINE_HELP, MODEL_HELP


def generate(
    prompts: list[str] = typer.Argument(..., help="Prompts to answer."),
    key: Path | None = typer.Option(None, "--key", "-k", help="The watermark key."),
    no_watermark: bool = typer.Option(False, "--no-watermark",
                                      help="Generate without a watermark (a control text)."),
    model: str | None = typer.Option(None, help=MODEL_HELP),
    engine: str = typer.Option("auto", help=ENGINE_HELP),
    max_new_tokens: int = typer.Option(128, help="Tokens to generate per answer."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    batch_size: int = typer.Option(8, help="Prompts generated together."),
    seed: int | None = typer.Option(None, help="Random seed of the sampler."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per answer."),
) -> None:
    """Answer PROMPTS with a language model, watermarked with KEY."""
    with errors_exit():
        if no_watermark == (key is not None):
            raise InputError("give --key KEY to watermark, or --no-watermark for a control text")
        spec = load_spec(key) if key is not None else None
        resolve_engine(engine, model)
        info("loading model…", as_json)
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
