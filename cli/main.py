"""The ``distillmark`` command: the Typer app with every command registered, and ``main()``.

Each command lives in its own module and is thin: parse, call the library, render. What they
share (the app, exit codes, diagnostics, reading inputs) is in :mod:`distillmark.cli.common`,
the options several of them take in :mod:`distillmark.cli.options`.
"""

from __future__ import annotations

from .attribute import ATTRIBUTE_EXIT_HELP, attribute
from .audit import audit
from .calibrate import CALIBRATE_EXIT_HELP, calibrate_command
from .common import EXIT_HELP, app
from .demo import demo
from .detect import detect
from .generate import generate
from .keygen import keygen
from .probe import PROBE_EXIT_HELP, probe_command
from .scan import scan
from .serve import serve

__all__ = ["app", "main"]

app.command("keygen")(keygen)
app.command("detect", epilog=EXIT_HELP)(detect)
app.command("generate")(generate)
app.command("demo")(demo)
app.command("scan", epilog=EXIT_HELP)(scan)
app.command("serve")(serve)
app.command("probe", epilog=PROBE_EXIT_HELP)(probe_command)
app.command("audit", epilog=EXIT_HELP)(audit)
app.command("attribute", epilog=ATTRIBUTE_EXIT_HELP)(attribute)
app.command("calibrate", epilog=CALIBRATE_EXIT_HELP)(calibrate_command)


def main() -> None:
    """Console-script entry point."""
    app()
