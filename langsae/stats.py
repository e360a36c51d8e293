"""Statistics: seeded bootstrap confidence intervals over texts.

Every ΔCE in this project is a mean over evaluation texts of a per-text difference
(ablated − baseline, paired on the same text), so its uncertainty comes from which texts
were drawn. The bootstrap resamples texts with replacement. Quantities built from several
languages (e.g. the mean ΔCE over the other languages) resample each language's texts
separately (a stratified bootstrap), keeping every language's weight fixed. Paired
quantities (synergy = Δ(1+2) − Δ(1) − Δ(2)) are formed per text first and then
resampled, so the pairing survives the resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

N_BOOT = 2000
ALPHA = 0.05  # 95% intervals


@dataclass(frozen=True)
class Estimate:
    """A point value and its (1 − alpha) percentile bootstrap interval."""

    value: float
    low: float
    high: float


@lru_cache(maxsize=32)
def _resample_weights(n: int, n_boot: int, seed: int, slot: int) -> np.ndarray:
    """[n_boot, n] float32: row r holds count_i / n for one resample of n items with replacement,
    so `weights @ x` is the resampled mean. Depends only on (n, n_boot, seed, slot), so it is
    cached: the results table bootstraps thousands of same-sized groups."""
    rng = np.random.default_rng([seed, slot, n])
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    counts = np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return (counts / n).astype(np.float32)


def bootstrap(
    groups: Sequence[np.ndarray],
    combine: Callable[[np.ndarray], np.ndarray],
    seed: int,
    n_boot: int = N_BOOT,
    alpha: float = ALPHA,
) -> Estimate:
    """Percentile bootstrap of a statistic of group means; each group's texts are resampled independently.

    groups: arrays [n_g] (one value per text; pair quantities per text before passing them).
    combine: maps group means [R, G] to the statistic [R] (R replicates); it is applied to
    the data's own means (R = 1) and to n_boot resampled means. NaN replicates (e.g. a ratio
    with a non-positive denominator) are left out of the interval. Empty group: all NaN.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if not groups or any(len(g) == 0 for g in groups):
        return Estimate(math.nan, math.nan, math.nan)
    value = float(combine(np.array([[g.mean() for g in groups]]))[0])
    if not np.isfinite(value):  # e.g. a ratio whose denominator is not positive: no interval either
        return Estimate(value, math.nan, math.nan)
    means = np.stack([_resample_weights(len(g), n_boot, seed, j) @ g.astype(np.float32) for j, g in enumerate(groups)], axis=1)
    means = means.astype(np.float64)
    reps = np.asarray(combine(means), dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if len(reps) == 0:
        return Estimate(value, math.nan, math.nan)
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Estimate(value, float(low), float(high))


def mean_ci(values: np.ndarray, seed: int, n_boot: int = N_BOOT) -> Estimate:
    """Mean over texts, with a bootstrap CI over texts. values: [n_texts]."""
    return bootstrap([values], lambda m: m[:, 0], seed, n_boot)


def group_mean_ci(groups: Sequence[np.ndarray], seed: int, n_boot: int = N_BOOT) -> Estimate:
    """Unweighted mean over groups (languages) of each group's mean over texts; stratified bootstrap."""
    return bootstrap(groups, lambda m: m.mean(axis=1), seed, n_boot)


def ratio_ci(numerator: np.ndarray, denominators: Sequence[np.ndarray], seed: int, n_boot: int = N_BOOT) -> Estimate:
    """mean(numerator) ÷ mean over groups of mean(denominator group), stratified bootstrap.

    Used for specificity (self ΔCE ÷ mean ΔCE on the other languages). The ratio is only
    meaningful when the denominator is positive: replicates with a denominator ≤ 0 are
    NaN and dropped from the interval, and a point value with denominator ≤ 0 is NaN.
    """

    def combine(m: np.ndarray) -> np.ndarray:
        num, den = m[:, 0], m[:, 1:].mean(axis=1)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    return bootstrap([numerator, *denominators], combine, seed, n_boot)
