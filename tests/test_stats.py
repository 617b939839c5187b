"""Exact binomial tails (also far below double precision) and key deduplication."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from distillmark.verify import binomial_tail, unique_keys
from distillmark.verify.stats import bonferroni, min_scored_for


def exact_log10_tail(k: int, n: int, p: Fraction) -> float:
    """log10 P(Binomial(n, p) >= k), from exact integer arithmetic (p rational)."""
    num, den = p.numerator, p.denominator
    total = sum(math.comb(n, j) * num**j * (den - num)**(n - j) for j in range(k, n + 1))
    return math.log10(total) - n * math.log10(den)


def exact_log10_tails(n: int, p: Fraction) -> list[float]:
    """``exact_log10_tail(k, n, p)`` for every k in 0..n, in one pass of suffix sums."""
    num, den = p.numerator, p.denominator
    out = [0.0] * (n + 1)
    total = 0
    for j in range(n, -1, -1):
        total += math.comb(n, j) * num**j * (den - num)**(n - j)
        out[j] = math.log10(total) - n * math.log10(den)
    return out


# -- binomial_tail -----------------------------------------------------------------------------

def test_binomial_tail_equals_scipy_sf() -> None:
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(400):
        n = int(rng.integers(1, 3000))
        p = float(rng.uniform(0.01, 0.99))
        k = int(rng.integers(1, n + 1))
        sf = float(stats.binom.sf(k - 1, n, p))
        if sf < 1e-300:
            continue
        t = binomial_tail(k, n, p)
        # special.bdtrc agrees with the exact rational tail to ~1e-12 relative (binom.sf to
        # ~1e-13): both are exact for any decision; 1e-10 leaves room for platform libm.
        assert t.pvalue == pytest.approx(sf, rel=1e-10, abs=0)
        assert t.log10_pvalue == pytest.approx(math.log10(sf), rel=1e-10, abs=1e-12)
        checked += 1
    assert checked > 300


@pytest.mark.parametrize(("k", "n", "p"), [
    (1, 1, 0.25), (0, 10, 0.25), (3, 10, 0.25), (10, 10, 0.5), (60, 200, 0.25), (150, 200, 0.25),
    (300, 1000, 0.25), (500, 1000, 0.5), (2, 5, 0.9),
])
def test_binomial_tail_exact_values(k: int, n: int, p: float) -> None:
    t = binomial_tail(k, n, p)
    expected = exact_log10_tail(max(k, 0), n, Fraction(p))
    assert t.log10_pvalue == pytest.approx(expected, rel=1e-11, abs=1e-11)
    assert t.pvalue == pytest.approx(10.0**expected, rel=1e-10, abs=0)


def test_deep_tail_all_green() -> None:
    t = binomial_tail(400, 400, 0.25)
    assert abs(t.log10_pvalue - 400 * math.log10(0.25)) < 1e-9
    assert t.pvalue == pytest.approx(0.25**400, rel=1e-10, abs=0)
    t = binomial_tail(1000, 1000, 0.25)  # 10**-602: not a double
    assert math.isfinite(t.log10_pvalue)
    assert abs(t.log10_pvalue - 1000 * math.log10(0.25)) < 1e-9


@pytest.mark.parametrize(("k", "n", "p"), [
    (900, 1000, Fraction(1, 4)), (1700, 2500, Fraction(1, 4)), (800, 1500, Fraction(1, 10)),
    (1900, 2000, Fraction(1, 2)),
])
def test_deep_tail_below_double_precision(k: int, n: int, p: Fraction) -> None:
    expected = exact_log10_tail(k, n, p)
    assert expected < -308
    t = binomial_tail(k, n, float(p))
    assert math.isfinite(t.log10_pvalue)
    assert t.log10_pvalue == pytest.approx(expected, abs=1e-9)
    assert t.pvalue < 1e-300


def test_pvalue_never_zero_above_1e_300() -> None:
    # every k, for three (n, p), whose exact tail is between 1e-300 and 1e-200: the p-value is
    # a positive double matching the exact value (all of them are normal doubles), never 0
    zero = []
    for n, p in ((600, Fraction(1, 4)), (1000, Fraction(1, 4)), (1000, Fraction(1, 2))):
        for k, exact in enumerate(exact_log10_tails(n, p)):
            if not -300 <= exact <= -200:
                continue
            t = binomial_tail(k, n, float(p))
            assert t.log10_pvalue == pytest.approx(exact, abs=1e-9)
            if t.pvalue == 0.0:
                zero.append((k, n, str(p), round(exact, 2)))
            else:
                assert t.pvalue == pytest.approx(10.0**exact, rel=1e-8, abs=0)
    assert not zero, f"pvalue 0.0 for (k, n, p, exact log10 p): {zero}"


def test_pvalue_of_a_representable_tail_is_not_zero() -> None:
    # minimal case: P(Binomial(600, 1/4) >= 562) = 1.72e-283, a normal double
    t = binomial_tail(562, 600, 0.25)
    assert t.log10_pvalue == pytest.approx(exact_log10_tail(562, 600, Fraction(1, 4)), abs=1e-9)
    assert t.pvalue == pytest.approx(1.7215613481597e-283, rel=1e-8, abs=0)


def test_log10_is_consistent_around_the_switch_to_log_space() -> None:
    # k where the tail crosses 1e-300: both branches give the same smooth log10
    n, p = 1000, 0.25
    ks = range(780, 860)
    exact = exact_log10_tails(n, Fraction(1, 4))[ks.start:ks.stop]
    assert exact[0] > -300 > exact[-1]
    logs = [binomial_tail(k, n, p).log10_pvalue for k in ks]
    assert all(np.diff(logs) < 0)
    np.testing.assert_allclose(logs, exact, rtol=0, atol=1e-9)


def test_binomial_tail_edge_cases() -> None:
    assert binomial_tail(0, 100, 0.25) == binomial_tail(-3, 100, 0.25)
    assert binomial_tail(0, 100, 0.25).pvalue == 1.0
    assert binomial_tail(0, 100, 0.25).log10_pvalue == 0.0
    assert binomial_tail(0, 0, 0.25).pvalue == 1.0
    over = binomial_tail(101, 100, 0.25)
    assert over.pvalue == 0.0 and over.log10_pvalue == -math.inf
    for n, p in ((-1, 0.5), (10, 0.0), (10, 1.0), (10, 1.5), (10, float("nan"))):
        with pytest.raises(ValueError):
            binomial_tail(1, n, p)


# -- unique_keys ----------------------------------------------------------------------------------

def test_unique_keys_equals_np_unique() -> None:
    rng = np.random.default_rng(2)
    for size in (0, 1, 2, 10, 1000, 100_000):
        small = rng.integers(0, max(2, size // 3), size=size).astype(np.uint64)
        big = rng.integers(2**63, 2**64 - 1, size=size, dtype=np.uint64, endpoint=True)
        big[: size // 2] = big[size // 2: 2 * (size // 2)]  # duplicates among huge values
        for keys in (small, big, np.concatenate([small, big])):
            got = unique_keys(keys)
            assert got.dtype == np.uint64
            np.testing.assert_array_equal(got, np.unique(keys))


def test_unique_keys_below_2_32_sorts_narrow_with_the_same_result() -> None:
    """Keys bounded by ``below <= 2**32`` (a key space of at most 2**32 cells) are sorted as
    uint32: the same distinct values, as uint64, the input untouched; a bound above 2**32
    keeps the 64-bit sort."""
    rng = np.random.default_rng(4)
    for size in (0, 1, 2, 1000, 100_000):
        keys = rng.integers(0, 2**32, size=size, dtype=np.uint64)
        keys[: size // 2] = keys[size // 2: 2 * (size // 2)]
        if size:
            keys[0] = 2**32 - 1
        before = keys.copy()
        for below in (2**32, 2**40):
            got = unique_keys(keys, below=below)
            assert got.dtype == np.uint64
            np.testing.assert_array_equal(got, np.unique(keys))
        np.testing.assert_array_equal(keys, before)


def test_unique_keys_does_not_modify_input() -> None:
    keys = np.array([5, 3, 5, 1, 3], dtype=np.uint64)
    before = keys.copy()
    assert unique_keys(keys).tolist() == [1, 3, 5]
    np.testing.assert_array_equal(keys, before)
    assert unique_keys([7, 7, 2]).tolist() == [2, 7]


# -- helpers ------------------------------------------------------------------------------------------

def test_bonferroni() -> None:
    assert bonferroni(1e-4, 10) == pytest.approx(1e-3)
    assert bonferroni(0.3, 10) == 1.0
    assert bonferroni(0.02, 0) == 0.02


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("alpha", [1e-2, 1e-3, 1e-6, 0.0625, 0.25**10, 1e-4])
def test_min_scored_for_is_the_smallest_all_green_count_below_alpha(alpha: float,
                                                                    p: float) -> None:
    m = min_scored_for(alpha, p)
    assert binomial_tail(m, m, p).log10_pvalue < math.log10(alpha)
    if m > 1:
        assert not binomial_tail(m - 1, m - 1, p).log10_pvalue < math.log10(alpha)


def test_special_functions_without_scipy_special_are_scipy_specials() -> None:
    """stats.ufuncs() in a fresh process imports scipy's compiled special functions without
    scipy.special's package; a later import of scipy.special uses the very same functions."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from distillmark.verify.stats import binomial_tail, ufuncs\n"
            "u = ufuncs()\n"
            "t = binomial_tail(30, 100, 0.25)\n"
            "print(sorted(m for m in ('scipy.special', 'scipy._lib._array_api', 'scipy.stats')"
            " if m in sys.modules))\n"
            "from scipy import special\n"
            "print(all(getattr(special, f) is getattr(u, f) for f in "
            "('bdtrc', 'gammaincc', 'expit', 'logit')), special._ufuncs is u)\n"
            "print(t.pvalue == float(special.bdtrc(29, 100, 0.25)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "True True", "True"]
