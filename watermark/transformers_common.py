"""What the two schemes that reproduce transformers' own watermarks share.

:mod:`.transformers_kgw` (``"transformers-kgw"``) and :mod:`.transformers_synthid`
(``"transformers-synthid"``) reproduce the green lists and g-values of transformers'
``WatermarkLogitsProcessor`` (``generate(..., watermarking_config=WatermarkingConfig(...))``)
and ``SynthIDTextWatermarkLogitsProcessor`` (``SynthIDTextWatermarkingConfig``) bit for bit, so
distillmark can test text that someone else watermarked with transformers — with an exact test
instead of transformers' z-score. What is reproduced is written in each module (transformers
5.x; checked against the source of 5.24).

Where the key lives
-------------------
These watermarks are keyed by what transformers calls parameters: ``hashing_key`` (KGW) and
``keys`` (SynthID). In a spec of these schemes *the params are the secret*: the spec file's
32-byte ``secret`` is still present (the file format requires it) but keys nothing; its
``key_id`` names the spec file, not the transformers key. The secret params are listed in each
scheme's ``secret_params``; :meth:`WatermarkSpec.public_dict` and ``repr`` redact them.

Both need torch to reproduce torch's CPU generator (the ``hf`` extra); torch is imported on
first use (:func:`import_torch`), never by ``import distillmark``. Green lists drawn by a *CUDA*
(or other device) generator differ: only text generated with the watermark processor on CPU is
covered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MissingDependencyError, ParameterError
from .params import SchemeParams, SchemeSource

__all__ = ["INT64_MAX", "INT64_MIN", "MASK64", "TransformersScheme", "check_ids",
           "import_torch", "ngram_windows"]

MASK64 = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def import_torch() -> Any:
    """torch, imported on first use (the ``hf`` extra)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            f"reproducing transformers' watermark needs torch's CPU generator ({exc.name} is "
            "not installed): pip install 'distillmark[hf]'") from None
    return torch


def check_ids(ids: Any) -> np.ndarray:
    """Token ids to score, checked: ``(n,) int -> (n,) int64``, each ``>= 0``."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ParameterError(f"`ids` must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ParameterError(f"`ids` must hold integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ParameterError(f"token ids must be >= 0, got {int(ids.min())}")
    return ids


def ngram_windows(ids: np.ndarray, n: int) -> np.ndarray:
    """Every contiguous window of ``n`` ids: ``(len - n + 1, n) int64`` (``(0, n)`` if short)."""
    if ids.size < n:
        return np.zeros((0, n), dtype=np.int64)
    return np.lib.stride_tricks.sliding_window_view(ids, n)


class TransformersScheme:
    """Base of the two schemes: construction from a spec whose params are transformers'
    configuration (and its key).

    Args:
        params: the scheme's ``params_class``.
        vocab_size: ``V``.
        key_id: public id echoed in results (it names the spec, not the transformers key).
    """

    name: str
    params_class: type[SchemeParams]
    #: The scheme biases logits or only detects; it never chooses the token itself.
    samples = False
    #: Params that are key material: never printed (see ``WatermarkSpec.public_dict``).
    secret_params: frozenset[str] = frozenset()

    def __init__(self, params: Any, vocab_size: int, *, key_id: str = "") -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.key_id = key_id

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.shown().items())
        return f"{type(self).__name__}(key_id={self.key_id!r}, {shown})"

    def shown(self) -> dict[str, Any]:
        """What ``repr`` shows besides the key id: never key material."""
        return {}

    def in_place_bias(self) -> None:
        """None: engines drive the scheme through ``process`` (``Scheme.in_place_bias``)."""

    @classmethod
    def from_spec(cls, spec: SchemeSource) -> Any:
        return cls(cls.params_class.from_mapping(spec.params), spec.vocab_size,
                   key_id=spec.key_id)
