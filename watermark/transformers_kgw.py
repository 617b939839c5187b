"""transformers' KGW watermark (``WatermarkingConfig``), reproduced: scheme ``"transformers-kgw"``.

What is reproduced (transformers 5.x; checked against the source of 5.24)
-------------------------------------------------------------------------
Model vocabulary ``V``, ratio ``gamma``, key ``K``, width ``h``:

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

torch's CPU generator draws the green lists (:mod:`.transformers_common`: where the key lives,
which devices are covered).

Statistics
----------
The count of green tuples against ``Binomial(n_scored, int(V * gamma) / V)``. Green lists
have a fixed size, so tuples that share a list are slightly *negatively* dependent and the
binomial tail is then conservative. By default tuples are transformers' n-grams (so counts
equal ``WatermarkDetector``'s); ``dedup_by="seed"`` instead counts each (green list, token)
once, the unit the green bit actually depends on (see docs/interop.md: with lefthash and h >= 2
distinct n-grams share a green bit and the n-gram count overstates the evidence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, ClassVar

import numpy as np

from . import prf
from .errors import DistillmarkError, ParameterError
from .params import SchemeParams
from .sampling import check_logits
from .transformers_common import (
    INT64_MAX,
    TransformersScheme,
    check_ids,
    import_torch,
    ngram_windows,
)

__all__ = ["KGW_SCHEME_NAME", "TRANSFORMERS_PUBLIC_HASHING_KEY", "TransformersKGW",
           "TransformersKGWParams"]

KGW_SCHEME_NAME = "transformers-kgw"
#: transformers' default ``hashing_key`` ("the millionth prime"): public, so anyone can detect
#: and forge text watermarked with it. Never a default here: pass it explicitly to test for it.
TRANSFORMERS_PUBLIC_HASHING_KEY = 15485863

_KGW_TABLE_SIZE = 1_000_003
_SEED_MODULUS = 2**64 - 1
#: transformers' selfhash checks this many top candidates per step (a constant there).
_SELFHASH_TOP_K = 40
_DEDUP_BY = ("ngram", "seed")
_SEEDINGS = ("lefthash", "selfhash")
_GREEN_CACHE = 4096


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
        if not self.is_integer(k) or not 0 <= k <= INT64_MAX:
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


class TransformersKGW(TransformersScheme):
    """transformers' KGW watermark (``WatermarkingConfig``) for one spec: detection and generation.

    Args:
        params: :class:`TransformersKGWParams`.
        vocab_size: the model's ``V`` when ``params.vocab_size`` is ``None``.
        key_id: public id echoed in results (it names the spec, not ``hashing_key``).

    Not thread-safe: one torch generator is reseeded per green list (as transformers does).
    """

    name = KGW_SCHEME_NAME
    params_class = TransformersKGWParams
    #: Standardised per-unit effect of fully marked text (power statements only).
    default_effect = 0.65
    #: Tuple keys span all 64 bits (seed and token): no bounded key space.
    n_cells: int | None = None
    test = "binomial"
    secret_params = frozenset({"hashing_key"})

    def __init__(self, params: TransformersKGWParams, vocab_size: int | None = None, *,
                 key_id: str = "") -> None:
        V = params.vocab_size if params.vocab_size is not None else vocab_size
        if V is None or not params.is_integer(V) or V < 2:
            raise ParameterError(f"`vocab_size` must be an integer >= 2, got {V!r}")
        super().__init__(params, int(V), key_id=key_id)
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
        #: Whether an n-gram packs into one 64-bit tuple key (else keys mix it; see tuple_keys).
        self.packed_keys = self.ngram_len * self._bits <= 64
        self._green_packed = lru_cache(maxsize=_GREEN_CACHE)(self._compute_green_packed)

    def shown(self) -> dict[str, Any]:
        p = self.params
        return {"seeding_scheme": p.seeding_scheme, "context_width": p.context_width,
                "greenlist_ratio": p.greenlist_ratio, "bias": p.bias,
                "vocab_size": self.vocab_size, "dedup_by": p.dedup_by}

    @property
    def context_width(self) -> int:
        """Tokens before a scored token that its score depends on: ``n - 1`` (``h`` for
        lefthash, ``h - 1`` for selfhash). Not ``params.context_width``."""
        return self.ngram_len - 1

    # -- torch's generator -------------------------------------------------------------------
    @cached_property
    def _generator(self) -> Any:
        return import_torch().Generator(device="cpu")

    @cached_property
    def table(self) -> np.ndarray:
        """Selfhash's ``randperm(1_000_003)`` after ``manual_seed(K)``: ``(1000003,) int64``."""
        torch = import_torch()
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
        return self._selfhash_products(prefixes).min(axis=1)

    def _selfhash_products(self, prefixes: np.ndarray) -> np.ndarray:
        """selfhash's ``K * a * b`` of each of the last ``h`` tokens of each prefix, int64 with
        wraparound: ``(k, w) -> (k, min(w, h)) int64``; the seed is their minimum."""
        win = prefixes[:, -self.params.context_width:]
        tab = self.table
        a = (tab[win % _KGW_TABLE_SIZE] + 1).astype(np.uint64)
        b = (tab[win[:, -1] % _KGW_TABLE_SIZE] + 1).astype(np.uint64)
        prod = (np.uint64(self.params.hashing_key) * a) * b[:, None]  # wraps modulo 2**64
        return prod.view(np.int64)

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
        torch = import_torch()
        g = self._generator
        g.manual_seed(seed)
        return torch.randperm(self.vocab_size, generator=g)[:self.greenlist_size].numpy()

    def _compute_green_packed(self, seed: int) -> np.ndarray:
        mask = np.zeros(self.vocab_size, dtype=bool)
        mask[self.green_ids_for_seed(seed)] = True
        return np.packbits(mask)

    def green_ids_for_seed(self, seed: int) -> np.ndarray:
        """Green ids of one ``manual_seed`` value: ``(int(V * gamma),) int64``."""
        torch = import_torch()
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

        Entry ``i`` belongs to token ``ids[ngram_len - 1 + i]``. A key is a function of its
        n-gram alone, so keys from any texts and calls can be pooled and scored together.

        ``dedup_by="ngram"``: equal keys for equal n-grams. When ``ngram_len * b <= 64``, ``b =
        bit_length(V - 1)`` (up to 4 tokens at V = 49,152), the key is the n-gram's ids packed
        ``b`` bits each, so distinct n-grams have distinct keys. Longer n-grams do not fit: the
        key's low ``2 b`` bits then hold the two tokens the green bit depends on (see
        :meth:`_seed_pairs`: the seed's token, then the scored token) and its high ``64 - 2 b``
        bits those of a fixed mix of the whole n-gram, ``x <- fmix64(x XOR t)`` over its tokens
        ``t`` from ``x = ngram_len`` (MurmurHash3's finaliser, :func:`~.prf.fmix64`). Two
        distinct n-grams share a key only if they share those two tokens, hence their green
        bit, and their mix's high bits: they are then counted once, which can only make the
        test conservative.

        ``dedup_by="seed"``: ``(seed mod 2**32) << 32 | token`` (torch's CPU generator reads
        only the low 32 bits of a seed; checked at run time).
        """
        ids = check_ids(ids)
        self._check_vocab(ids)
        win = ngram_windows(ids, self.ngram_len)
        if self.params.dedup_by == "seed":
            _check_seed_width()
            seeds, tokens = self._units(win)
            return ((seeds & np.uint64(0xFFFFFFFF)) << np.uint64(32)) | tokens.astype(np.uint64)
        b = np.uint64(self._bits)
        if self.packed_keys:
            keys = np.zeros(win.shape[0], dtype=np.uint64)
            for j in range(self.ngram_len):
                keys = (keys << b) | win[:, j].astype(np.uint64)
            return keys
        mix = np.full(win.shape[0], self.ngram_len, dtype=np.uint64)
        for j in range(self.ngram_len):
            mix = prf.fmix64(mix ^ win[:, j].astype(np.uint64))
        pairs = self._seed_pairs(win).astype(np.uint64)
        return (mix >> (2 * b) << (2 * b)) | (pairs[:, 0] << b) | pairs[:, 1]

    def _seed_pairs(self, ngrams: np.ndarray) -> np.ndarray:
        """The two tokens of each n-gram ``(k, n)`` that its green bit depends on, as a 2-gram
        with the same seed and scored token: ``(k, 2) int64``. lefthash: the token before the
        scored one, which alone makes the seed. selfhash: the token of the window whose
        ``K * a * b`` is the minimum, the seed (the scored token's own product is one of those
        the minimum is taken over, so the 2-gram's minimum is the same)."""
        if not self.selfhash:
            return ngrams[:, -2:]
        first = np.argmin(self._selfhash_products(ngrams), axis=1)[:, None]
        window = ngrams[:, -self.params.context_width:]
        return np.concatenate([np.take_along_axis(window, first, axis=1), ngrams[:, -1:]],
                              axis=1)

    def _ngrams_of(self, keys: np.ndarray) -> np.ndarray:
        """What :meth:`_units` reads of the n-grams of ``keys (k,) uint64``: the n-grams
        themselves ``(k, n)`` when packed, else their seed pairs ``(k, 2)`` (same seeds and
        scored tokens)."""
        b = self._bits
        mask = np.uint64((1 << b) - 1)
        n = self.ngram_len if self.packed_keys else 2
        cols = [(keys >> np.uint64(b * (n - 1 - j))) & mask for j in range(n)]
        return np.stack(cols, axis=1).astype(np.int64)

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
        ids = check_ids(ids)
        self._check_vocab(ids)
        seeds, tokens = self._units(ngram_windows(ids, self.ngram_len))
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
        V = self.vocab_size
        logits, contexts = check_logits(logits, contexts, V, vocabulary="the model",
                                        hint="wrong model or `vocab_size`?")
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
    torch = import_torch()
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
