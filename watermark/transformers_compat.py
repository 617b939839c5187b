"""Detectors byte-compatible with the watermarks that transformers itself puts into text.

Two schemes, registered as ``"transformers-kgw"`` and ``"transformers-synthid"``, reproduce the
green lists and g-values of transformers' own ``WatermarkLogitsProcessor`` (``generate(...,
watermarking_config=WatermarkingConfig(...))``) and ``SynthIDTextWatermarkLogitsProcessor``
(``SynthIDTextWatermarkingConfig``) bit for bit, so distillmark can test text that someone else
watermarked with transformers — with an exact test instead of transformers' z-score.

Where the key lives
-------------------
These watermarks are keyed by what transformers calls parameters: ``hashing_key`` (KGW) and
``keys`` (SynthID). In a spec of these schemes *the params are the secret*: the spec file's
32-byte ``secret`` is still present (the file format requires it) but keys nothing; its
``key_id`` names the spec file, not the transformers key. The secret params are listed in each
scheme's ``secret_params``; :meth:`WatermarkSpec.public_dict` and ``repr`` redact them.

What is reproduced (transformers 5.x; checked against the source of 5.24)
--------------------------------------------------------------------------------
KGW (``transformers-kgw``), model vocabulary ``V``, ratio ``gamma``, key ``K``, width ``h``:

* green list of a prefix: ``rng.manual_seed(seed % (2**64 - 1))`` then
  ``torch.randperm(V, generator=rng)[:int(V * gamma)]`` on a **CPU** ``torch.Generator``;
* ``lefthash``: ``seed = K * prefix[-1]`` (a Python int: only the last token counts, whatever h);
* ``selfhash``: ``table = torch.randperm(1_000_003)`` drawn after ``manual_seed(K)``;
  ``a = table[prefix[-h:] % 1_000_003] + 1``, ``b = table[prefix[-1] % 1_000_003] + 1``,
  ``seed = min(K * a * b)`` computed in int64 *with wraparound* (negative seeds occur; the
  Python modulo then maps them to ``seed + 2**64 - 1``);
* detection (``WatermarkDetector(..., ignore_repeated_ngrams=True)``): every contiguous n-gram,
  ``n = h + 1`` (lefthash) or ``n = h`` (selfhash); its last token is green if it is in the
  green list of ``ngram[:-1]`` (lefthash) or of the whole n-gram (selfhash); each distinct
  n-gram counts once. Hence the scheme's :attr:`~TransformersKGW.context_width` (tokens before
  a scored token) is ``h`` for lefthash and ``h - 1`` for selfhash.

SynthID (``transformers-synthid``), n-gram length ``L``, one key per layer:

* ``accumulate_hash``: for each element x, ``h = (h + x) * 6364136223846793005 + 1`` in int64
  with wraparound; the n-gram hash starts at 1 over the ``L - 1`` context tokens then the token;
  each layer ``l`` then hashes its key: ``(H + keys[l]) * A + 1``;
* ``g = table[that % table_size]`` (floor modulo), ``table = torch.randint(0, 2, (size,),
  generator=torch.Generator().manual_seed(sampling_table_seed))``.

Both need torch to reproduce torch's CPU generator (the ``hf`` extra); torch is imported on
first use, never by ``import distillmark``. Green lists drawn by a *CUDA* (or other device)
generator differ: only text generated with the watermark processor on CPU is covered.

Statistics
----------
KGW: the count of green tuples against ``Binomial(n_scored, int(V * gamma) / V)``. Green lists
have a fixed size, so tuples that share a list are slightly *negatively* dependent and the
binomial tail is then conservative. By default tuples are transformers' n-grams (so counts
equal ``WatermarkDetector``'s); ``dedup_by="seed"`` instead counts each (green list, token)
once, the unit the green bit actually depends on (see docs/interop.md: with lefthash and h >= 2
distinct n-grams share a green bit and the n-gram count overstates the evidence).

SynthID: each distinct tuple contributes its ``m`` g-values (one per layer); under the null
hypothesis they are draws of the fixed public table at effectively random indices, so their
sum is tested against ``Binomial(n * m, p)`` with ``p`` the table's exact fraction of ones
(test "tournament-mean", shared with distillmark's own tournament scheme), or the
integer-weighted sum against its exact null ("tournament-weighted"). The assumption
(distinct tuples hash to independent uniform table indices) is discussed in docs/interop.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import DistillmarkError, MissingDependencyError, ParameterError
from .params import SchemeParams

if TYPE_CHECKING:
    from .keys import WatermarkSpec

__all__ = [
    "KGW_SCHEME_NAME",
    "SYNTHID_SCHEME_NAME",
    "TRANSFORMERS_PUBLIC_HASHING_KEY",
    "TransformersKGW",
    "TransformersKGWParams",
    "TransformersSynthID",
    "TransformersSynthIDParams",
    "synthid_default_weights",
]

KGW_SCHEME_NAME = "transformers-kgw"
SYNTHID_SCHEME_NAME = "transformers-synthid"
#: transformers' default ``hashing_key`` ("the millionth prime"): public, so anyone can detect
#: and forge text watermarked with it. Never a default here: pass it explicitly to test for it.
TRANSFORMERS_PUBLIC_HASHING_KEY = 15485863

_KGW_TABLE_SIZE = 1_000_003
_SEED_MODULUS = 2**64 - 1
_MASK64 = 2**64 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: transformers' selfhash checks this many top candidates per step (a constant there).
_SELFHASH_TOP_K = 40
_DEDUP_BY = ("ngram", "seed")
_SEEDINGS = ("lefthash", "selfhash")
#: Dense (per-call) tuple keys: the low 40 bits index the call's distinct n-grams, the high 24
#: bits hold the call's generation number, checked by ``key_scores``.
_DENSE_INDEX_BITS = 40
_GREEN_CACHE = 4096

_LCG_MULTIPLIER = 6364136223846793005
_LCG_INCREMENT = 1
_SYNTHID_MAX_TABLE = 2**24
_SYNTHID_SCORES = ("mean", "weighted")


def _torch() -> Any:
    """torch, imported on first use (the ``hf`` extra)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            f"reproducing transformers' watermark needs torch's CPU generator ({exc.name} is "
            "not installed): pip install 'distillmark[hf]'") from None
    return torch


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_ids(ids: Any) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ParameterError(f"`ids` must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ParameterError(f"`ids` must hold integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and ids.min() < 0:
        raise ParameterError(f"token ids must be >= 0, got {int(ids.min())}")
    return ids


def _windows(ids: np.ndarray, n: int) -> np.ndarray:
    """Every contiguous window of ``n`` ids: ``(len - n + 1, n) int64`` (``(0, n)`` if short)."""
    if ids.size < n:
        return np.zeros((0, n), dtype=np.int64)
    return np.lib.stride_tricks.sliding_window_view(ids, n)


# ============================================================================================
# KGW (WatermarkingConfig)
# ============================================================================================


@dataclass(frozen=True)
class TransformersKGWParams(SchemeParams):
    """transformers' ``WatermarkingConfig``, plus the model vocabulary and the dedup unit.

    Attributes:
        hashing_key: ``K``, the watermark's key (transformers' default 15485863 is public), an
            integer in 0 .. 2**63 - 1 (selfhash multiplies it in int64).
        greenlist_ratio: ``gamma`` in (0, 1); ``int(V * gamma)`` tokens are green.
        bias: ``delta`` added to green logits at generation (transformers' ``bias``).
        context_width: transformers' ``context_width``, ``h >= 1``.
        seeding_scheme: ``"lefthash"`` or ``"selfhash"``.
        vocab_size: the *model's* vocabulary size ``V`` (``model.config.get_text_config()
            .vocab_size``), which may differ from the tokenizer's; ``None``: the spec's
            tokenizer size.
        dedup_by: ``"seed"`` (default: each distinct (green-list seed, token) once, the unit
            the green bit depends on, which keeps the test exact) or ``"ngram"`` (each distinct
            n-gram once, exactly as transformers' ``WatermarkDetector(ignore_repeated_ngrams=
            True)``: the same counts as transformers, but false positives above the nominal
            level for context_width >= 2 or selfhash; see docs/interop.md).
    """

    scheme_name = KGW_SCHEME_NAME
    required: ClassVar[Mapping[str, str]] = {"hashing_key": "the key of the WatermarkingConfig; transformers' default "
                                             f"{TRANSFORMERS_PUBLIC_HASHING_KEY} is public"}
    numpy_integers = True

    hashing_key: int = field(repr=False)
    greenlist_ratio: float = 0.25
    bias: float = 2.0
    context_width: int = 1
    seeding_scheme: str = "lefthash"
    vocab_size: int | None = None
    dedup_by: str = "seed"

    def __post_init__(self) -> None:
        k = self.hashing_key
        if not self.is_integer(k) or not 0 <= k <= _INT64_MAX:
            raise ParameterError(f"`hashing_key` must be an integer in 0..2**63-1, got "
                                 f"{'out of range' if self.is_integer(k) else type(k).__name__}")
        ratio, bias = self.number("greenlist_ratio"), self.number("bias")
        if not 0.0 < ratio < 1.0:
            raise ParameterError(f"`greenlist_ratio` must be in (0, 1), got {self.greenlist_ratio}")
        if bias < 0.0:
            raise ParameterError(f"`bias` must be >= 0, got {self.bias}")
        h = self.integer("context_width", 1, 64)
        self.choice("seeding_scheme", _SEEDINGS)
        v = self.vocab_size
        if v is not None and (not self.is_integer(v) or not 2 <= v < 2**31):
            raise ParameterError(f"`vocab_size` must be an integer in 2..2**31-1 or null, "
                                 f"got {v!r}")
        self.choice("dedup_by", _DEDUP_BY)
        self._store("hashing_key", int(k))
        self._store("greenlist_ratio", ratio)
        self._store("bias", bias)
        self._store("context_width", h)
        if v is not None:
            self._store("vocab_size", int(v))


class TransformersKGW:
    """transformers' KGW watermark (``WatermarkingConfig``) for one spec: detection and generation.

    Args:
        params: :class:`TransformersKGWParams`.
        vocab_size: the model's ``V`` when ``params.vocab_size`` is ``None``.
        key_id: public id echoed in results (it names the spec, not ``hashing_key``).

    Not thread-safe: one torch generator is reseeded per green list (as transformers does).
    """

    name = KGW_SCHEME_NAME
    #: Standardised per-unit effect of fully marked text (power statements only).
    default_effect = 0.65
    #: Tuple keys span all 64 bits (seed and token): no bounded key space.
    n_cells: int | None = None
    samples = False
    test = "binomial"
    #: Params that are key material: never printed (see ``WatermarkSpec.public_dict``).
    secret_params = frozenset({"hashing_key"})

    def __init__(self, params: TransformersKGWParams, vocab_size: int | None = None, *,
                 key_id: str = "") -> None:
        V = params.vocab_size if params.vocab_size is not None else vocab_size
        if V is None or not _is_int(V) or V < 2:
            raise ParameterError(f"`vocab_size` must be an integer >= 2, got {V!r}")
        self.params = params
        self.vocab_size = int(V)
        self.key_id = key_id
        self.greenlist_size = int(self.vocab_size * params.greenlist_ratio)
        if not 0 < self.greenlist_size < self.vocab_size:
            raise ParameterError(f"`greenlist_ratio` {params.greenlist_ratio} leaves "
                                 f"{self.greenlist_size} of {self.vocab_size} tokens green; "
                                 "need at least one green and one red token")
        #: The exact null probability that a token is green: ``int(V * gamma) / V``.
        self.gamma_effective = self.greenlist_size / self.vocab_size
        self.test_params = {"p": self.gamma_effective}
        h = params.context_width
        self.selfhash = params.seeding_scheme == "selfhash"
        #: Length of the n-grams transformers' detector scores.
        self.ngram_len = h if self.selfhash else h + 1
        self._bits = (self.vocab_size - 1).bit_length()
        #: Whether an n-gram packs into one 64-bit tuple key (else keys are per-call dense ids).
        self.packed_keys = self.ngram_len * self._bits <= 64
        self._dense_gen = 0
        self._dense: tuple[int, np.ndarray] | None = None
        self._green_packed = lru_cache(maxsize=_GREEN_CACHE)(self._compute_green_packed)

    @classmethod
    def from_spec(cls, spec: WatermarkSpec) -> TransformersKGW:
        return cls(TransformersKGWParams.from_mapping(spec.params), spec.vocab_size,
                   key_id=spec.key_id)

    def __repr__(self) -> str:
        p = self.params
        return (f"TransformersKGW(key_id={self.key_id!r}, seeding_scheme={p.seeding_scheme!r}, "
                f"context_width={p.context_width}, greenlist_ratio={p.greenlist_ratio}, "
                f"bias={p.bias}, vocab_size={self.vocab_size}, dedup_by={p.dedup_by!r})")

    @property
    def context_width(self) -> int:
        """Tokens before a scored token that its score depends on: ``n - 1`` (``h`` for
        lefthash, ``h - 1`` for selfhash). Not ``params.context_width``."""
        return self.ngram_len - 1

    # -- torch's generator -------------------------------------------------------------------
    @cached_property
    def _generator(self) -> Any:
        return _torch().Generator(device="cpu")

    @cached_property
    def table(self) -> np.ndarray:
        """Selfhash's ``randperm(1_000_003)`` after ``manual_seed(K)``: ``(1000003,) int64``."""
        torch = _torch()
        g = torch.Generator(device="cpu")
        g.manual_seed(self.params.hashing_key)
        return torch.randperm(_KGW_TABLE_SIZE, generator=g).numpy()

    def raw_seeds(self, prefixes: np.ndarray) -> np.ndarray:
        """transformers' seed *before* ``% (2**64 - 1)`` for each prefix ``(k, w) int``.

        selfhash: ``min(K * a * b)`` as int64, wraparound included (may be negative), over the
        last ``h`` tokens; lefthash: ``K * prefix[-1]`` as Python ints (``(k,) object``).
        """
        prefixes = np.asarray(prefixes, dtype=np.int64)
        if prefixes.ndim != 2 or prefixes.shape[1] < 1:
            raise ParameterError(f"`prefixes` must be (k, w) with w >= 1, got {prefixes.shape}")
        if not self.selfhash:
            K = self.params.hashing_key
            return np.array([K * int(t) for t in prefixes[:, -1]], dtype=object)
        win = prefixes[:, -self.params.context_width:]
        tab = self.table
        a = (tab[win % _KGW_TABLE_SIZE] + 1).astype(np.uint64)
        b = (tab[win[:, -1] % _KGW_TABLE_SIZE] + 1).astype(np.uint64)
        prod = (np.uint64(self.params.hashing_key) * a) * b[:, None]  # wraps modulo 2**64
        return prod.view(np.int64).min(axis=1)

    def seeds(self, prefixes: np.ndarray) -> np.ndarray:
        """The seed given to ``manual_seed`` (``raw % (2**64 - 1)``) per prefix: ``(k,) uint64``."""
        prefixes = np.asarray(prefixes, dtype=np.int64)
        if not self.selfhash:
            if prefixes.ndim != 2 or prefixes.shape[1] < 1:
                raise ParameterError(f"`prefixes` must be (k, w) with w >= 1, "
                                     f"got {prefixes.shape}")
            K = self.params.hashing_key
            uniq, inverse = np.unique(prefixes[:, -1], return_inverse=True)
            seeds = np.array([(K * t) % _SEED_MODULUS for t in uniq.tolist()], dtype=np.uint64)
            return seeds[inverse.reshape(-1)]
        raw = self.raw_seeds(prefixes)
        # Python's modulo of a negative int64 v by 2**64 - 1 is v + 2**64 - 1: as uint64 that
        # is (v + 2**64) - 1; non-negative values are below the modulus and stay as they are.
        return raw.view(np.uint64) - (raw < 0).astype(np.uint64)

    def green_ids(self, prefix: Sequence[int] | np.ndarray) -> np.ndarray:
        """transformers' green list of one prefix, in its order: ``(int(V * gamma),) int64``.

        ``prefix`` is what transformers' ``_get_greenlist_ids`` receives: the context (lefthash)
        or the context and the candidate (selfhash).
        """
        seed = int(self.seeds(np.asarray(prefix, dtype=np.int64)[None, :])[0])
        torch = _torch()
        g = self._generator
        g.manual_seed(seed)
        return torch.randperm(self.vocab_size, generator=g)[:self.greenlist_size].numpy()

    def _compute_green_packed(self, seed: int) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[self.green_ids_for_seed(seed)] = True
        return np.packbits(mask)

    def green_ids_for_seed(self, seed: int) -> np.ndarray:
        """Green ids of one ``manual_seed`` value: ``(int(V * gamma),) int64``."""
        torch = _torch()
        g = self._generator
        g.manual_seed(int(seed))
        return torch.randperm(self.vocab_size, generator=g)[:self.greenlist_size].numpy()

    def is_green(self, seeds: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Whether ``tokens[i]`` is in the green list of ``seeds[i]``: ``(k,), (k,) -> (k,) bool``.

        One ``randperm`` per distinct seed (cached, LRU of 4096 lists); tokens ``>= V`` are
        never green.
        """
        seeds = np.asarray(seeds, dtype=np.uint64)
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.zeros(seeds.shape, dtype=bool)
        if not seeds.size:
            return out
        order = np.argsort(seeds, kind="stable")
        s_sorted = seeds[order]
        starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
        ends = np.append(starts[1:], s_sorted.size)
        V = self.vocab_size
        for a, b in zip(starts.tolist(), ends.tolist()):
            idx = order[a:b]
            t = tokens[idx]
            ok = t < V
            if not ok.any():
                continue
            packed = self._green_packed(int(s_sorted[a]))
            tv = t[ok]
            bits = (packed[tv >> 3] >> (7 - (tv & 7)).astype(np.uint8)) & 1
            out[idx[ok]] = bits.astype(bool)
        return out

    def _check_vocab(self, ids: np.ndarray) -> None:
        if ids.size and ids.max() >= self.vocab_size:
            raise ParameterError(f"token id {int(ids.max())} is outside the model vocabulary "
                                 f"0..{self.vocab_size - 1} (wrong tokenizer or `vocab_size`?)")

    # -- detection ---------------------------------------------------------------------------
    def _units(self, ngrams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(seed, scored token) of n-grams ``(k, n)``: what the green bit depends on."""
        prefixes = ngrams if self.selfhash else ngrams[:, :-1]
        return self.seeds(prefixes), ngrams[:, -1]

    def tuple_keys(self, ids: np.ndarray) -> np.ndarray:
        """Tuple key of every scored token: ``ids (n,) int -> (max(n - ngram_len + 1, 0),) uint64``.

        Entry ``i`` belongs to token ``ids[ngram_len - 1 + i]``. ``dedup_by="ngram"``: equal
        keys iff equal n-grams — the token ids packed into 64 bits when ``ngram_len *
        bit_length(V - 1) <= 64`` (e.g. up to 4 tokens at V = 49,152), otherwise *dense ids*
        of this call's distinct n-grams, valid only for ``key_scores`` on this object until the
        next ``tuple_keys`` call (so not comparable across texts). ``dedup_by="seed"``:
        ``(seed mod 2**32) << 32 | token`` (torch's CPU generator reads only the low 32 bits of
        a seed; checked at run time).
        """
        ids = _check_ids(ids)
        self._check_vocab(ids)
        win = _windows(ids, self.ngram_len)
        if self.params.dedup_by == "seed":
            _check_seed_width()
            seeds, tokens = self._units(win)
            return ((seeds & np.uint64(0xFFFFFFFF)) << np.uint64(32)) | tokens.astype(np.uint64)
        if self.packed_keys:
            keys = np.zeros(win.shape[0], dtype=np.uint64)
            for j in range(self.ngram_len):
                keys = (keys << np.uint64(self._bits)) | win[:, j].astype(np.uint64)
            return keys
        uniq, inverse = np.unique(win, axis=0, return_inverse=True)
        self._dense_gen = (self._dense_gen + 1) % (1 << (64 - _DENSE_INDEX_BITS))
        self._dense = (self._dense_gen, uniq)
        return (np.uint64(self._dense_gen) << np.uint64(_DENSE_INDEX_BITS)) | \
            inverse.reshape(-1).astype(np.uint64)

    def _ngrams_of(self, keys: np.ndarray) -> np.ndarray:
        if self.packed_keys:
            mask = np.uint64((1 << self._bits) - 1)
            cols = [(keys >> np.uint64(self._bits * (self.ngram_len - 1 - j))) & mask
                    for j in range(self.ngram_len)]
            return np.stack(cols, axis=1).astype(np.int64) if cols else np.zeros((0, 0))
        gen = keys >> np.uint64(_DENSE_INDEX_BITS)
        if self._dense is None or (keys.size and np.any(gen != np.uint64(self._dense[0]))):
            raise ParameterError("these tuple keys are dense ids of another tuple_keys call "
                                 f"(n-grams of {self.ngram_len} tokens do not pack into 64 "
                                 "bits); score them right after the call that made them")
        idx = (keys & np.uint64((1 << _DENSE_INDEX_BITS) - 1)).astype(np.intp)
        return self._dense[1][idx]

    def key_scores(self, keys: np.ndarray) -> np.ndarray:
        """Green bit of each tuple key: ``(k,) uint64 -> (k,) bool``."""
        keys = np.asarray(keys, dtype=np.uint64)
        if self.params.dedup_by == "seed":
            _check_seed_width()
            return self.is_green(keys >> np.uint64(32),
                                 (keys & np.uint64(0xFFFFFFFF)).astype(np.int64))
        seeds, tokens = self._units(self._ngrams_of(keys))
        return self.is_green(seeds, tokens)

    def green_indicators(self, ids: np.ndarray) -> np.ndarray:
        """Per-token green bit of every scored token, no dedup: ``(max(n - ngram_len + 1, 0),)``."""
        ids = _check_ids(ids)
        self._check_vocab(ids)
        seeds, tokens = self._units(_windows(ids, self.ngram_len))
        return self.is_green(seeds, tokens)

    # -- generation --------------------------------------------------------------------------
    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """transformers' ``WatermarkLogitsProcessor.__call__`` in numpy.

        ``logits (B, W) float`` (``W >= V``; columns ``>= V`` are never green), ``contexts
        (B, c) int`` each row's tokens so far (prompt included). With fewer than ``h`` context
        tokens the step is skipped (as transformers). lefthash adds ``bias`` to the green list
        of the last token; selfhash to each of the 40 top candidates that is green in the list
        of its own window. transformers applies its processor after every warper
        (temperature, top-k, top-p); the hf adapter of distillmark applies it where user
        processors go, so the green lists, not the sampled tokens, are what match.
        ``prompt_width``, ``temperature`` and ``top_p`` are unused (a logit-bias scheme).
        """
        logits = np.asarray(logits)
        contexts = np.asarray(contexts, dtype=np.int64)
        if logits.ndim != 2 or contexts.ndim != 2 or contexts.shape[0] != logits.shape[0]:
            raise ParameterError(f"`logits` must be (B, W) and `contexts` (B, c), got "
                                 f"{logits.shape} and {contexts.shape}")
        V = self.vocab_size
        if logits.shape[1] < V:
            raise ParameterError(f"logits width {logits.shape[1]} is smaller than the model "
                                 f"vocab_size {V} (wrong model or `vocab_size`?)")
        out = np.array(logits, dtype=np.result_type(logits.dtype, np.float32), copy=True)
        h = self.params.context_width
        if contexts.shape[1] < h:
            return out
        delta = out.dtype.type(self.params.bias)
        if not self.selfhash:
            seeds = self.seeds(contexts[:, -1:])
            for row, seed in enumerate(seeds.tolist()):
                mask = np.unpackbits(self._green_packed(seed), count=V).view(bool)
                out[row, :V] += delta * mask
            return out
        B = out.shape[0]
        k = min(_SELFHASH_TOP_K, out.shape[1])
        cand = np.argsort(-out, axis=1, kind="stable")[:, :k]
        ctx = contexts[:, contexts.shape[1] - h + 1:] if h > 1 else contexts[:, :0]
        win = np.concatenate([np.broadcast_to(ctx[:, None, :], (B, k, h - 1)),
                              cand[:, :, None]], axis=2).reshape(B * k, h)
        green = self.is_green(self.seeds(win), win[:, -1]).reshape(B, k)
        np.add.at(out, (np.arange(B)[:, None], cand), delta * green)
        return out


_SEED_WIDTH_OK: list[bool] = []


def _check_seed_width() -> None:
    """``dedup_by="seed"`` keys keep a seed's low 32 bits: torch's CPU generator (mt19937) reads
    nothing else. Checked once per process, so a torch that changes it fails loudly."""
    if _SEED_WIDTH_OK:
        return
    torch = _torch()
    g = torch.Generator(device="cpu")
    same = True
    for s in (12345, 2**40 + 7):
        g.manual_seed(s)
        a = torch.randperm(64, generator=g)
        g.manual_seed(s + 2**32 * 977)
        b = torch.randperm(64, generator=g)
        same = same and bool(torch.equal(a, b))
    if not same:
        raise DistillmarkError("this torch's CPU generator reads more than 32 bits of a seed; "
                               "dedup_by='seed' is invalid with it: use dedup_by='ngram'")
    _SEED_WIDTH_OK.append(True)


# ============================================================================================
# SynthID-Text (SynthIDTextWatermarkingConfig)
# ============================================================================================


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
        if not all(self.is_integer(k) and _INT64_MIN <= k <= _INT64_MAX for k in keys):
            raise ParameterError("`keys` must hold integers in the int64 range")
        keys = tuple(int(k) for k in keys)
        self.integer("ngram_len", 1, 1024)
        size = self.integer("sampling_table_size", 1, _SYNTHID_MAX_TABLE)
        self.integer("sampling_table_seed", 0, _MASK64)
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


class TransformersSynthID:
    """transformers' SynthID-Text watermark for one spec: detection only.

    Args:
        params: :class:`TransformersSynthIDParams`.
        vocab_size: the tokenizer's size (unused by the hashing; checked by adapters).
        key_id: public id echoed in results (it names the spec, not the keys).
    """

    name = SYNTHID_SCHEME_NAME
    #: Standardised per-unit effect of fully marked text (power statements only).
    default_effect = 0.60
    samples = False
    secret_params = frozenset({"keys"})

    def __init__(self, params: TransformersSynthIDParams, vocab_size: int, *,
                 key_id: str = "") -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.key_id = key_id
        self.depth = len(params.keys)
        self._keys_u64 = np.array([k & _MASK64 for k in params.keys], dtype=np.uint64)
        size = params.sampling_table_size
        self._pow2 = size & (size - 1) == 0
        #: Size of the tuple-key space: the table when keys are reduced modulo it, else none.
        self.n_cells: int | None = size if self._pow2 else None
        #: Detection's test: the tournament tests of ``distillmark.verify.nulls`` with ``p``.
        self.test = f"tournament-{params.score}"

    @classmethod
    def from_spec(cls, spec: WatermarkSpec) -> TransformersSynthID:
        return cls(TransformersSynthIDParams.from_mapping(spec.params), spec.vocab_size,
                   key_id=spec.key_id)

    def __repr__(self) -> str:
        p = self.params
        return (f"TransformersSynthID(key_id={self.key_id!r}, depth={self.depth}, "
                f"ngram_len={p.ngram_len}, sampling_table_size={p.sampling_table_size}, "
                f"sampling_table_seed={p.sampling_table_seed}, score={p.score!r})")

    @property
    def context_width(self) -> int:
        """Tokens before a scored token that its g-values depend on: ``ngram_len - 1``."""
        return self.params.ngram_len - 1

    @cached_property
    def sampling_table(self) -> np.ndarray:
        """transformers' table ``torch.randint(0, 2, (size,), generator=manual_seed(seed))``:
        ``(size,) uint8``."""
        torch = _torch()
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
        ids = _check_ids(ids)
        win = _windows(ids, self.params.ngram_len).astype(np.uint64)
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
