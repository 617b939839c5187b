"""``distillmark attack``: edit, dilute, paraphrase, spoof or scrub texts, to measure how well
a watermark survives. No key is read: the attacker has none; test the results with ``detect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from distillmark.verify.attacks import (
    EDITS,
    STEALS,
    candidate_vocab,
    dilute_text,
    edit_text,
    learn,
    paraphrase,
    read_texts,
    steal_text,
)
from distillmark.watermark import BUILTIN_SMOLLM2, InputError, load_tokenizer
from distillmark.watermark.files import atomic_write, check_writable

from .common import DEFAULT_MAX_BYTES, errors_exit, info, input_label, read_text
from .options import EngineOption, ModelOption, json_option, max_bytes_option

ATTACKS = (*EDITS, "dilute", "paraphrase", *STEALS)
ATTACK_EXIT_HELP = "Exit status: 0 when every text was attacked, 2 on a usage or input error."
_DEFAULT_RATE = {"spoof": 1.0, "scrub": 0.3}


def _need(flag: bool, message: str) -> None:
    if not flag:
        raise InputError(message)


def _render(rows: list[dict[str, Any]], as_json: bool) -> str:
    if as_json:
        return "".join(json.dumps(r) + "\n" for r in rows)
    if len(rows) == 1:
        return rows[0]["text"] + "\n"
    return "".join(f"## {r['source']}\n{r['text']}\n\n" for r in rows)


def attack(
    method: Annotated[str, typer.Argument(
        help=f"The attack: {', '.join(ATTACKS)}.", metavar="ATTACK")],
    files: Annotated[list[str] | None, typer.Argument(
        help="Texts to attack; - or nothing: stdin.")] = None,
    *,
    rate: Annotated[float | None, typer.Option(
        help="substitute/delete/insert: the share of tokens edited; spoof/scrub: the most "
             "tokens edited, as a share (default 1.0 and 0.3).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attacker's randomness.")] = 0,
    into: Annotated[Path | None, typer.Option(
        help="dilute: the human text the marked text is pasted into.")] = None,
    share: Annotated[float | None, typer.Option(
        help="dilute: the marked text's share of the result's tokens, in (0, 1].")] = None,
    learn_from: Annotated[list[Path] | None, typer.Option(
        "--learn", help="spoof/scrub: watermarked answers to learn from (JSON Lines with a "
                        "\"text\" field, or a text file); repeat for more.")] = None,
    base: Annotated[list[Path] | None, typer.Option(
        help="spoof/scrub: unwatermarked text to compare with (answers of a model, or human "
             "text); same formats; repeat for more.")] = None,
    context_width: Annotated[int, typer.Option(
        help="spoof/scrub: the context width h the attacker assumes (0 to 3).")] = 1,
    model: ModelOption = None,
    engine: EngineOption = "auto",
    chunk_tokens: Annotated[int, typer.Option(
        help="paraphrase: the longest piece the model rewrites at once, in tokens.")] = 200,
    temperature: Annotated[float, typer.Option(
        help="paraphrase: sampling temperature.")] = 0.7,
    tokenizer: Annotated[str, typer.Option(
        help="The attacker's tokenizer (tokenizer.json or model directory).")] = BUILTIN_SMOLLM2,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the results here (atomically) instead of stdout.")] = None,
    max_bytes: Annotated[int, max_bytes_option(
        "Refuse inputs larger than this.")] = DEFAULT_MAX_BYTES,
    as_json: Annotated[bool, json_option("One JSON object per text.")] = False,
) -> None:
    """Attack texts: token edits, dilution into human text, paraphrase by a local model, or
    watermark stealing (spoof, scrub) learnt from watermarked answers, without the key."""
    with errors_exit():
        if method not in ATTACKS:
            raise InputError(f"unknown attack {method!r}; choose one of {', '.join(ATTACKS)}")
        if method in EDITS:
            _need(rate is not None, f"{method} needs --rate (the share of tokens edited)")
        if method == "dilute":
            _need(into is not None and share is not None,
                  "dilute needs --into HUMAN.txt and --share (the marked text's share)")
        if method in STEALS:
            _need(bool(learn_from) and bool(base),
                  f"{method} needs --learn ANSWERS.jsonl and --base BASE (unwatermarked text)")
        if out is not None:
            check_writable(out, what=f"--out {out}")
        tok, _ = load_tokenizer(tokenizer)
        names = list(files) if files else ["-"]
        texts = [read_text(n, max_bytes) for n in names]
        for n, t in zip(names, texts):
            if not t.strip():
                raise InputError(f"{input_label(n)}: empty text")
        results: list[Any]
        extra: dict[str, Any] = {}
        if method in EDITS:
            vocab = candidate_vocab(tok)
            results = [edit_text(t, method, float(rate or 0.0), seed=seed + i, tokenizer=tok,
                                 vocab=vocab) for i, t in enumerate(texts)]
        elif method == "dilute":
            human = read_text(str(into), max_bytes)
            results = [dilute_text(t, human, float(share or 0.0), seed=seed + i, tokenizer=tok)
                       for i, t in enumerate(texts)]
        elif method in STEALS:
            answers = [a for p in learn_from or [] for a in read_texts(p, "answers",
                                                                       max_bytes=max_bytes)]
            base_texts = [b for p in base or [] for b in read_texts(p, "base",
                                                                    max_bytes=max_bytes)]
            info(f"learning from {len(answers)} answers…", as_json)
            stolen = learn(tok, answers, base_texts, context_width=context_width)
            r = _DEFAULT_RATE[method] if rate is None else rate
            results = [steal_text(t, stolen, method, rate=r, tokenizer=tok) for t in texts]
            extra = stolen.to_dict()
        else:
            from distillmark.watermark.engines import load_generator, resolve_engine

            resolve_engine(engine, model)
            info("loading model…", as_json)
            gen = load_generator(engine, model)
            results = paraphrase(texts, gen, count=lambda s: len(tok.encode(
                s, add_special_tokens=False).ids), chunk_tokens=chunk_tokens, seed=seed,
                temperature=temperature)
        rows = [{"source": input_label(n), **r.to_dict(), **extra}
                for n, r in zip(names, results)]
        body = _render(rows, as_json)
        if out is None:
            typer.echo(body, nl=False)
        else:
            with atomic_write(out, what=f"--out {out}") as fh:
                fh.write(body)
