"""Statistics: seeded bootstrap confidence intervals over sentences, resampled jointly across languages.

Every ΔCE in this project is a mean over evaluation texts of a per-text difference
(ablated − baseline, paired on the same text), so its uncertainty comes from which texts
were drawn. The evaluation texts are parallel translations: the same sentence ids appear in
every language, and a sentence that is hard in one language tends to be hard in the others.
So the bootstrap resamples *sentence ids* with replacement, one draw per replicate shared by
all languages (JointBootstrap); a language's replicate mean is the mean over its texts
weighted by how often their ids were drawn (a language that lacks an id just gets no weight
from it). Every multi-language quantity (mean over the other languages, self − others,
ratios, synergy) is a function of per-language means taken from the same replicate, so the
correlation between languages survives; resampling each language on its own would ignore
it. Per-language means are linear in the per-text values, so paired quantities
(synergy = Δ(1+2) − Δ(1) − Δ(2)) stay paired text by text.

Further rules (see docs/method.md, "Statistics that do not overstate"):
- ratio_estimate: a ratio's interval becomes (−inf, +inf), flagged, when more than α/2 of
  its denominator's replicates are ≤ 0; denominators ≤ 0 are never silently dropped.
- mean_over_draws: a mean over random-feature draws resamples the draws too, not only texts.
- split_halves / argmax_frequency: an argmax (a peak layer) is chosen on one half of the
  sentences and reported on the other; how often each candidate wins is reported too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Collection, Sequence

import numpy as np

N_BOOT = 2000
ALPHA = 0.05  # 95% intervals
# Independent random streams for one seed: resampling sentence ids, resampling random-feature
# draws, splitting sentences into halves.
SLOT_IDS, SLOT_DRAWS, SLOT_SPLIT = 0, 1, 2


@dataclass(frozen=True)
class Estimate:
    """A point value and its (1 − alpha) percentile bootstrap interval."""

    value: float
    low: float
    high: float


@lru_cache(maxsize=32)
def _resample_counts(n: int, n_boot: int, seed: int, slot: int) -> np.ndarray:
    """[n_boot, n] float32: row r counts how often each of n items was drawn in one resample of n
    with replacement. Depends only on (n, n_boot, seed, slot), so it is cached: the results
    table bootstraps thousands of quantities over the same sentences."""
    rng = np.random.default_rng([seed, slot, n])
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    counts = np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float32)
    counts.flags.writeable = False  # shared through the cache
    return counts


def percentile_interval(reps: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) [...] of replicates [n_boot, ...], the (alpha/2, 1 − alpha/2) quantiles.

    A NaN replicate is undefined (a language none of whose texts was drawn). Up to alpha/2 of
    them are left out; with more, which side they would fall on decides the interval, so it is NaN.
    """
    reps = np.asarray(reps, dtype=np.float64)
    q = [alpha / 2, 1 - alpha / 2]
    if len(reps) == 0:
        nan = np.full(reps.shape[1:], math.nan)
        return nan, nan.copy()
    missing = np.isnan(reps)
    if not missing.any():
        low, high = np.quantile(reps, q, axis=0)
        return low, high
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
        low, high = np.nanquantile(reps, q, axis=0)
    undefined = missing.mean(axis=0) > alpha / 2
    return np.where(undefined, math.nan, low), np.where(undefined, math.nan, high)


