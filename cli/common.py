"""What every ``distillmark`` command shares: the Typer app, exit codes, diagnostics and inputs.

Exit codes, like grep: 0 = a watermark was found, 1 = not found or insufficient evidence,
2 = usage or input error, 130 = interrupted (Ctrl-C). Human output goes to stdout, diagnostics
to stderr; ``--json`` prints each result's ``to_dict()`` (one object per input, JSON Lines for
several). Library errors (:class:`~distillmark.watermark.DistillmarkError`) become one line on
stderr and exit status 2 inside :func:`errors_exit`, never a traceback; so do the errors of
option parsing (a missing or unknown option, a value that does not parse), in
:class:`OneLineErrors`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer carries its own copy of click (typer >= 0.20); older versions use click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, UsageError  # type: ignore[assignment]

from distillmark.watermark import DistillmarkError, InputError
from distillmark.watermark.files import read_at_most

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_HELP = ("Exit status: 0 if a watermark was found, 1 if not (or the evidence was "
             "insufficient), 2 on a usage or input error, 130 if interrupted.")

DEFAULT_MAX_BYTES = 1 << 30


def usage_line(exc: UsageError) -> str:
    """A usage error as one line: the command, what is wrong and where its options are listed:
    ``detect: missing option '--key' / '-k' (see distillmark detect --help)``."""
    msg = " ".join(exc.format_message().split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    ctx = exc.ctx
    if ctx is None:
        return msg
    if ctx.parent is not None:
        msg = f"{ctx.info_name}: {msg}"
    return f"{msg} (see {ctx.command_path} --help)"


class OneLineErrors(TyperGroup):
    """The command group, whose option-parsing errors are one line on stderr and exit status 2
    (``distillmark: error: ...``), as every other error is; ``--help`` and the help shown for
    no arguments are typer's own. Called with ``standalone_mode=False`` it behaves as click
    does (errors raised, exit statuses returned)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.get("standalone_mode", True)
        kwargs["standalone_mode"] = False
        if not standalone:
            return super().main(*args, **kwargs)
        try:
            rv = super().main(*args, **kwargs)
        except UsageError as exc:
            if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help
                err(usage_line(exc))
            sys.exit(EXIT_ERROR)
        except ClickException as exc:
            err(" ".join(exc.format_message().split()))
            sys.exit(EXIT_ERROR)
        except typer.Abort:
            err("aborted")
            sys.exit(EXIT_ERROR)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit's status

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C anywhere: one line and 130, as a shell reports it
            err("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


def new_app() -> typer.Typer:
    """The command group, without commands (:func:`distillmark.cli.main.build_app` adds
    them)."""
    app = typer.Typer(
        name="distillmark",
        cls=OneLineErrors,
        help="Watermark language-model output and test texts for the watermark. " + EXIT_HELP,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_setup)
    return app


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one diagnostic line on stderr, without source lines."""
    typer.echo(f"distillmark: warning: {message}", err=True)


def _setup() -> None:
    warnings.showwarning = _show_warning


def err(message: str) -> None:
    """One ``distillmark: error:`` line on stderr."""
    typer.echo(f"distillmark: error: {message}", err=True)


def info(message: str, quiet: bool = False) -> None:
    """A progress or diagnostic line on stderr, unless ``quiet`` (``--json``)."""
    if not quiet:
        typer.echo(message, err=True)


def require_open_unit(name: str, value: float) -> None:
    """Exit with status 2 unless the option ``name`` lies in (0, 1)."""
    if not 0.0 < value < 1.0:
        err(f"{name} must be in (0, 1), got {value}")
        raise typer.Exit(EXIT_ERROR)


@contextmanager
def errors_exit() -> Iterator[None]:
    """Turn library errors into one line on stderr and exit status 2, never a traceback."""
    try:
        yield
    except DistillmarkError as exc:
        err(str(exc))
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        err("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def input_label(name: str) -> str:
    """How diagnostics name an input: its path, or ``<stdin>`` for ``-``."""
    return "<stdin>" if name == "-" else name


def read_text(name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Read one input (``-`` is stdin) as strict UTF-8; problems become one-line InputErrors.

    ``max_bytes`` holds for the bytes read, not the size the file system reports: a pipe, a
    FIFO or a device is cut off there like a regular file.
    """
    label = input_label(name)
    too_big = (f"{label}: larger than --max-bytes {max_bytes} bytes; split it, or raise "
               "--max-bytes if memory allows")
    data: bytes | None
    if name == "-":
        stream: Any = getattr(sys.stdin, "buffer", sys.stdin)
        if isinstance(stream.read(0), str):  # a text stream (tests): already decoded
            text = stream.read(max_bytes + 1)
            if len(text) > max_bytes:
                raise InputError(too_big)
            return str(text)
        data = read_at_most(stream, max_bytes)
    else:
        path = Path(name)
        if path.is_dir():
            raise InputError(f"{name}: is a directory (give text files)")
        try:
            with open(path, "rb") as fh:
                data = read_at_most(fh, max_bytes)
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror}") from None
    if data is None:
        raise InputError(too_big)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{input_label(name)}: not valid UTF-8: byte 0x{data[exc.start]:02x} "
                         f"at offset {exc.start}") from None
