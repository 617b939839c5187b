"""The ``distillmark`` command: the Typer app with every command registered, and ``main()``.

Each command lives in its own module and is thin: parse, call the library, render. What they
share (the app, exit codes, diagnostics, reading inputs) is in :mod:`distillmark.cli.common`,
the options several of them take in :mod:`distillmark.cli.options`.

A run of one command imports that command's module only (:func:`main`): ``detect`` never loads
what ``scan``, ``serve`` or ``audit`` need. :data:`app` (every command, for ``--help`` and
tests) is built on first use.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import common

if TYPE_CHECKING:
    import typer

    app: typer.Typer

__all__ = ["COMMANDS", "app", "build_app", "main"]

#: Command name -> (module in this package, function, name of its epilog in that module or
#: in :mod:`.common`, or ""); a Typer app instead of a function is a command group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "keygen": ("keygen", "keygen", ""),
    "keys": ("keys", "keys", ""),
    "detect": ("detect", "detect", "EXIT_HELP"),
    "generate": ("generate", "generate", ""),
    "demo": ("demo", "demo", ""),
    "scan": ("scan", "scan", "EXIT_HELP"),
    "serve": ("serve", "serve", ""),
    "probe": ("probe", "probe_command", "PROBE_EXIT_HELP"),
    "audit": ("audit", "audit", "EXIT_HELP"),
    "attribute": ("attribute", "attribute", "ATTRIBUTE_EXIT_HELP"),
    "calibrate": ("calibrate", "calibrate_command", "CALIBRATE_EXIT_HELP"),
    "report": ("report", "report_app", ""),
    "attack": ("attack", "attack", "ATTACK_EXIT_HELP"),
}


def build_app(names: Iterable[str] | None = None) -> typer.Typer:
    """The app with the commands ``names`` registered (default: all, in :data:`COMMANDS`'s
    order), importing only their modules."""
    app = common.new_app()
    for name in COMMANDS if names is None else names:
        module_name, func, epilog = COMMANDS[name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        text = getattr(module, epilog, None) or getattr(common, epilog) if epilog else None
        target = getattr(module, func)
        if isinstance(target, type(app)):
            app.add_typer(target, name=name)
        else:
            app.command(name, epilog=text)(target)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # built once, on first use
        full = globals()["app"] = build_app()
        return full
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point: a known command's module alone, else every command."""
    first = sys.argv[1] if len(sys.argv) > 1 else ""
    build_app([first] if first in COMMANDS else None)()
