"""The keyed PRF: HKDF sub-keys, the AES-256-CTR stream and its views, fmix64."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from distillmark.watermark import ParameterError, prf

SECRET = bytes(range(32))
MASK64 = (1 << 64) - 1

# Known answers for SECRET, recorded from the implementation (distillmark/v1 labels).
KAT_SUBKEYS = {
    "greenlist/table": "995fd3602e76288302b296cbda47727f39ae73ffaf920041900879e5b8839d9e",
    "greenlist/token-values": "497536e850ba7dc439c9035876a67b37b567bc631dd29a7bc4177c7de47a7574",
    "test/kat": "d95917c29b6e364004261f10b60c12d8e63c2e7496b81308e7b0959059d82e43",
}
KAT_TABLE_U32 = [0x52F570AC, 0xF6B188CC, 0xE88C065D, 0xA7705498, 0x0207682E, 0x7DA15311]
KAT_TABLE_U64 = [0xF6B188CC52F570AC, 0xA7705498E88C065D, 0x7DA153110207682E,
                 0x4FA2822FA0A205C7]
KAT_TEST_KEYSTREAM = "60fe0e28885c95c3065bf80ddff63eed0b699316"
KAT_FMIX64 = {0: 0, 1: 0xB456BCFC34C2CB2C, 2: 0x3ABF2A20650683E7, MASK64: 0x64B5720B4B825F21}


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-SHA256 with no salt, written out with hmac (an independent reference)."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


def aes_ctr_reference(subkey: bytes, n_blocks: int, first_block: int = 0) -> bytes:
    """Counter-mode keystream built by hand: ECB-encrypt big-endian 128-bit counter blocks."""
    counters = b"".join((first_block + b).to_bytes(16, "big") for b in range(n_blocks))
    enc = Cipher(algorithms.AES(subkey), modes.ECB()).encryptor()
    return enc.update(counters) + enc.finalize()


def fmix64_reference(x: int) -> int:
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & MASK64
    x ^= x >> 33
    return x


@pytest.fixture(scope="module")
def table_key() -> bytes:
    return prf.derive_subkey(SECRET, "greenlist/table")


# -- known answers ------------------------------------------------------------------------------

@pytest.mark.parametrize("label", sorted(KAT_SUBKEYS))
def test_subkey_known_answers(label: str) -> None:
    assert prf.derive_subkey(SECRET, label).hex() == KAT_SUBKEYS[label]


def test_stream_known_answers(table_key: bytes) -> None:
    assert prf.u32_stream(table_key, 6).tolist() == KAT_TABLE_U32
    assert prf.u64_stream(table_key, 4).tolist() == KAT_TABLE_U64
    test_key = prf.derive_subkey(SECRET, "test/kat")
    assert prf.keystream(test_key, 20).hex() == KAT_TEST_KEYSTREAM


def test_stream_dtypes(table_key: bytes) -> None:
    assert prf.u32_stream(table_key, 5).dtype == np.uint32
    assert prf.u64_stream(table_key, 5).dtype == np.uint64
    assert prf.u32_at(table_key, np.array([3, 9])).dtype == np.uint32
    assert prf.u32_at(table_key, np.array([], dtype=np.int64)).shape == (0,)


# -- independent references ---------------------------------------------------------------------

@pytest.mark.parametrize("label", ["greenlist/table", "key-id", "account/alice"])
@pytest.mark.parametrize("length", [8, 32, 48])
def test_subkey_is_rfc5869_hkdf(label: str, length: int) -> None:
    expected = hkdf_sha256(SECRET, b"distillmark/v1/" + label.encode(), length)
    assert prf.derive_subkey(SECRET, label, length=length) == expected


def test_u32_stream_is_aes256_ctr_from_counter_zero(table_key: bytes) -> None:
    n_blocks = 300
    ref = np.frombuffer(aes_ctr_reference(table_key, n_blocks), dtype="<u4")
    np.testing.assert_array_equal(prf.u32_stream(table_key, 4 * n_blocks), ref)
    ref64 = np.frombuffer(aes_ctr_reference(table_key, n_blocks), dtype="<u8")
    np.testing.assert_array_equal(prf.u64_stream(table_key, 2 * n_blocks), ref64)
    # and the library's own CTR call, with the same counter convention
    enc = Cipher(algorithms.AES(table_key), modes.CTR(bytes(16))).encryptor()
    ctr = enc.update(bytes(16 * n_blocks)) + enc.finalize()
    assert prf.keystream(table_key, 16 * n_blocks) == ctr


def test_keystream_offset_blocks_matches_reference(table_key: bytes) -> None:
    first = 2**40 + 7  # a counter that needs more than 32 bits
    assert prf.keystream(table_key, 64, offset_blocks=first) == aes_ctr_reference(
        table_key, 4, first_block=first)


# -- random access and offsets ------------------------------------------------------------------

def test_u32_at_equals_stream(table_key: bytes) -> None:
    rng = np.random.default_rng(20261128)
    n = 50_000
    full = prf.u32_stream(table_key, n)
    idx = rng.integers(0, n, size=2000)
    idx = np.concatenate([idx, np.arange(0, 17), [n - 1, n - 2, n - 3]])  # every residue mod 4
    assert set((idx % 4).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(prf.u32_at(table_key, idx), full[idx])


def test_u64_at_equals_stream(table_key: bytes) -> None:
    rng = np.random.default_rng(20261203)
    n = 30_000
    full = prf.u64_stream(table_key, n)
    idx = np.concatenate([rng.integers(0, n, size=2000), np.arange(0, 9), [n - 1, n - 2]])
    assert set((idx % 2).tolist()) == {0, 1}
    got = prf.u64_at(table_key, idx)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, full[idx])
    assert prf.u64_at(table_key, np.arange(4)).tolist() == KAT_TABLE_U64
    assert prf.u64_at(table_key, np.array([], dtype=np.int64)).shape == (0,)
    # the two halves of a uint64 element are the uint32 elements 2i (low) and 2i + 1 (high)
    lo = prf.u32_at(table_key, 2 * idx).astype(np.uint64)
    hi = prf.u32_at(table_key, 2 * idx + 1).astype(np.uint64)
    np.testing.assert_array_equal(got, lo | (hi << np.uint64(32)))


@pytest.mark.parametrize("index", [2**32 - 1, 2**32 + 1, 2**40 + 2, 2**60 + 3])
def test_u64_at_large_index(table_key: bytes, index: int) -> None:
    expected = prf.u64_stream(table_key, 1, start=index)
    np.testing.assert_array_equal(prf.u64_at(table_key, np.array([index], dtype=np.uint64)),
                                  expected)
    block = aes_ctr_reference(table_key, 1, first_block=index // 2)
    assert int(expected[0]) == int.from_bytes(block[8 * (index % 2):8 * (index % 2) + 8],
                                              "little")


@pytest.mark.parametrize("index", [2**32 - 1, 2**32 + 1, 2**40 + 2, 2**60 + 3])
def test_u32_at_large_index(table_key: bytes, index: int) -> None:
    expected = prf.u32_stream(table_key, 1, start=index)
    np.testing.assert_array_equal(prf.u32_at(table_key, np.array([index], dtype=np.uint64)),
                                  expected)
    block = aes_ctr_reference(table_key, 1, first_block=index // 4)
    word = int.from_bytes(block[4 * (index % 4):4 * (index % 4) + 4], "little")
    assert int(expected[0]) == word


@pytest.mark.parametrize("start", [1, 2, 3, 4, 5, 7, 17, 1001])
def test_stream_at_start_is_slice_of_stream(table_key: bytes, start: int) -> None:
    n = 37
    np.testing.assert_array_equal(prf.u32_stream(table_key, n, start=start),
                                  prf.u32_stream(table_key, start + n)[start:])
    np.testing.assert_array_equal(prf.u64_stream(table_key, n, start=start),
                                  prf.u64_stream(table_key, start + n)[start:])


# -- sub-keys -------------------------------------------------------------------------------------

def test_labels_and_secrets_give_different_subkeys() -> None:
    labels = ["greenlist/table", "greenlist/token-values", "key-id", "account/a", "account/b",
              "greenlist/table "]
    keys = {prf.derive_subkey(SECRET, lab) for lab in labels}
    assert len(keys) == len(labels)
    other = bytes(range(1, 33))
    assert prf.derive_subkey(other, "greenlist/table") != prf.derive_subkey(
        SECRET, "greenlist/table")
    # a different sub-key gives an unrelated stream
    a = prf.u32_stream(prf.derive_subkey(SECRET, "account/a"), 1000)
    b = prf.u32_stream(prf.derive_subkey(SECRET, "account/b"), 1000)
    assert np.count_nonzero(a == b) <= 1


def test_subkey_argument_errors() -> None:
    with pytest.raises(ParameterError, match="secret"):
        prf.derive_subkey(bytes(15), "x")
    with pytest.raises(ParameterError, match="secret"):
        prf.derive_subkey("not bytes" * 4, "x")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="label"):
        prf.derive_subkey(SECRET, "")
    with pytest.raises(ParameterError, match="subkey"):
        prf.keystream(bytes(16), 10)
    with pytest.raises(ParameterError, match="n_bytes"):
        prf.keystream(bytes(32), -1)


def test_u32_at_refuses_what_u32_stream_refuses() -> None:
    # u32_at is documented to equal u32_stream(subkey, N)[index]; for a subkey that is not 32
    # bytes the stream raises, so random access must not silently use AES-128 instead
    with pytest.raises(ParameterError, match="subkey"):
        prf.u32_stream(bytes(16), 4)
    with pytest.raises(ParameterError, match="subkey"):
        prf.u32_at(bytes(16), np.array([0, 1]))
    with pytest.raises(ParameterError, match="subkey"):
        prf.u64_at(bytes(16), np.array([0, 1]))


# -- fmix64 ---------------------------------------------------------------------------------------

def test_fmix64_known_answers() -> None:
    xs = np.array(list(KAT_FMIX64), dtype=np.uint64)
    assert prf.fmix64(xs).tolist() == list(KAT_FMIX64.values())


def test_fmix64_matches_reference_and_keeps_input() -> None:
    rng = np.random.default_rng(7)
    xs = rng.integers(0, 2**64, size=500, dtype=np.uint64, endpoint=False)
    before = xs.copy()
    out = prf.fmix64(xs)
    np.testing.assert_array_equal(xs, before)
    assert out.tolist() == [fmix64_reference(int(x)) for x in xs]
    assert prf.fmix64(xs.reshape(20, 25)).shape == (20, 25)


def test_fmix64_has_no_collisions_on_a_sample() -> None:
    rng = np.random.default_rng(11)
    sample = np.unique(np.concatenate([
        np.arange(100_000, dtype=np.uint64),                       # small consecutive values
        np.uint64(1) << np.arange(64, dtype=np.uint64),            # single bits
        rng.integers(0, 2**64, size=100_000, dtype=np.uint64),
    ]))
    assert np.unique(prf.fmix64(sample)).size == sample.size


# -- uniformity -----------------------------------------------------------------------------------

def test_u32_stream_is_uniform(table_key: bytes) -> None:
    u = prf.u32_stream(table_key, 200_000, start=12345)
    ks = stats.kstest(u / 2.0**32, "uniform")
    assert ks.pvalue > 1e-3
    # top byte and bottom byte: chi-square on 256 cells each
    for byte in (u >> 24, u & 0xFF):
        counts = np.bincount(byte.astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-3
    # every bit is balanced
    bits = (u[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    ones = bits.sum(axis=0)
    lo, hi = stats.binom.ppf([1e-4, 1 - 1e-4], u.size, 0.5)
    assert np.all((ones >= lo) & (ones <= hi))
