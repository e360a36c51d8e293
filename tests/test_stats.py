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


def _counts(n_ids, n_boot, seed, slot=0):
    """Draw counts [n_boot, n_ids] of the stream JointBootstrap uses, resampled the obvious way."""
    rng = np.random.default_rng([seed, slot, n_ids])
    draws = rng.integers(0, n_ids, size=(n_boot, n_ids))
    return np.stack([np.bincount(row, minlength=n_ids) for row in draws])


def test_joint_bootstrap_weights_languages_by_shared_draws_and_skips_missing_ids():
    # sentences a, b, c (sorted: codes 0, 1, 2); language 1 lacks c
    ids = np.array(["a", "b", "c", "b", "a"])
    groups = np.array([0, 0, 0, 1, 1])
    values = np.array([1.0, 2.0, 3.0, 20.0, 10.0])
    seed, n_boot = 4, 300
    m = stats.JointBootstrap(ids, groups, 2, seed, n_boot).means(values)
    assert np.allclose(m.point, [2.0, 15.0])
    c = _counts(3, n_boot, seed)
    lang0 = (c[:, 0] * 1 + c[:, 1] * 2 + c[:, 2] * 3) / 3
    with np.errstate(invalid="ignore"):
        lang1 = (c[:, 0] * 10 + c[:, 1] * 20) / (c[:, 0] + c[:, 1])  # NaN when only c was drawn
    assert np.allclose(m.reps[:, 0], lang0) and np.allclose(m.reps[:, 1], lang1, equal_nan=True)
    # languages weigh equally in a mean over languages, whatever their number of texts
    assert math.isclose(float(m.mean(0).point), (2.0 + 15.0) / 2)


def test_only_keeps_the_texts_of_the_given_ids():
    ids = np.array(["a", "b", "c", "a", "b", "c"])
    plan = stats.JointBootstrap(ids, np.array([0, 0, 0, 1, 1, 1]), 2, 0, 50, only=["b", "c"])
    m = plan.means(np.array([1.0, 2.0, 4.0, 10.0, 20.0, 40.0]))
    assert plan.n_ids == 2 and np.allclose(m.point, [3.0, 30.0])
    assert np.allclose(m.reps[:, 1], 10 * m.reps[:, 0])  # one shared draw of b and c for both languages


def test_joint_resampling_keeps_parallel_languages_paired():
    """The same sentences in two languages with the same per-sentence ΔCE: self − others is 0 in
    every replicate (resampling each language on its own would give it a wide interval)."""
    x = np.random.default_rng(1).normal(1.0, 0.5, size=100)
    ids = np.concatenate([np.arange(100), np.arange(100)])
    m = stats.JointBootstrap(ids, np.repeat([0, 1], 100), 2, 0, 500).means(np.concatenate([x, x + 0.1]))
    own = m[0].estimate()
    assert own.high - own.low > 0.1
    diff = (m[0] - m[1]).estimate()
    assert math.isclose(diff.value, -0.1) and diff.high - diff.low < 1e-5


def _ratio(num, den, seed=0, n_boot=1000):
    """(Estimate, unbounded) of mean(num) ÷ mean(den), num and den parallel over sentences."""
    n = len(num)
    m = stats.JointBootstrap(np.tile(np.arange(n), 2), np.repeat([0, 1], n), 2, seed, n_boot).means(
        np.concatenate([num, den])
    )
    return stats.ratio_estimate(m[0], m[1])


def test_ratio_by_hand_and_undefined_ratio():
    est, unbounded = _ratio(np.array([2.0, 4.0]), np.array([0.5, 1.0]))
    assert math.isclose(est.value, 3.0 / 0.75) and not unbounded
    assert 2 <= est.low <= est.value <= est.high <= 4  # every replicate is 2/0.5, 4/1 or 6/1.5
    est, unbounded = _ratio(np.array([1.0, 1.0]), np.array([-1.0, 0.5]))
    assert math.isnan(est.value) and unbounded and (est.low, est.high) == (-math.inf, math.inf)


def test_ratio_is_unbounded_when_its_denominator_crosses_zero():
    rng = np.random.default_rng(7)
    num = rng.normal(1.0, 0.2, size=200)
    # denominator near zero: population mean 0.05, SE ≈ 0.035, so many replicates are ≤ 0
    near_zero, unbounded = _ratio(num, rng.normal(0.05, 0.5, size=200))
    assert unbounded and (near_zero.low, near_zero.high) == (-math.inf, math.inf)
    assert np.isfinite(near_zero.value)  # the point ratio is still reported, its interval is not
    # comfortably positive denominator: an ordinary finite interval
    est, unbounded = _ratio(num, rng.normal(1.0, 0.2, size=200))
    assert not unbounded and np.isfinite(est.low) and np.isfinite(est.high)
    assert est.low < est.value < est.high and est.high - est.low < 0.2


