"""The account layer: which account an answer was served to, on top of the provider's mark.

Every answer served for an account carries two marks. The *provider layer* is the key's own
green-list mark, the same for every account: it is what a student trained on many accounts'
answers learns, and what every verifier tests with the master key. The *account layer* names
the account, and no account's mark can be told from another's without the master secret.

Design
------
A scored cell ``c`` is the provider layer's tuple key (its ``(row, token)`` cell). The account
layer gives every cell a keyed 64-bit value ``u(c)`` (an AES-CTR stream of its own sub-key, see
:mod:`.prf`) read as two 32-bit vectors over GF(2), ``u1(c)`` (low half) and ``u2(c)`` (high
half). An account is a *number* ``a`` in ``1 .. 2**32 - 1``, and cell ``c`` is green for it
when

    <u1(c), a> = 1 and <u2(c), a> = 1     (gamma = 1/4; gamma = 1/2 uses <u1(c), a> = 1 alone)

with ``<x, a>`` the parity of ``x & a``. Generation adds ``delta`` to the logits of the tokens
green for the serving account, after the provider layer's bias.

Why the null is exact for every account that did not serve the text: for two distinct nonzero
numbers ``a`` and ``b`` and a uniform ``u``, the pair ``(<u, a>, <u, b>)`` is uniform on
``{0, 1}^2``, so ``a``'s bits are independent of ``b``'s. A text written for account ``b``
depends on the key only through ``b``'s green bits (and the provider layer's, keyed apart), so
the green bits of any other account ``a`` on its distinct cells are independent
Bernoulli(gamma) draws: the count is exactly Binomial(n, gamma), whether the text is human,
provider-only, or served to another account.

Scoring every account at once: the number of green cells of account ``a`` is, with ``s_x(c) =
(-1)^<x(c), a>``, ``(n - sum s_u1 - sum s_u2 + sum s_(u1 xor u2)) / 4``, and ``sum_c
(-1)^<x(c), a>`` for every ``a < 2**m`` is the Walsh-Hadamard transform of the histogram of
``x(c)`` over ``2**m`` bins: ``O(m 2**m)`` for all ``2**m`` accounts, whatever their number
(:func:`number_counts`). Only the low ``m`` bits of ``u`` matter for numbers below ``2**m``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import prf
from .errors import ParameterError

__all__ = ["GAMMAS", "MAX_NUMBER", "AccountLayer", "AccountLayerParams", "BestNumbers",
           "check_numbers", "number_counts", "wht"]

#: Share of cells green for an account: 1/2 (one parity) or 1/4 (two).
GAMMAS = (0.5, 0.25)
#: Largest account number (numbers are 32-bit, 0 is reserved for "no account").
MAX_NUMBER = (1 << 32) - 1
_LOW32 = np.uint64(0xFFFFFFFF)
_ROW_CACHE = 256
#: Entries of the (groups x 2**bits) count matrix computed at once: 2**18 keeps each of its
#: arrays (a few MB) in the allocator's heap; at 2**23 (64 MB arrays) every chunk was mapped
#: and unmapped afresh, and page faults took as much CPU as the counting (2,000 records
#: against 24,000 accounts: 19.2 s and 515 MB, now 7.8 s and 145 MB).
_CHUNK_ENTRIES = 1 << 18
#: Most candidates counted one by one (a (groups x candidates) matrix, a pass over the cells
#: per candidate); beyond, the transform, whose memory is bounded by the chunk: 24,000
#: candidates counted directly on 5,000 records held a 960 MB matrix.
_DIRECT_MAX = 64


@dataclass(frozen=True)
class AccountLayerParams:
    """Parameters of the account layer.

    Attributes:
        gamma: share of cells green for an account, 0.25 (two parities) or 0.5 (one).
        delta: logit bias added to an account's green tokens at generation, >= 0.
    """

    gamma: float = 0.25
    delta: float = 2.0

    def __post_init__(self) -> None:
        if self.gamma not in GAMMAS:
            raise ParameterError(f"account layer `gamma` must be 0.25 or 0.5, got {self.gamma!r}")
        d = self.delta
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) \
                or d < 0:
            raise ParameterError(f"account layer `delta` must be a finite number >= 0, got {d!r}")
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "delta", float(self.delta))

    @property
    def parities(self) -> int:
        """Parities a cell must pass to be green: 2 for gamma 1/4, 1 for 1/2."""
        return 2 if self.gamma == 0.25 else 1

    @classmethod
    def from_mapping(cls, params: Any) -> AccountLayerParams:
        if not isinstance(params, dict):
            raise ParameterError(f"the account layer must be an object, got "
                                 f"{type(params).__name__}")
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"unknown account layer parameter(s): "
                                 f"{', '.join(sorted(unknown))}")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_numbers(numbers: Any) -> np.ndarray:
    """Account numbers as ``(n,) uint64``, each in ``1 .. MAX_NUMBER``."""
    a = np.asarray(numbers)
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 1
                   or int(a.max()) > MAX_NUMBER):
        raise ParameterError(f"account numbers must be integers in 1..{MAX_NUMBER}")
    return a.astype(np.uint64).reshape(-1)


def _parity(x: np.ndarray) -> np.ndarray:
    return (np.bitwise_count(x) & np.uint8(1)).astype(bool)


def wht(x: np.ndarray) -> np.ndarray:
    """Walsh-Hadamard transform along the last axis: ``(..., 2**m) int -> (..., 2**m)
    int64``, ``out[..., a] = sum_v x[..., v] (-1)^popcount(v & a)`` (unnormalised).

    In place on a copy, in 32-bit integers when ``sum |x|`` (the largest possible output)
    fits: histograms of cells always do.
    """
    x = np.asarray(x)
    size = x.shape[-1]
    if size & (size - 1):
        raise ParameterError(f"the transform needs a power-of-two length, got {size}")
    small = x.size == 0 or int(np.abs(x).sum(axis=-1).max()) < 2**31
    out: np.ndarray = np.array(x, dtype=np.int32 if small else np.int64)
    lead = out.shape[:-1]
    half = 1
    while half < size:
        y = out.reshape(*lead, size // (2 * half), 2, half)
        a = y[..., 0, :].copy()
        np.add(y[..., 0, :], y[..., 1, :], out=y[..., 0, :])
        np.subtract(a, y[..., 1, :], out=y[..., 1, :])
        half *= 2
    return out.astype(np.int64, copy=False)


def number_counts(values: np.ndarray, groups: np.ndarray, n_groups: int, *, bits: int,
                  parities: int) -> np.ndarray:
    """Green cells of every account number below ``2**bits``, per group.

    Args:
        values: ``(n,) uint64``, the account layer's value ``u(c)`` of each distinct cell.
        groups: ``(n,) int64``, the group (text, record) of each, in ``0 .. n_groups - 1``.
        bits: ``m``; numbers ``0 .. 2**m - 1`` are scored (column 0, "no account", is
            meaningless: every parity of 0 is 0).
        parities: 2 (gamma 1/4) or 1 (gamma 1/2).

    Returns:
        ``(n_groups, 2**m) int64``: ``out[g, a]`` = cells of group ``g`` green for ``a``.
    """
    if not 0 <= bits <= 32:
        raise ParameterError(f"`bits` must be in 0..32, got {bits}")
    size = 1 << bits
    mask = np.uint64(size - 1)
    v = np.asarray(values, dtype=np.uint64)
    g = np.asarray(groups, dtype=np.int64)
    n = np.bincount(g, minlength=n_groups).astype(np.int64)[:, None]

    def transformed(x: np.ndarray) -> np.ndarray:
        flat = g * size + (x & mask).astype(np.int64)
        hist = np.bincount(flat, minlength=n_groups * size).reshape(n_groups, size)
        return wht(hist)

    w1 = transformed(v & _LOW32)
    if parities == 1:
        return (n - w1) // 2
    w2 = transformed(v >> np.uint64(32))
    w12 = transformed((v & _LOW32) ^ (v >> np.uint64(32)))
    return (n - w1 - w2 + w12) // 4


@dataclass(frozen=True)
class BestNumbers:
    """The best-scoring candidate of each group (arrays of shape ``(g,)``).

    Attributes:
        index: position of the best candidate in the candidate list (the first of equals).
        count: its green cells.
        second: the green cells of the runner-up (equal to ``count`` on a tie).
        n: distinct cells of the group.
    """

    index: np.ndarray
    count: np.ndarray
    second: np.ndarray
    n: np.ndarray


class AccountLayer:
    """The account layer of one master key: keyed cell values, green rows for generation,
    counts for attribution.

    Args:
        secret: the master spec's 32-byte secret (the layer's sub-key is derived from it).
        vocab_size: ``V``; cells are the provider layer's ``row * V + token``.
        params: :class:`AccountLayerParams`.
    """

    def __init__(self, secret: bytes, vocab_size: int, params: AccountLayerParams) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.gamma = params.gamma
        self._key = prf.derive_subkey(secret, "accounts/cells")
        self._rows: dict[int, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"AccountLayer({self.params}, vocab_size={self.vocab_size})"

    def cell_values(self, cells: np.ndarray) -> np.ndarray:
        """``u(c)`` of each cell: ``(n,) uint64 -> (n,) uint64`` (random access)."""
        c = np.asarray(cells, dtype=np.uint64)
        lo = prf.u32_at(self._key, c * np.uint64(2)).astype(np.uint64)
        hi = prf.u32_at(self._key, c * np.uint64(2) + np.uint64(1)).astype(np.uint64)
        return lo | (hi << np.uint64(32))

    def row_values(self, row: int) -> np.ndarray:
        """``u`` of every cell of provider row ``row``: ``(V,) uint64`` (the last few kept)."""
        out = self._rows.get(row)
        if out is None:
            V = self.vocab_size
            out = prf.u64_stream(self._key, V, start=row * V)
            if len(self._rows) >= _ROW_CACHE:
                del self._rows[next(iter(self._rows))]
            self._rows[row] = out
        return out

    def green(self, values: np.ndarray, number: int | np.ndarray) -> np.ndarray:
        """Whether each value's cell is green for account ``number`` (one number, or one per
        value): ``values (n,) uint64 -> (n,) bool``."""
        a = np.asarray(number, dtype=np.uint64)
        out = _parity(values & a)
        if self.params.parities == 2:
            out &= _parity((values >> np.uint64(32)) & a)
        return out

    def bias_(self, logits: np.ndarray, rows: Sequence[int], numbers: Sequence[int]) -> None:
        """Add ``delta`` in place to each batch row's tokens green for its account: ``logits
        (B, W) float`` (``W >= V``), ``rows[b]`` the provider row of row ``b``'s context,
        ``numbers[b]`` its account number (0: no account, left as it is)."""
        if self.params.delta == 0.0:
            return
        V = self.vocab_size
        d = logits.dtype.type(self.params.delta)
        for b, (r, a) in enumerate(zip(rows, numbers)):
            if a:  # green times delta, added (a masked add, ``where=``, is 10x slower)
                np.add(logits[b, :V], self.green(self.row_values(int(r)), int(a)) * d,
                       out=logits[b, :V])

    def counts(self, cells: np.ndarray, groups: np.ndarray, n_groups: int, *, bits: int
               ) -> np.ndarray:
        """Green cells of every number below ``2**bits`` for each group of distinct cells:
        ``(n_groups, 2**bits) int64`` (see :func:`number_counts`)."""
        return number_counts(self.cell_values(cells), groups, n_groups, bits=bits,
                             parities=self.params.parities)

    def counts_for(self, cells: np.ndarray, groups: np.ndarray, n_groups: int,
                   numbers: np.ndarray) -> np.ndarray:
        """Green cells of the given account ``numbers (N,)`` for each group, directly (no
        transform): ``(n_groups, N) int64``; for a few numbers among a large space."""
        nums = check_numbers(numbers)
        values = self.cell_values(cells)
        g = np.asarray(groups, dtype=np.int64)
        out = np.zeros((n_groups, nums.size), dtype=np.int64)
        for j, a in enumerate(nums.tolist()):
            out[:, j] = np.bincount(g, weights=self.green(values, a), minlength=n_groups)
        return out

    def best(self, cells: np.ndarray, groups: np.ndarray, n_groups: int, numbers: np.ndarray
             ) -> BestNumbers:
        """The best of the candidate account ``numbers (N,)`` for each group of distinct
        ``cells (n,)`` (``groups (n,)``, in ``0 .. n_groups - 1``).

        Counts every number below ``2**m`` at once with the transform (``m`` the bit length of
        the largest candidate) when that is cheaper than counting the candidates one by one,
        which it is unless the candidates are few (at most 64); the result is the same either
        way.
        """
        nums = check_numbers(numbers)
        if nums.size == 0:
            raise ParameterError("no candidate accounts")
        g = np.asarray(groups, dtype=np.int64)
        n = np.bincount(g, minlength=n_groups).astype(np.int64)
        bits = int(nums.max()).bit_length()
        parities = self.params.parities
        if nums.size <= _DIRECT_MAX and \
                nums.size * max(1, g.size) <= n_groups * 3 * bits * (1 << bits):
            counts = self.counts_for(cells, g, n_groups, nums)
            return _best(counts, n)
        values = self.cell_values(cells)
        order = np.argsort(g, kind="stable")
        bounds = np.searchsorted(g[order], np.arange(n_groups + 1))
        step = max(1, _CHUNK_ENTRIES >> bits)
        parts = []
        cols = nums.astype(np.intp)
        for lo in range(0, n_groups, step):
            hi = min(n_groups, lo + step)
            sel = order[bounds[lo]:bounds[hi]]
            c = number_counts(values[sel], g[sel] - lo, hi - lo, bits=bits, parities=parities)
            parts.append(_best(c[:, cols], n[lo:hi]))
        return BestNumbers(*(np.concatenate([getattr(p, f) for p in parts])
                             for f in ("index", "count", "second", "n")))


def _best(counts: np.ndarray, n: np.ndarray) -> BestNumbers:
    """Best and runner-up of each row of ``counts (g, N)``."""
    index = np.argmax(counts, axis=1)
    rows = np.arange(counts.shape[0])
    best = counts[rows, index]
    if counts.shape[1] > 1:
        rest = counts.copy()
        rest[rows, index] = -1
        second = rest.max(axis=1)
    else:
        second = np.zeros_like(best)
    return BestNumbers(index=index.astype(np.int64), count=best.astype(np.int64),
                       second=second.astype(np.int64), n=n.astype(np.int64))


class AccountMarked:
    """What one account's answers are generated with: the provider's scheme (a lefthash
    green-list), then the account layer for ``number``. Detection never uses it: the provider
    layer is tested with the provider's scheme, the account layer by attribution.

    Args:
        provider: the key's own scheme (``scheme_for(spec)``).
        layer: the key's account layer.
        number: the serving account's number.
    """

    samples = False

    def __init__(self, provider: Any, layer: AccountLayer, number: int) -> None:
        if getattr(provider, "name", "") != "greenlist" or \
                provider.params.seeding != "lefthash":
            raise ParameterError("the account layer rides on a lefthash green-list key; "
                                 f"key {provider.key_id} is {provider.name!r}")
        if layer.vocab_size != provider.vocab_size:
            raise ParameterError("the account layer and the key cover different vocabularies")
        check_numbers([number])
        self.provider = provider
        self.layer = layer
        self.number = int(number)
        self.key_id = provider.key_id
        self.vocab_size = provider.vocab_size
        self.context_width = provider.context_width

    def __repr__(self) -> str:
        return f"AccountMarked({self.provider!r}, {self.layer!r}, number={self.number})"

    def in_place_bias(self) -> None:
        """None: engines drive the two layers through :meth:`process`."""

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = 0,
                temperature: float = 1.0, top_p: float = 1.0) -> np.ndarray:
        """The provider's bias, then the account's: ``logits (B, W)``, ``contexts (B, c)``
        right-aligned (only the last ``h`` are read); fewer than ``h`` tokens: unmarked."""
        out = self.provider.process(logits, contexts)
        h = self.context_width
        if contexts.shape[1] < h:
            return out
        rows = self.provider.rows(np.asarray(contexts)[:, contexts.shape[1] - h:])
        self.layer.bias_(out, rows.tolist(), [self.number] * out.shape[0])
        return out
