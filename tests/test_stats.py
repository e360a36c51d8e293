"""Bootstrap statistics against brute-force resampling and hand-computed values."""

import math

import numpy as np

from langsae import stats


def test_mean_ci_equals_brute_force_resampling():
    x = np.random.default_rng(3).normal(size=37)
    seed, n_boot = 11, 500
    # the same random stream, resampled the obvious way
    rng = np.random.default_rng([seed, 0, len(x)])
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    est = stats.mean_ci(x, seed, n_boot)
    assert math.isclose(est.value, x.mean(), rel_tol=1e-12)
    assert math.isclose(est.low, low, abs_tol=1e-6) and math.isclose(est.high, high, abs_tol=1e-6)


def test_ci_is_seeded_and_has_the_textbook_width():
    x = np.random.default_rng(0).normal(size=400)
    a, b = stats.mean_ci(x, 1), stats.mean_ci(x, 1)
    assert a == b
    assert stats.mean_ci(x, 2) != a
    width, expected = a.high - a.low, 2 * 1.96 * x.std() / math.sqrt(len(x))
    assert abs(width / expected - 1) < 0.15


def test_constant_values_have_a_zero_width_interval():
    est = stats.mean_ci(np.full(10, 0.25), 0)
    assert (est.value, est.low, est.high) == (0.25, 0.25, 0.25)


def test_group_mean_weights_languages_equally():
    est = stats.group_mean_ci([np.array([1.0, 2.0, 3.0]), np.array([10.0])], 0)
    assert math.isclose(est.value, 6.0)
    assert est.low >= 5.5 and est.high <= 6.5  # only the first group varies: its mean lies in [1, 3]


def test_ratio_and_undefined_ratio():
    est = stats.ratio_ci(np.array([2.0, 4.0]), [np.array([1.0]), np.array([0.5, 0.5])], 0)
    assert math.isclose(est.value, 3.0 / 0.75)
    assert math.isnan(stats.ratio_ci(np.array([1.0]), [np.array([-1.0, 0.5])], 0).value)


def test_empty_group_gives_nan():
    assert math.isnan(stats.mean_ci(np.array([]), 0).value)
