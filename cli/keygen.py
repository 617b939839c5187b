"""``distillmark keygen``: make a watermark key, or derive an account's key from a master key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    SCHEMES,
    InputError,
    derive_account_spec,
    load_spec,
    load_tokenizer,
    new_spec,
    save_spec,
)

from .common import errors_exit


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
    with errors_exit():
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
