"""Scheme parameters: the base of every scheme's parameter class, and what a scheme is built from.

A scheme's parameters are a frozen dataclass derived from :class:`SchemeParams`, validated on
construction: its ``__post_init__`` checks each field with the validators here
(:meth:`~SchemeParams.number`, :meth:`~SchemeParams.integer`, :meth:`~SchemeParams.choice`,
:meth:`~SchemeParams.flag`), each of which raises one :class:`ParameterError` line that names
the field and shows the bad value. :meth:`SchemeParams.from_mapping` builds the parameters from
a spec's ``params`` (unknown names and missing required ones refused) and
:meth:`SchemeParams.to_dict` gives back the JSON form a spec stores.

A scheme is built from a spec (:class:`~distillmark.watermark.keys.WatermarkSpec`); schemes and
the registry only read the few fields :class:`SchemeSource` names, so they sit below the spec
module and never import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from .errors import ParameterError

if TYPE_CHECKING:
    from typing import Self

__all__ = ["SchemeParams", "SchemeSource"]


class SchemeSource(Protocol):
    """What a scheme is built from: the fields of a spec that schemes read."""

    @property
    def secret(self) -> bytes: ...

    @property
    def scheme(self) -> str: ...

    @property
    def params(self) -> Mapping[str, Any]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def key_id(self) -> str: ...


@dataclass(frozen=True)
class SchemeParams:
    """Base of the schemes' frozen parameter dataclasses (it has no fields of its own).

    Subclasses set :attr:`scheme_name`, and :attr:`required` for parameters that have no
    default a key could be made with.
    """

    #: The scheme's registered name, as messages show it.
    scheme_name: ClassVar[str]
    #: Parameters a spec must give: name -> what it is (said when it is missing).
    required: ClassVar[Mapping[str, str]] = {}
    #: Whether integer fields also take numpy integers (then stored as ``int``).
    numpy_integers: ClassVar[bool] = False

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> Self:
        """The parameters named in ``params``, validated; the others keep their defaults."""
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ParameterError(f"unknown {cls.scheme_name} parameter(s): "
                                 f"{', '.join(sorted(unknown))}")
        for name, what in cls.required.items():
            if name not in params:
                raise ParameterError(f"`{name}` is required for {cls.scheme_name} ({what})")
        return cls(**dict(params))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the parameters, as a spec stores them (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    # -- validators, for __post_init__ --------------------------------------------------------
    def _store(self, name: str, value: Any) -> None:
        """Replace a field's value (normalised) in the frozen instance."""
        object.__setattr__(self, name, value)

    def given(self, name: str) -> Any:
        """Field ``name`` as it was given (what messages show)."""
        return getattr(self, name)

    def number(self, name: str) -> float:
        """Field ``name`` as a float; anything but a finite real number is refused."""
        v = self.given(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ParameterError(f"`{name}` must be a finite number, got {v!r}")
        return float(v)

    def is_integer(self, value: Any) -> bool:
        """Whether ``value`` counts as an integer here (never a bool)."""
        kinds = (int, np.integer) if self.numpy_integers else (int,)
        return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))

    def integer(self, name: str, lo: int | None = None, hi: int | None = None) -> int:
        """Field ``name`` as an int. With bounds, a value outside ``lo..hi`` is refused in the
        same line as a non-integer."""
        v = self.given(name)
        if lo is not None and hi is not None:
            if not self.is_integer(v) or not lo <= v <= hi:
                raise ParameterError(f"`{name}` must be an integer in {lo}..{hi}, got {v!r}")
        elif not self.is_integer(v):
            raise ParameterError(f"`{name}` must be an integer, got {v!r}")
        return int(v)

    def choice(self, name: str, options: Sequence[str]) -> str:
        """Field ``name``, which must be one of ``options``."""
        v = self.given(name)
        if v not in options:
            raise ParameterError(f"`{name}` must be one of {', '.join(options)}, got {v!r}")
        return str(v)

    def flag(self, name: str) -> bool:
        """Field ``name``, which must be a bool."""
        v = self.given(name)
        if not isinstance(v, bool):
            raise ParameterError(f"`{name}` must be true or false, got {v!r}")
        return v