@dataclass(frozen=True)
class Resampled:
    """A statistic on the data (`point` [...]) and on every bootstrap replicate (`reps` [n_boot, ...]).

    Indexing, +, − and mean act on both, so a quantity composed of per-language means keeps each
    replicate's shared sentence draw (indices: basic, or advanced ones next to each other).
    """

    point: np.ndarray
    reps: np.ndarray

    def __getitem__(self, key) -> "Resampled":
        key = key if isinstance(key, tuple) else (key,)
        return Resampled(np.asarray(self.point[key]), np.asarray(self.reps[(slice(None), *key)]))

    def __add__(self, other: "Resampled") -> "Resampled":
        return Resampled(self.point + other.point, self.reps + other.reps)

    def __sub__(self, other: "Resampled") -> "Resampled":
        return Resampled(self.point - other.point, self.reps - other.reps)

    def mean(self, axis: int = 0) -> "Resampled":
        """Unweighted mean over `axis` of point (axis + 1 of reps)."""
        return Resampled(self.point.mean(axis=axis), self.reps.mean(axis=axis + 1))

    def interval(self, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), each shaped like point; NaN where point is not finite."""
        low, high = percentile_interval(self.reps, alpha)
        bad = ~np.isfinite(self.point)
        return np.where(bad, math.nan, low), np.where(bad, math.nan, high)

    def estimate(self, alpha: float = ALPHA) -> Estimate:
        """Estimate of a scalar statistic."""
        low, high = self.interval(alpha)
        return Estimate(float(self.point), float(low), float(high))


class JointBootstrap:
    """Bootstrap plan over sentence ids shared by every language.

    sentence_ids: [N] one per text (any sortable type); groups: [N] language index of each text in
    0..n_groups-1. only: keep just the texts whose id is in it (e.g. one half of a split); the
    other texts take no part. Replicate r draws the S kept ids with replacement (seeded, the
    same for every language) and weights each text by its id's draw count.
    """

    def __init__(
        self,
        sentence_ids: Sequence,
        groups: np.ndarray,
        n_groups: int,
        seed: int,
        n_boot: int = N_BOOT,
        only: Collection | None = None,
    ):
        ids, groups = np.asarray(sentence_ids), np.asarray(groups)
        keep = np.ones(len(ids), dtype=bool) if only is None else np.isin(ids, np.asarray(list(only)))
        uniq, codes = np.unique(ids[keep], return_inverse=True)
        self.n_ids, self.n_boot = len(uniq), n_boot
        counts = (
            _resample_counts(self.n_ids, n_boot, seed, SLOT_IDS)
            if self.n_ids
            else np.zeros((n_boot, 0), np.float32)
        )
        kept = np.flatnonzero(keep)
        self.members: list[np.ndarray] = []  # per group: its kept texts' indices [n_g]
        self._weights: list[np.ndarray] = []  # per group: [n_boot, n_g] draw count of each member's id
        for g in range(n_groups):
            mine = groups[keep] == g
            self.members.append(kept[mine])
            self._weights.append(counts[:, codes[mine]])

    def weights(self, g: int) -> np.ndarray:
        """[n_boot, n_g] draw count of each of group g's kept texts (`members[g]`, in that order) in every
        replicate: what a statistic that is not a mean (a kappa, a macro-F1) is computed under."""
        return self._weights[g]

    def means(self, values: np.ndarray) -> Resampled:
        """Per-group means of per-text values, on the data and on every replicate.

        values: [N] or [N, Q] (one column per quantity, e.g. per condition), over all N texts.
        Returns point [G] or [G, Q] and reps [n_boot, G] or [n_boot, G, Q] (float64, one weighted
        matmul per group). A group without texts is NaN; so is a replicate that drew none of its
        texts' ids.
        """
        x = np.asarray(values, dtype=np.float64)
        cols = x[:, None] if x.ndim == 1 else x
        G, Q = len(self.members), cols.shape[1]
        point = np.full((G, Q), math.nan)
        reps = np.full((self.n_boot, G, Q), math.nan)
        for g, (idx, w) in enumerate(zip(self.members, self._weights)):
            if len(idx) == 0:
                continue
            point[g] = cols[idx].mean(axis=0)
            # the matmul is the cost, so float32; on deviations from the mean, so its rounding scales
            # with the spread, not the level (constant values give exactly their value)
            dev = (cols[idx] - point[g]).astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                reps[:, g] = point[g] + (w @ dev) / w.sum(axis=1, keepdims=True)
        if x.ndim == 1:
            return Resampled(point[:, 0], reps[:, :, 0])
        return Resampled(point, reps)


def mean_ci(values: np.ndarray, seed: int, n_boot: int = N_BOOT) -> Estimate:
    """Mean over texts of one language (each its own sentence), with a bootstrap CI. values: [n]."""
    values = np.asarray(values)
    plan = JointBootstrap(np.arange(len(values)), np.zeros(len(values), dtype=int), 1, seed, n_boot)
    return plan.means(values)[0].estimate()


def ratio_estimate(
    numerator: Resampled, denominator: Resampled, alpha: float = ALPHA
) -> tuple[Estimate, bool]:
    """numerator ÷ denominator (scalar Resampled from one plan) with its interval, and whether
    that interval is unbounded.

    A ratio only means something while its denominator is positive. When more than alpha/2 of
    the denominator's replicates are ≤ 0 (or undefined), any (1 − alpha) interval contains
    denominators arbitrarily close to zero, so the interval is (−inf, +inf) and flagged.
    Otherwise replicates whose denominator is ≤ 0 count as ±inf on their numerator's side
    (never dropped), so they can only widen the interval. A point denominator ≤ 0: NaN value.
    """
    den, num = denominator.reps.astype(np.float64), numerator.reps.astype(np.float64)
    bad = ~(den > 0) | np.isnan(num)
    unbounded = bool(len(den) and bad.mean() > alpha / 2)
    value = float(numerator.point / denominator.point) if denominator.point > 0 else math.nan
    if unbounded:
        return Estimate(value, -math.inf, math.inf), True
    if not np.isfinite(value):
        return Estimate(value, math.nan, math.nan), False
    reps = np.where(bad, np.where(num < 0, -math.inf, math.inf), num / np.where(bad, 1.0, den))
    # np.quantile interpolates inf − inf to NaN: clip to the largest finite float and map back
    big = np.finfo(np.float64).max
    low, high = percentile_interval(np.clip(reps, -big, big), alpha)
    low, high = (-math.inf if low <= -big else float(low)), (math.inf if high >= big else float(high))
    return Estimate(value, low, high), False


def mean_over_draws(per_draw: Resampled, seed: int) -> Resampled:
    """Mean over random-feature draws (the last axis, D draws) whose replicates also resample draws.

    per_draw: point [..., D], reps [n_boot, ..., D], each replicate's texts already resampled.
    Replicate r averages the draws drawn (with replacement, seeded) in that replicate, so the
    interval covers which random features were drawn as well as which texts. D = 1: texts only.
    """
    D, n_boot = per_draw.point.shape[-1], per_draw.reps.shape[0]
    w = _resample_counts(D, n_boot, seed, SLOT_DRAWS) / D  # [n_boot, D]
    reps = np.einsum("r...d,rd->r...", per_draw.reps, w)
    return Resampled(per_draw.point.mean(axis=-1), reps)


def argmax_frequency(candidates: Resampled) -> np.ndarray:
    """Share of replicates in which each candidate (last axis, [K]) is the largest: [K], sums to 1.

    candidates.reps: [n_boot, K]; replicates with an undefined candidate are left out.
    """
    reps = np.asarray(candidates.reps, dtype=np.float64)
    ok = np.isfinite(reps).all(axis=1)
    if not ok.any():
        return np.full(reps.shape[1], math.nan)
    return np.bincount(reps[ok].argmax(axis=1), minlength=reps.shape[1]) / ok.sum()


def split_halves(sentence_ids: Sequence, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the unique sentence ids into two halves by a seeded permutation of their sorted order.

    Returns (half A [⌊S/2⌋], half B [S − ⌊S/2⌋]) ids, each sorted; the same ids and seed always
    give the same halves. A selects (e.g. a peak layer), B reports.
    """
    uniq = np.unique(np.asarray(sentence_ids))
    perm = np.random.default_rng([seed, SLOT_SPLIT, len(uniq)]).permutation(len(uniq))
    cut = len(uniq) // 2
    return np.sort(uniq[perm[:cut]]), np.sort(uniq[perm[cut:]])


def bootstrap_record(seed: int, resampling: str, **more: object) -> dict:
    """A stage meta's "bootstrap" entry: how its intervals were made (resampling: what was drawn; more:
    e.g. how a random control's draws enter)."""
    return {
        "n_boot": N_BOOT,
        "alpha": ALPHA,
        "interval": "percentile",
        "seed": seed,
        "resampling": resampling,
        **more,
    }


def format_interval(
    value: float,
    low: float,
    high: float,
    digits: int = 3,
    signed: bool = True,
    sep: str = ", ",
    kind: str = "f",
) -> str:
    """'value [low, high]', the one way every table and report writes an estimate with its interval; 'n/a'
    when the value is not finite. digits, signed (a '+' on positive numbers), sep (between the bounds) and
    kind (a format type such as 'f' or 'g') keep each table's established look."""
    if not math.isfinite(value):
        return "n/a"
    spec = f"{'+' if signed else ''}.{digits}{kind}"
    return f"{value:{spec}} [{low:{spec}}{sep}{high:{spec}}]"
