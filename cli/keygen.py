"""``distillmark keygen``: make a watermark key (by default with an account layer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    SCHEMES,
    InputError,
    load_tokenizer,
    new_spec,
    save_spec,
)
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.ring import KeyRing, load_ring, save_ring

from .common import errors_exit
from .options import json_option


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
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the key (mode 0600).")] = None,
    ring: Annotated[Path | None, typer.Option(
        "--ring", help="Or add the key to this key ring (made if missing, mode 0600) as its "
        "active key; the key active until now is retired, and still tested.")] = None,
    scheme_name: Annotated[str | None, typer.Option(
        "--scheme", help="Scheme, with its default parameters: " + ", ".join(SCHEMES) + ".")
    ] = None,
    preset: Annotated[str, typer.Option(
        help="Parameter preset: " + ", ".join(PRESETS))] = "greenlist",
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="A scheme parameter NAME=VALUE (VALUE read as JSON when it parses); "
        "repeatable.")] = None,
    gamma: Annotated[float | None, typer.Option(
        help="Green fraction of the vocabulary (dipmark: detection's threshold, default 0.5).")
    ] = None,
    dipmark_alpha: Annotated[float | None, typer.Option(
        "--dipmark-alpha", help="dipmark: reweighting strength in [0, 0.5] (default 0.45), the "
        "key's parameter alpha.")] = None,
    renamed_alpha: Annotated[str | None, typer.Option("--alpha", hidden=True)] = None,
    delta: Annotated[float | None, typer.Option(help="Logit bias of green tokens.")] = None,
    context_width: Annotated[int | None, typer.Option(
        "--context-width", help="Tokens before a token that pick its list (or row).")] = None,
    seeding: Annotated[str | None, typer.Option(help="lefthash or selfhash.")] = None,
    combine: Annotated[str | None, typer.Option(help="hash or min (windows of 2+ tokens).")] = None,
    n_lists: Annotated[int | None, typer.Option(
        help="Number of green lists (power of two).")] = None,
    hashing_key: Annotated[int | None, typer.Option(
        help="transformers-kgw: WatermarkingConfig's hashing_key (the secret).")] = None,
    greenlist_ratio: Annotated[float | None, typer.Option(
        help="transformers-kgw: greenlist_ratio.")] = None,
    bias: Annotated[float | None, typer.Option(help="transformers-kgw: bias.")] = None,
    seeding_scheme: Annotated[str | None, typer.Option(
        help="transformers-kgw: lefthash or selfhash.")] = None,
    vocab_size: Annotated[int | None, typer.Option(
        help="transformers-kgw: the model's vocab size.")] = None,
    dedup_by: Annotated[str | None, typer.Option(
        help="transformers-kgw: seed (exact, default) or ngram (transformers' counts).")] = None,
    keys: Annotated[str | None, typer.Option(
        help="transformers-synthid: comma-separated keys (the secret).")] = None,
    ngram_len: Annotated[int | None, typer.Option(help="transformers-synthid: ngram_len.")] = None,
    sampling_table_size: Annotated[int | None, typer.Option(help="transformers-synthid.")] = None,
    sampling_table_seed: Annotated[int | None, typer.Option(help="transformers-synthid.")] = None,
    context_history_size: Annotated[int | None, typer.Option(help="transformers-synthid.")] = None,
    tokenizer: Annotated[str, typer.Option(
        help="tokenizer.json, a model directory, or builtin:NAME.")] = BUILTIN_SMOLLM2,
    account_layer: Annotated[bool | None, typer.Option(
        "--account-layer/--no-account-layer",
        help="Give the key an account layer, so that answers served for accounts name their "
             "account (default: yes for green-list keys with lefthash seeding, the only ones "
             "that take one).")] = None,
    account_gamma: Annotated[float, typer.Option(
        help="Account layer: share of cells green for an account, 0.25 or 0.5.")] = 0.25,
    account_delta: Annotated[float, typer.Option(
        help="Account layer: logit bias of an account's green tokens.")] = 2.0,
    signing: Annotated[bool, typer.Option(
        "--signing", help="Make an Ed25519 key pair that signs reports instead: the private key "
        "in OUT (PEM, mode 0600), the public key in OUT.pub.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key file.")] = False,
    as_json: Annotated[bool, json_option("Print the key's public fields as JSON.")] = False,
) -> None:
    """Make a new watermark key (a spec file, mode 0600).

    A green-list key gets an account layer by default: served with `serve --accounts`, every
    answer carries the key's own mark, the same for every account, and its account's number,
    which `attribute` recovers (docs/schemes/accounts.md).

    With --ring the key joins a key ring as its active key (a rotation): generate and serve
    mark with it, detection tries every key of the ring (`distillmark keys` lists them).
    """
    if signing:
        from distillmark.verify.signing import new_signing_key

        with errors_exit():
            _, pub, key_id = new_signing_key(out, overwrite=force)
        if as_json:
            typer.echo(json.dumps({"private_key": str(out), "public_key": str(pub),
                                   "public_key_sha256": key_id}))
        else:
            typer.echo(f"wrote {out} (signing key, keep it secret) and {pub} (public key "
                       f"{key_id[:16]}…, give it to whoever checks your reports)")
        return
    with errors_exit():
        if (out is None) == (ring is None):
            raise InputError("give --out FILE for a new key file, or --ring RING to add the key "
                             "to a key ring")
        old = load_ring(ring) if ring is not None and ring.exists() else None
        if renamed_alpha is not None:  # elsewhere --alpha is the significance level
            raise InputError("keygen's --alpha is now --dipmark-alpha (DiPmark's reweighting "
                             "strength); --alpha is the significance level of the tests")
        params: dict[str, Any]
        if scheme_name is not None:
            if scheme_name not in SCHEMES:
                raise InputError(f"unknown scheme {scheme_name!r}; known: "
                                 f"{', '.join(SCHEMES)}")
            scheme, params = scheme_name, {}
        elif preset in PRESETS:
            scheme, params = PRESETS[preset]
        else:
            raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        params = dict(params)
        params.update(_parse_params(param or []))
        try:
            key_list = ([int(k) for k in keys.split(",") if k.strip()]
                        if keys is not None else None)
        except ValueError:
            raise InputError(f"--keys must be comma-separated integers, got {keys!r}") from None
        for name, value in [("gamma", gamma), ("alpha", dipmark_alpha), ("delta", delta),
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
        takes_layer = scheme == "greenlist" and params.get("seeding", "lefthash") == "lefthash"
        layer = (AccountLayerParams(gamma=account_gamma, delta=account_delta)
                 if (takes_layer if account_layer is None else account_layer) else None)
        spec = new_spec(scheme, params, info, accounts=layer)
        if ring is not None:
            where = f"key ring {ring}"
            save_ring(old.add(spec) if old is not None else KeyRing.first(spec, where=where),
                      ring)
        else:
            assert out is not None
            save_spec(spec, out, overwrite=force)
    if as_json:
        typer.echo(json.dumps(spec.public_dict()))
    elif ring is not None:
        retired = f"; {old.active.key_id} retired" if old is not None else ""
        typer.echo(f"added key {spec.key_id} (scheme {spec.scheme}) to {ring} as its active "
                   f"key{retired}; keep it secret")
    else:
        typer.echo(f"wrote {out} (key id {spec.key_id}, scheme {spec.scheme}); keep it secret")
