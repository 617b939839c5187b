"""What every ``distillmark`` command shares: the Typer app, exit codes, diagnostics and inputs.

Exit codes, like grep: 0 = a watermark was found, 1 = not found or insufficient evidence,
2 = usage or input error. Human output goes to stdout, diagnostics to stderr; ``--json`` prints
each result's ``to_dict()`` (one object per input, JSON Lines for several). Library errors
(:class:`~distillmark.watermark.DistillmarkError`) become one line on stderr and exit status 2
inside :func:`errors_exit`, never a traceback.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from distillmark.watermark import DistillmarkError, InputError
from distillmark.watermark.files import read_at_most

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_ERROR = 0, 1, 2

EXIT_HELP = ("Exit status: 0 if a watermark was found, 1 if not (or the evidence was "
             "insufficient), 2 on a usage or input error.")

DEFAULT_MAX_BYTES = 1 << 30

app = typer.Typer(
    name="distillmark",
    help="Watermark language-model output and test texts for the watermark. " + EXIT_HELP,
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
        raise typer.Exit(130) from None


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
