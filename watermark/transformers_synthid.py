"""transformers' SynthID-Text watermark (``SynthIDTextWatermarkingConfig``), reproduced for
detection: scheme ``"transformers-synthid"``.

What is reproduced (transformers 5.x; checked against the source of 5.24)
-------------------------------------------------------------------------
N-gram length ``L``, one key per layer:

* ``accumulate_hash``: for each element x, ``h = (h + x) * 6364136223846793005 + 1`` in int64
  with wraparound; the n-gram hash starts at 1 over the ``L - 1`` context tokens then the token;
  each layer ``l`` then hashes its key: ``(H + keys[l]) * A + 1``;
* ``g = table[that % table_size]`` (floor modulo), ``table = torch.randint(0, 2, (size,),
  generator=torch.Generator().manual_seed(sampling_table_seed))``.

torch's CPU generator draws the table (:mod:`.transformers_common`: where the key lives, which
devices are covered).

Statistics
----------
Each distinct tuple contributes its ``m`` g-values (one per layer); under the null
hypothesis they are draws of the fixed public table at effectively random indices, so their
sum is tested against ``Binomial(n * m, p)`` with ``p`` the table's exact fraction of ones
(test "tournament-mean", shared with distillmark's own tournament scheme), or the
integer-weighted sum against its exact null ("tournament-weighted"). The assumption
(distinct tuples hash to independent uniform table indices) is discussed in docs/interop.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .errors import DistillmarkError, ParameterError
from .params import SchemeParams
from .transformers_common import (
    INT64_MAX,
    INT64_MIN,
    MASK64,
    TransformersScheme,
    check_ids,
    import_torch,
    ngram_windows,
)

__all__ = ["SYNTHID_SCHEME_NAME", "TransformersSynthID", "TransformersSynthIDParams",
           "synthid_default_weights"]

SYNTHID_SCHEME_NAME = "transformers-synthid"

_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1
_SYNTHID_MAX_TABLE = 2**24
_SYNTHID_SCORES = ("mean", "weighted")


def synthid_default_weights(depth: int) -> tuple[int, ...]:
    """Integer layer weights of the weighted score: synthid-text's ``linspace(10, 1, depth)``,
    rounded (layer 0, applied first at generation, carries the most signal)."""
    if depth == 1:
        return (1,)
    return tuple(round(float(w)) for w in np.linspace(10.0, 1.0, depth))


@dataclass(frozen=True)
class TransformersSynthIDParams(SchemeParams):
    """transformers' ``SynthIDTextWatermarkingConfig`` and the detection score.

    Attributes:
        keys: one int64 key per tournament layer (the watermark's key material).
        ngram_len: ``L``: a token's g-values depend on it and the ``L - 1`` tokens before it.
        sampling_table_size: size of the g-value table (1 .. 2**24).
        sampling_table_seed: seed of the table's CPU generator (public; default 0).
        context_history_size: generation only (repeated contexts are left unwatermarked).
        skip_first_ngram_calls: generation only.
        score: ``"mean"`` (test "tournament-mean") or ``"weighted"`` (test
            "tournament-weighted"), both with ``p`` = the table's exact mean.
        weights: integer layer weights of the weighted score, one per key;
            default :func:`synthid_default_weights`.
    """

    scheme_name = SYNTHID_SCHEME_NAME
    required: ClassVar[Mapping[str, str]] = {
        "keys": "the SynthIDTextWatermarkingConfig's keys, one per layer"}
    numpy_integers = True

    keys: tuple[int, ...] = field(repr=False)
    ngram_len: int = 5
    sampling_table_size: int = 2**16
    sampling_table_seed: int = 0
    context_history_size: int = 1024
    skip_first_ngram_calls: bool = False
    score: str = "mean"
    weights: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        keys = self.keys
        if isinstance(keys, (str, bytes)) or not isinstance(keys, (Sequence, np.ndarray)) \
                or len(keys) == 0:
            raise ParameterError("`keys` must be a non-empty list of integers (one per layer)")
        if not all(self.is_integer(k) and INT64_MIN <= k <= INT64_MAX for k in keys):
            raise ParameterError("`keys` must hold integers in the int64 range")
        keys = tuple(int(k) for k in keys)
        self.integer("ngram_len", 1, 1024)
        size = self.integer("sampling_table_size", 1, _SYNTHID_MAX_TABLE)
        self.integer("sampling_table_seed", 0, MASK64)
        self.integer("context_history_size", 1, 2**31 - 1)
        self.flag("skip_first_ngram_calls")
        self.choice("score", _SYNTHID_SCORES)
        # Layers whose keys agree modulo the table size (power of two) or modulo 2**64 draw
        # the same g-values: counting both would double the evidence.
        mod = size if size & (size - 1) == 0 else 2**64
        seen: dict[int, int] = {}
        for i, k in enumerate(keys):
            r = k % mod
            if r in seen:
                raise ParameterError(f"`keys` {seen[r]} and {i} (0-based) give identical "
                                     f"g-values (equal modulo {mod}); use distinct keys")
            seen[r] = i
        weights = self.weights
        if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)):
            raise ParameterError("`weights` must be a list of positive integers")
        if len(weights) == 0:
            weights = synthid_default_weights(len(keys))
        if len(weights) != len(keys) or not all(self.is_integer(w) and 1 <= w <= 1000
                                                for w in weights):
            raise ParameterError(f"`weights` must hold {len(keys)} integers in 1..1000 (one per "
                                 f"key), got {list(weights)!r}")
        self._store("keys", keys)
        self._store("weights", tuple(int(w) for w in weights))


def _lcg(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One step of transformers' ``accumulate_hash``: ``(h + x) * A + 1`` modulo 2**64."""
    return (h + x) * np.uint64(_LCG_MULTIPLIER) + np.uint64(_LCG_INCREMENT)


class TransformersSynthID(TransformersScheme):
    """transformers' SynthID-Text watermark for one spec: detection only.

    Args:
        params: :class:`TransformersSynthIDParams`.
        vocab_size: the tokenizer's size (unused by the hashing; checked by adapters).
        key_id: public id echoed in results (it names the spec, not the keys).
    """

    name = SYNTHID_SCHEME_NAME
    params_class = TransformersSynthIDParams
    #: Standardised per-unit effect of fully marked text (power statements only).
    default_effect = 0.60
    secret_params = frozenset({"keys"})

    def __init__(self, params: TransformersSynthIDParams, vocab_size: int, *,
                 key_id: str = "") -> None:
        super().__init__(params, vocab_size, key_id=key_id)
        self.depth = len(params.keys)
        self._keys_u64 = np.array([k & MASK64 for k in params.keys], dtype=np.uint64)
        size = params.sampling_table_size
        self._pow2 = size & (size - 1) == 0
        #: Size of the tuple-key space: the table when keys are reduced modulo it, else none.
        self.n_cells: int | None = size if self._pow2 else None
        #: Detection's test: the tournament tests of ``distillmark.verify.nulls`` with ``p``.
        self.test = f"tournament-{params.score}"

    def shown(self) -> dict[str, Any]:
        p = self.params
        return {"depth": self.depth, "ngram_len": p.ngram_len,
                "sampling_table_size": p.sampling_table_size,
                "sampling_table_seed": p.sampling_table_seed, "score": p.score}

    @property
    def context_width(self) -> int:
        """Tokens before a scored token that its g-values depend on: ``ngram_len - 1``."""
        return self.params.ngram_len - 1

    @cached_property
    def sampling_table(self) -> np.ndarray:
        """transformers' table ``torch.randint(0, 2, (size,), generator=manual_seed(seed))``:
        ``(size,) uint8``."""
        torch = import_torch()
        g = torch.Generator(device="cpu").manual_seed(self.params.sampling_table_seed)
        t = torch.randint(0, 2, (self.params.sampling_table_size,), generator=g)
        return t.numpy().astype(np.uint8)

    @cached_property
    def table_mean(self) -> float:
        """The table's exact fraction of ones: each g-value's null probability of being 1."""
        return float(np.count_nonzero(self.sampling_table)) / self.sampling_table.size

    @property
    def test_params(self) -> dict[str, Any]:
        p = self.table_mean
        if not 0.0 < p < 1.0:
            raise ParameterError(f"the sampling table (size {self.params.sampling_table_size}, "
                                 f"seed {self.params.sampling_table_seed}) is constant: "
                                 "g-values carry no signal")
        if self.params.score == "weighted":
            return {"p": p, "weights": list(self.params.weights)}
        return {"p": p}

    def ngram_hashes(self, ids: np.ndarray) -> np.ndarray:
        """``accumulate_hash(1, ngram)`` of each n-gram: ``(n,) -> (max(n - L + 1, 0),) uint64``."""
        ids = check_ids(ids)
        win = ngram_windows(ids, self.params.ngram_len).astype(np.uint64)
        h = np.ones(win.shape[0], dtype=np.uint64)
        for j in range(win.shape[1]):
            h = _lcg(h, win[:, j])
        return h

    def tuple_keys(self, ids: np.ndarray) -> np.ndarray:
        """Tuple key of every scored token: ``(n,) int -> (max(n - L + 1, 0),) uint64``.

        Entry ``i`` belongs to token ``ids[L - 1 + i]``. The key is what the token's g-values
        depend on: the n-gram's 64-bit hash, reduced modulo the table size when that is a power
        of two (only those bits reach the table). Equal n-grams have equal keys; distinct
        n-grams share a key only if they share every g-value, so deduplicating keys never
        counts one draw twice.
        """
        h = self.ngram_hashes(ids)
        if self._pow2:
            return h & np.uint64(self.params.sampling_table_size - 1)
        return h

    def key_scores(self, keys: np.ndarray) -> np.ndarray:
        """g-values of each tuple key: ``(n,) uint64 -> (n, depth) uint8``."""
        keys = np.asarray(keys, dtype=np.uint64)
        x = _lcg(keys[:, None], self._keys_u64[None, :])
        size = self.params.sampling_table_size
        if self._pow2:
            idx = x & np.uint64(size - 1)
        else:  # torch's % is a floor modulo of the signed value
            idx = np.mod(x.view(np.int64), size)
        return self.sampling_table[idx.astype(np.intp)]

    def g_values(self, ids: np.ndarray) -> np.ndarray:
        """g-values of every n-gram, no dedup: ``(n,) -> (max(n - L + 1, 0), depth) uint8``,
        equal to transformers' ``compute_g_values(ids[None])[0]``."""
        return self.key_scores(self.tuple_keys(ids))

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """Not provided: generate with transformers' own watermark."""
        raise DistillmarkError(
            f"{SYNTHID_SCHEME_NAME} is detection only: generate with transformers' own "
            "watermark, model.generate(..., do_sample=True, watermarking_config="
            "SynthIDTextWatermarkingConfig(keys=..., ngram_len=...)) on CPU (other devices "
            "draw another sampling table)")