def test_few_nonpositive_denominators_widen_the_ratio_instead_of_being_dropped():
    """Up to alpha/2 replicates with a denominator ≤ 0 count as +inf, so the upper end can only grow."""
    num = stats.Resampled(np.array(1.0), np.ones(100))
    den_reps = np.full(100, 0.5)
    den_reps[:2] = -1.0  # 2% ≤ 0, under alpha/2 = 2.5%
    est, unbounded = stats.ratio_estimate(num, stats.Resampled(np.array(0.5), den_reps))
    assert not unbounded and est.low == 2.0
    # quantile 0.975 of 98 twos and 2 infs sits between the 97th and 98th order statistics (0-based 96.525): 2
    assert est.high == 2.0
    den_reps[:3] = -1.0  # 3%: unbounded
    assert stats.ratio_estimate(num, stats.Resampled(np.array(0.5), den_reps))[1]


def test_random_control_interval_resamples_draws_as_well_as_texts():
    """Three random draws whose means differ (0.0014, 0.0295, 0.011) with tiny noise within each:
    averaging draws before resampling texts gives a band far narrower than the draws' spread."""
    rng = np.random.default_rng(0)
    draw_means = np.array([0.0014, 0.0295, 0.011])
    per_text = draw_means + rng.normal(0, 1e-4, size=(100, 3))  # [texts, draws]
    plan = stats.JointBootstrap(np.arange(100), np.zeros(100, dtype=int), 1, 0, 2000)
    texts_only = plan.means(per_text.mean(axis=1))[0].estimate()
    both = stats.mean_over_draws(plan.means(per_text)[0], seed=0).estimate()
    assert math.isclose(both.value, texts_only.value, rel_tol=1e-9)
    inside = sum(both.low - 1e-4 <= d <= both.high + 1e-4 for d in draw_means)
    assert inside == 3  # each draw is its own resample with probability 1/27 > alpha/2
    assert sum(texts_only.low <= d <= texts_only.high for d in draw_means) == 0
    assert (both.high - both.low) > 20 * (texts_only.high - texts_only.low)


def test_argmax_frequency_by_hand():
    reps = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 5.0, 1.0], [np.nan, 1.0, 0.0]])
    freq = stats.argmax_frequency(stats.Resampled(np.zeros(3), reps))
    assert np.allclose(freq, [1 / 3, 2 / 3, 0.0])  # the replicate with an undefined candidate is left out


def test_split_halves_is_seeded_disjoint_and_complete():
    ids = np.array([f"s{i}" for i in range(11)] * 3)  # three languages, same sentences
    a, b = stats.split_halves(ids, seed=3)
    assert len(a) == 5 and len(b) == 6 and not set(a) & set(b) and set(a) | set(b) == set(ids)
    a2, b2 = stats.split_halves(ids[::-1], seed=3)  # order of the texts does not matter
    assert list(a2) == list(a) and list(b2) == list(b)
    assert list(stats.split_halves(ids, seed=4)[0]) != list(a)


def test_empty_group_gives_nan():
    assert math.isnan(stats.mean_ci(np.array([]), 0).value)
    m = stats.JointBootstrap(np.array(["a"]), np.array([0]), 2, 0, 10).means(np.array([1.0]))
    assert math.isnan(m.point[1]) and np.isnan(m.reps[:, 1]).all()


def test_format_interval_writes_each_tables_look():
    """Hand-written strings: the report's signed 3 digits, the terminal tables' compact bounds, unsigned
    rates, 'g' formatting, and 'n/a' for a value that is not finite (the bounds are then not looked at)."""
    fmt = stats.format_interval
    assert fmt(0.5, -0.25, 1.0) == "+0.500 [-0.250, +1.000]"
    assert fmt(0.36819, 0.3198, 0.41849, sep=",") == "+0.368 [+0.320,+0.418]"
    assert fmt(0.5, 0.25, 0.75, digits=2, signed=False) == "0.50 [0.25, 0.75]"
    assert fmt(-0.1234, -0.5, 0.0, signed=False, sep=",") == "-0.123 [-0.500,0.000]"
    assert fmt(0.000123456, 1e-5, 2.0, digits=4, signed=False, kind="g") == "0.0001235 [1e-05, 2]"
    assert fmt(math.nan, 0.1, 0.2) == "n/a" and fmt(math.inf, 0.0, 1.0, sep=",") == "n/a"
    assert fmt(0.5, math.nan, math.nan) == "+0.500 [+nan, +nan]"  # callers that need finite bounds check them
