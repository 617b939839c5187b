"""Keyed randomness: the one place where distillmark turns a secret into random numbers.

Design
------
Every keyed value in distillmark is a position in an AES-256-CTR keystream:

* a 32-byte *sub-key* is derived from the spec's secret with HKDF-SHA256
  (:func:`derive_subkey`), with a versioned ``info`` label that names its use
  (``b"distillmark/v1/greenlist/table"``, ...), so different uses and different schemes never
  share a stream;
* the stream for that sub-key is AES-256 in counter mode with an all-zero initial counter
  block: block ``b`` is ``AES_k(b as a 128-bit big-endian integer)``;
* the stream is read as little-endian unsigned integers: element ``i`` of the ``uint32`` view
  is bytes ``4i .. 4i+3``, element ``i`` of the ``uint64`` view is bytes ``8i .. 8i+7``.

So a keyed table is a *random-access* pseudo-random function of its index: one entry can be
computed alone (:func:`u32_at`, :func:`u64_at`: one AES block) or a whole table in bulk
(:func:`u32_stream`, :func:`u64_stream`), and both give the same numbers.

Security argument: AES-256 is a pseudo-random permutation; in counter mode with distinct
counter blocks its output is indistinguishable from uniform random bytes to anyone who does not
hold the sub-key (the PRP/PRF switching bound adds ``q^2 / 2^129`` for ``q`` blocks, negligible
for any table here). HKDF-SHA256 makes sub-keys for different labels independent. Whoever does
not hold the secret therefore cannot predict any keyed value better than chance; what an attacker
*can* do is estimate a watermark's effect from many watermarked texts (watermark stealing),
which no PRF prevents; docs/security.md discusses that threat.

Known-answer vectors for a fixed key are in tests/test_prf.py.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ParameterError

__all__ = [
    "LABEL_PREFIX",
    "derive_subkey",
    "fmix64",
    "fmix64_",
    "fmix64_int",
    "keystream",
    "u32_at",
    "u32_stream",
    "u64_at",
    "u64_stream",
    "u64_take",
]

#: Every HKDF ``info`` label starts with this; the version changes if the derivation does.
LABEL_PREFIX = b"distillmark/v1/"

_BLOCK = 16
# u64_take: random access up to this many elements; above, the stream read in chunks of
# _TAKE_CHUNK elements.
_TAKE_RANDOM_ACCESS = 262_144
_TAKE_CHUNK = 1 << 22


def derive_subkey(secret: bytes, label: str, *, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``secret`` with ``info = b"distillmark/v1/" + label``.

    ``secret`` must be at least 16 bytes (specs carry 32).
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
        raise ParameterError("`secret` must be at least 16 bytes of key material")
    if not label:
        raise ParameterError("`label` must be a non-empty string")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=LABEL_PREFIX + label.encode("utf-8"))
    return hkdf.derive(bytes(secret))


def keystream(subkey: bytes, n_bytes: int, *, offset_blocks: int = 0) -> bytes:
    """``n_bytes`` of the AES-256-CTR stream of ``subkey``, starting at block ``offset_blocks``."""
    if len(subkey) != 32:
        raise ParameterError(f"`subkey` must be 32 bytes, got {len(subkey)}")
    if n_bytes < 0 or offset_blocks < 0:
        raise ParameterError("`n_bytes` and `offset_blocks` must be >= 0")
    counter = int(offset_blocks).to_bytes(_BLOCK, "big")
    enc = Cipher(algorithms.AES(subkey), modes.CTR(counter)).encryptor()
    return enc.update(bytes(n_bytes)) + enc.finalize()


def u32_stream(subkey: bytes, n: int, *, start: int = 0) -> np.ndarray:
    """Elements ``start .. start+n-1`` of the keyed ``uint32`` stream: ``(n,) uint32``."""
    first_block, skip = divmod(4 * start, _BLOCK)
    raw = keystream(subkey, skip + 4 * n, offset_blocks=first_block)
    return np.frombuffer(raw, dtype="<u4", count=n, offset=skip).astype(np.uint32, copy=False)


def u64_stream(subkey: bytes, n: int, *, start: int = 0) -> np.ndarray:
    """Elements ``start .. start+n-1`` of the keyed ``uint64`` stream: ``(n,) uint64``."""
    first_block, skip = divmod(8 * start, _BLOCK)
    raw = keystream(subkey, skip + 8 * n, offset_blocks=first_block)
    return np.frombuffer(raw, dtype="<u8", count=n, offset=skip).astype(np.uint64, copy=False)


def _words_at(subkey: bytes, index: np.ndarray, width: int) -> np.ndarray:
    """Elements ``index (n,)`` of the stream read as little-endian unsigned integers of
    ``width`` bytes (4 or 8): one AES-256 block (``AES_k(counter)``, as in CTR mode) each."""
    if len(subkey) != 32:
        raise ParameterError(f"`subkey` must be 32 bytes, got {len(subkey)}")
    per_block = _BLOCK // width
    idx = np.asarray(index, dtype=np.uint64).ravel()
    counters = np.zeros((idx.size, 2), dtype=">u8")
    counters[:, 1] = idx // np.uint64(per_block)
    enc = Cipher(algorithms.AES(subkey), modes.ECB()).encryptor()
    raw = enc.update(counters.tobytes()) + enc.finalize()
    words = np.frombuffer(raw, dtype=f"<u{width}").reshape(idx.size, per_block)
    pick = (idx % np.uint64(per_block)).astype(np.intp)
    return words[np.arange(idx.size), pick].astype(f"u{width}")


def u32_at(subkey: bytes, index: np.ndarray) -> np.ndarray:
    """Random access into the keyed ``uint32`` stream: ``index (n,) int -> (n,) uint32``.

    Equal to ``u32_stream(subkey, N)[index]`` for any ``N > max(index)``, at the cost of one AES
    block per element instead of the whole prefix of the stream.
    """
    return _words_at(subkey, index, 4)


def u64_at(subkey: bytes, index: np.ndarray) -> np.ndarray:
    """Random access into the keyed ``uint64`` stream: ``index (n,) int -> (n,) uint64``.

    Equal to ``u64_stream(subkey, N)[index]`` for any ``N > max(index)``, at the cost of one AES
    block per element instead of the whole prefix of the stream.
    """
    return _words_at(subkey, index, 8)


def u64_take(subkey: bytes, index: np.ndarray) -> np.ndarray:
    """``u64_stream(subkey, N)[index]`` for any ``N > max(index)``: ``(n,) int -> (n,) uint64``.

    :func:`u64_at` for up to a few hundred thousand elements; for more, the stream itself is
    read, in chunks of ``2**22`` elements and only the chunks that hold an index (same values).
    """
    idx = np.asarray(index, dtype=np.uint64).ravel()
    if idx.size <= _TAKE_RANDOM_ACCESS:
        return u64_at(subkey, idx)
    order = np.argsort(idx, kind="stable")
    srt = idx[order]
    out = np.empty(idx.size, dtype=np.uint64)
    lo = 0
    while lo < srt.size:
        start = int(srt[lo]) // _TAKE_CHUNK * _TAKE_CHUNK
        hi = int(np.searchsorted(srt, np.uint64(start + _TAKE_CHUNK), side="left"))
        chunk = u64_stream(subkey, int(srt[hi - 1]) - start + 1, start=start)
        out[order[lo:hi]] = chunk[(srt[lo:hi] - np.uint64(start)).astype(np.intp)]
        lo = hi
    return out


_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, a fixed bijection of ``uint64`` with full avalanche.

    It is *not* keyed: it only spreads keyed inputs (from the streams above) so that every output
    bit depends on every input bit. ``x: (...) uint64 -> (...) uint64``.
    """
    x = np.asarray(x, dtype=np.uint64).copy()
    return fmix64_(x, np.empty_like(x))


def fmix64_(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """:func:`fmix64` in place: ``x (n,) uint64`` is overwritten with its image and returned;
    ``scratch`` is a ``uint64`` array of ``x``'s shape that is overwritten too. No temporary
    arrays: what a loop over cache-sized chunks of a long stream needs."""
    for m in (_M1, _M2):
        np.right_shift(x, _S33, out=scratch)
        np.bitwise_xor(x, scratch, out=x)
        np.multiply(x, m, out=x)
    np.right_shift(x, _S33, out=scratch)
    np.bitwise_xor(x, scratch, out=x)
    return x


def fmix64_int(x: int) -> int:
    """:func:`fmix64` of one Python integer in ``0..2**64-1`` (same value, no numpy call)."""
    mask = (1 << 64) - 1
    x ^= x >> 33
    x = (x * int(_M1)) & mask
    x ^= x >> 33
    x = (x * int(_M2)) & mask
    return x ^ (x >> 33)
