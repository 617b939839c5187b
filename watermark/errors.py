"""The exceptions distillmark raises.

One base class, :class:`DistillmarkError`, and a few specific kinds that also subclass the
matching builtin, so ``except ValueError`` keeps working for callers that do not know us.
Every message is one line that names the thing at fault, shows the bad value and says the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "DistillmarkError",
    "InputError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "ParameterError",
    "SpecError",
    "TokenizerMismatchError",
]


class DistillmarkError(Exception):
    """Base class of every error distillmark raises on purpose."""


class ParameterError(DistillmarkError, ValueError):
    """A parameter is out of range or of the wrong kind."""


class SpecError(DistillmarkError, ValueError):
    """A watermark spec (key file) is missing, unreadable or invalid."""


class TokenizerMismatchError(DistillmarkError, ValueError):
    """The tokenizer at hand is not the one the spec was made for."""


class InputError(DistillmarkError, ValueError):
    """Input text or data cannot be used (empty, not UTF-8, a directory, ...)."""


class ModelNotFoundError(DistillmarkError, FileNotFoundError):
    """A model file or directory cannot be found or is not a model."""


class MissingDependencyError(DistillmarkError, ImportError):
    """An optional dependency (an extra) is needed but not installed."""

    @classmethod
    @contextmanager
    def for_extra(cls, extra: str) -> Iterator[None]:
        """Around the imports of the optional extra ``extra``: an ImportError becomes this
        error, naming the missing module and the install line."""
        try:
            yield
        except ImportError as exc:
            raise cls(f"this needs the {extra!r} extra ({exc.name} is not installed): "
                      f"pip install 'distillmark[{extra}]'") from None
