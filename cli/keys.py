"""``distillmark keys``: list and change a key ring (rotation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from distillmark.watermark import InputError, load_spec
from distillmark.watermark.ring import KeyRing, load_ring, save_ring

from .common import errors_exit
from .options import json_option


def _human(ring: KeyRing, path: Path) -> str:
    n = len(ring.members)
    lines = [f"{path}: {n} key{'s' if n != 1 else ''}, active {ring.active.key_id}"]
    for spec in ring.specs:  # the order detection tries them in
        m = ring.member(spec.key_id)
        when = f"activated {m.activated}" + (f", retired {m.retired}" if m.retired else "")
        lines.append(f"  {m.key_id}  {m.state:<7}  {m.spec.scheme}  {when}")
    return "\n".join(lines)


def keys(
    ring_path: Annotated[Path, typer.Argument(
        metavar="RING", help="The key ring file (mode 0600).")],
    add: Annotated[Path | None, typer.Option(
        "--add", help="Add this key file to the ring (made if missing) as its active key; the "
        "key active until now is retired.")] = None,
    activate: Annotated[str | None, typer.Option(
        "--activate", metavar="ID", help="Make the ring's key ID active again; the active key "
        "is retired.")] = None,
    remove: Annotated[str | None, typer.Option(
        "--remove", metavar="ID", help="Drop the retired key ID from the ring: texts marked "
        "with it are no longer tested (and the others' correction shrinks).")] = None,
    as_json: Annotated[bool, json_option(
        "Print the ring's public fields as one JSON object (never a secret).")] = False,
) -> None:
    """List the keys of a key ring (id, state, scheme, when activated and retired), or change
    it with one of --add, --activate, --remove.

    The active key marks (generate, serve); every key of the ring, active and retired, is tried
    by detect, scan, probe and audit, their p-values corrected for the number of keys. A new
    key is added with `distillmark keygen --ring RING`. Secrets are never printed.
    """
    with errors_exit():
        changes = [o for o in (add, activate, remove) if o is not None]
        if len(changes) > 1:
            raise InputError("give one of --add, --activate, --remove at a time")
        if add is not None and not ring_path.exists():
            ring = KeyRing.first(load_spec(add), where=f"key ring {ring_path}")
        else:
            ring = load_ring(ring_path)
            if add is not None:
                ring = ring.add(load_spec(add))
            elif activate is not None:
                ring = ring.activate(activate)
            elif remove is not None:
                ring = ring.remove(remove)
        if changes:
            save_ring(ring, ring_path)
    if as_json:
        typer.echo(json.dumps({"ring": str(ring_path), "n_keys": len(ring.members),
                               "active": ring.active.key_id,
                               "keys": [m.public_dict() for m in ring.members]}))
    else:
        typer.echo(_human(ring, ring_path))
