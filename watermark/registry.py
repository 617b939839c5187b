"""Scheme names -> implementations. Specs name a scheme; this turns the name into the object.

The registry sits above the schemes and below the specs (:mod:`.keys`), which validate their
params here; it reads a spec only through :class:`~.params.SchemeSource`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

import numpy as np

from .context import RowScheme
from .dipmark import DiPmark, DiPmarkParams
from .errors import ParameterError, SpecError
from .greenlist import GreenList, GreenListParams
from .gumbel import Gumbel, GumbelParams
from .params import SchemeParams, SchemeSource
from .tournament import Tournament, TournamentParams
from .transformers_common import TransformersScheme
from .transformers_kgw import TransformersKGW, TransformersKGWParams
from .transformers_synthid import TransformersSynthID, TransformersSynthIDParams

__all__ = ["SCHEMES", "Scheme", "scheme_for", "validate_params"]


class Scheme(Protocol):
    """What detection and the engine adapters use of a scheme (every class in SCHEMES)."""

    name: str
    test: str
    test_params: dict[str, Any]
    key_id: str
    vocab_size: int
    #: Whether the scheme chooses the token itself (sampling) rather than biasing logits.
    samples: bool
    #: Standardised per-unit effect of fully marked text, for power statements.
    default_effect: float
    #: Size of the tuple-key space (keys lie below it), or None when keys span 64 bits.
    n_cells: int | None
    #: Params that are key material, never to be shown.
    secret_params: frozenset[str]

    @property
    def context_width(self) -> int: ...

    def tuple_keys(self, ids: np.ndarray) -> np.ndarray: ...

    def key_scores(self, keys: np.ndarray) -> np.ndarray: ...

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = ...,
                temperature: float = ..., top_p: float = ...) -> np.ndarray: ...

    def in_place_bias(self) -> GreenList | None:
        """The scheme as a green-list bias that an engine may add to its logits in place, on
        their own device and without the numpy round trip of :meth:`process` (the same
        result): the :class:`GreenList` itself; None for every other scheme, which engines
        drive through :meth:`process`."""


#: A scheme class: every one derives from one of the two bases.
SchemeClass = type[RowScheme] | type[TransformersScheme]

#: Scheme name -> (parameter class, scheme class).
SCHEMES: dict[str, tuple[type[SchemeParams], SchemeClass]] = {
    "greenlist": (GreenListParams, GreenList)}
SCHEMES["gumbel"] = (GumbelParams, Gumbel)
SCHEMES["tournament"] = (TournamentParams, Tournament)
SCHEMES["dipmark"] = (DiPmarkParams, DiPmark)
SCHEMES["transformers-kgw"] = (TransformersKGWParams, TransformersKGW)
SCHEMES["transformers-synthid"] = (TransformersSynthIDParams, TransformersSynthID)

#: Named parameter presets (``--preset`` at keygen).
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "greenlist": ("greenlist", {}),
    "unigram": ("greenlist", {"context_width": 0}),
    "selfhash": ("greenlist", {"context_width": 3, "seeding": "selfhash", "combine": "min"}),
}
PRESETS["gumbel"] = ("gumbel", {})
PRESETS["tournament"] = ("tournament", {})
PRESETS["dipmark"] = ("dipmark", {})


def validate_params(scheme: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a spec's parameters; returns them complete (defaults filled in)."""
    try:
        param_cls, _ = SCHEMES[scheme]
    except KeyError:
        raise SpecError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}") from None
    try:
        return param_cls.from_mapping(params).to_dict()
    except ParameterError as exc:
        raise SpecError(str(exc)) from None


def scheme_for(spec: SchemeSource) -> Scheme:
    """The scheme object of a spec (a :class:`~distillmark.watermark.keys.WatermarkSpec`),
    used for both generation and detection."""
    _, cls = SCHEMES[spec.scheme]
    return cast(Scheme, cls.from_spec(spec))


def secret_params(scheme: str) -> frozenset[str]:
    """Names of ``scheme``'s params that are key material, never to be printed (interop
    schemes keyed by their params, e.g. transformers' ``hashing_key``): the scheme class's
    ``secret_params``, empty for schemes keyed by the spec's secret alone."""
    entry = SCHEMES.get(scheme)
    return frozenset(entry[1].secret_params) if entry else frozenset()
