"""``distillmark generate``: answer prompts with a language model, watermarked with a key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from distillmark.watermark import InputError, scheme_for
from distillmark.watermark.engines import load_generator, resolve_engine
from distillmark.watermark.ring import load_active_key

from .common import errors_exit, info
from .options import EngineOption, ModelOption, json_option, key_option, no_watermark_option


def generate(
    prompts: Annotated[list[str], typer.Argument(help="Prompts to answer.")],
    key: Annotated[Path | None, key_option(
        "The watermark key, or a key ring (its active key marks).")] = None,
    no_watermark: Annotated[bool, no_watermark_option(
        "Generate without a watermark (a control text).")] = False,
    model: ModelOption = None,
    engine: EngineOption = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Prompts generated together.")] = 8,
    seed: Annotated[int | None, typer.Option(help="Random seed of the sampler.")] = None,
    as_json: Annotated[bool, json_option("One JSON object per answer.")] = False,
) -> None:
    """Answer PROMPTS with a language model, watermarked with KEY."""
    with errors_exit():
        if no_watermark == (key is not None):
            raise InputError("give --key KEY to watermark, or --no-watermark for a control text")
        spec = load_active_key(key) if key is not None else None
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
