"""The account layer: keyed cell values, green bits, counts of every number at once, and the
exact null for every account that did not serve a text."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from distillmark.watermark import ParameterError
from distillmark.watermark.accounts import (
    AccountLayer,
    AccountLayerParams,
    check_numbers,
    number_counts,
    wht,
)

SECRET = bytes(range(32))
V = 49152


def _layer(gamma: float = 0.25, delta: float = 2.0, secret: bytes = SECRET) -> AccountLayer:
    return AccountLayer(secret, V, AccountLayerParams(gamma=gamma, delta=delta))


def _cells(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(0, 256 * V, size=n).astype(np.uint64))


def test_known_answer_for_a_fixed_key():
    layer = _layer()
    values = layer.cell_values(np.array([0, 1, 12345678], dtype=np.uint64))
    assert [hex(int(v)) for v in values] == ["0x8ad657c4da208dd1", "0xf7ee654656d49f97",
                                             "0x5f9df9eb1e61bb95"]
    # cell c's value is element c of the little-endian uint64 view of AES-256-CTR under the
    # HKDF sub-key "distillmark/v1/accounts/cells", counter block 0 first
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(hashes.SHA256(), 32, None, b"distillmark/v1/accounts/cells").derive(SECRET)
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    assert int.from_bytes(enc.update(bytes(16))[8:], "little") == int(values[1])
    green = layer.green(layer.cell_values(np.arange(16, dtype=np.uint64)), 12345)
    assert np.flatnonzero(green).tolist() == [1, 9]
    # rows read in bulk and cells read one by one are the same keystream
    row = layer.row_values(251)
    idx = np.array([0, 7, V - 1])
    assert np.array_equal(row[idx], layer.cell_values(np.uint64(251 * V) + idx.astype(np.uint64)))
    assert not np.array_equal(values, _layer(secret=bytes(32)).cell_values(
        np.array([0, 1, 12345678], dtype=np.uint64)))


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_green_share_is_gamma_for_every_number(gamma):
    layer = _layer(gamma)
    values = layer.row_values(3)
    for number in (1, 2, 3, 1000, 2**31 + 5, 2**32 - 1):
        share = layer.green(values, number).mean()
        assert abs(share - gamma) < 4 * np.sqrt(gamma * (1 - gamma) / V)


def test_two_accounts_green_bits_are_independent():
    layer = _layer()
    values = layer.row_values(9)
    a, b = layer.green(values, 17), layer.green(values, 40)
    table = np.array([[np.sum(~a & ~b), np.sum(~a & b)], [np.sum(a & ~b), np.sum(a & b)]])
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert abs(np.mean(a & b) - 1 / 16) < 0.005


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_transform_counts_equal_direct_counts(gamma):
    layer = _layer(gamma)
    cells = _cells(700)
    groups = np.random.default_rng(1).integers(0, 4, size=cells.size)
    counts = layer.counts(cells, groups, 4, bits=9)
    direct = layer.counts_for(cells, groups, 4, np.arange(1, 512))
    assert counts.shape == (4, 512)
    assert np.array_equal(counts[:, 1:], direct)


def test_best_is_the_same_through_the_transform_and_directly():
    layer = _layer()
    cells = _cells(4000, seed=2)
    groups = np.random.default_rng(3).integers(0, 20, size=cells.size)
    numbers = np.sort(np.random.default_rng(4).choice(np.arange(1, 3000), 900, replace=False))
    many = layer.best(cells, groups, 20, numbers)  # many candidates: the transform
    direct = layer.counts_for(cells, groups, 20, numbers)
    assert np.array_equal(many.index, direct.argmax(axis=1))
    assert np.array_equal(many.count, direct.max(axis=1))
    few = layer.best(cells, groups, 20, numbers[:3])  # few: one by one
    assert np.array_equal(few.count, direct[:, :3].max(axis=1))
    assert (many.second <= many.count).all()


def test_wht_is_its_own_inverse_up_to_scale():
    x = np.random.default_rng(0).integers(-5, 6, size=(3, 64))
    assert np.array_equal(wht(wht(x)), 64 * x)
    with pytest.raises(ParameterError):
        wht(np.zeros(6))
    with pytest.raises(ParameterError):
        number_counts(np.zeros(1, dtype=np.uint64), np.zeros(1), 1, bits=33, parities=2)


def test_null_is_exact_for_other_accounts_of_a_marked_text():
    """Cells chosen to be green for account 5 leave every other account at Binomial(n, 1/4):
    the green counts of 2,000 other numbers on 400 such cells match the binomial law."""
    layer = _layer()
    cells = _cells(40000, seed=5)
    values = layer.cell_values(cells)
    marked = cells[layer.green(values, 5)][:400]  # a text that is all green for account 5
    counts = layer.counts(marked, np.zeros(marked.size, dtype=np.int64), 1, bits=11)[0]
    others = np.delete(counts[1:], 4)  # numbers 1..2047 but 5
    assert counts[5] == 400
    pv = stats.binom.sf(others - 1, marked.size, 0.25)  # P(X >= k)
    # discrete p-values: compare the counts' law with the binomial by chi-square on bins
    expected = stats.binom.pmf(np.arange(401), 400, 0.25) * others.size
    lo, hi = 80, 121
    obs = np.array([np.sum(others < lo), *[np.sum(others == k) for k in range(lo, hi)],
                    np.sum(others >= hi)])
    exp = np.array([expected[:lo].sum(), *expected[lo:hi], expected[hi:].sum()])
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    assert np.mean(pv < 0.05) < 0.05 + 3 * np.sqrt(0.05 * 0.95 / others.size)


def test_bias_adds_delta_to_the_accounts_green_tokens_only():
    layer = _layer(delta=1.5)
    logits = np.zeros((2, V + 3), dtype=np.float32)
    layer.bias_(logits, [11, 12], [7, 0])
    green = layer.green(layer.row_values(11), 7)
    assert np.array_equal(logits[0, :V] == np.float32(1.5), green)
    assert not logits[1].any() and not logits[0, V:].any()


def test_parameters_and_numbers_are_checked():
    with pytest.raises(ParameterError, match="gamma"):
        AccountLayerParams(gamma=0.3)
    with pytest.raises(ParameterError, match="delta"):
        AccountLayerParams(delta=-1)
    with pytest.raises(ParameterError, match="unknown"):
        AccountLayerParams.from_mapping({"gamma": 0.25, "width": 3})
    assert AccountLayerParams.from_mapping({"delta": 3}).to_dict() == {"gamma": 0.25,
                                                                        "delta": 3.0}
    with pytest.raises(ParameterError, match="1.."):
        check_numbers([0, 3])
    with pytest.raises(ParameterError, match="1.."):
        check_numbers([2**32])
