"""Scheme names -> implementations. Specs name a scheme; this turns the name into the object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import ParameterError, SpecError
from .greenlist import GreenList, GreenListParams

if TYPE_CHECKING:
    from .keys import WatermarkSpec

__all__ = ["SCHEMES", "Scheme", "scheme_for", "validate_params"]

Scheme = GreenList

#: Scheme name -> (parameter class, scheme class).
SCHEMES: dict[str, tuple[type, type]] = {"greenlist": (GreenListParams, GreenList)}

#: Named parameter presets (``--preset`` at keygen).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "greenlist": ("greenlist", {}),
    "unigram": ("greenlist", {"context_width": 0}),
    "selfhash": ("greenlist", {"context_width": 3, "seeding": "selfhash", "combine": "min"}),
}


def validate_params(scheme: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec's parameters; returns them complete (defaults filled in)."""
    try:
        param_cls, _ = SCHEMES[scheme]
    except KeyError:
        raise SpecError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}") from None
    try:
        return param_cls.from_mapping(params).to_dict()  # type: ignore[attr-defined, no-any-return]
    except ParameterError as exc:
        raise SpecError(str(exc)) from None


def scheme_for(spec: WatermarkSpec) -> GreenList:
    """The scheme object of a spec (used for both generation and detection)."""
    _, cls = SCHEMES[spec.scheme]
    return cls.from_spec(spec)  # type: ignore[attr-defined, no-any-return]
