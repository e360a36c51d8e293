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


# ----------------------------------------------------------------------------- Section 5 summaries
#
# These read a langsae.ablation.SweepResult: per-text ΔCE of every condition, paired with
# the baseline on the same texts. "self" = ΔCE on the ablated language's own texts;
# "others" = unweighted mean over the other languages of their mean ΔCE.


def _others(languages: Sequence[str], lang: str) -> list[str]:
    return [other for other in languages if other != lang]


def _combined(top_k: int) -> str:
    return "top" + "+".join(str(r) for r in range(1, top_k + 1))


def _row(est: Estimate, **keys) -> dict:
    return {**keys, "delta_ce": est.value, "ci_low": est.low, "ci_high": est.high}


def figure5_rows(result, languages: Sequence[str], layers: Sequence[int], top_k: int, seed: int) -> list[dict]:
    """Figure 5 data: per language, layer and feature set (top1, and top1+..+k when k > 1), the
    series self, others, and two controls on the language's own texts: `other_lang_features`
    (mean over the other languages' features of the same set) and `random` (k random live
    features of the layer, mean over draws)."""
    rows = []
    sets = [(1, "top1")] + ([(top_k, _combined(top_k))] if top_k > 1 else [])
    for lang in languages:
        own = result.evalset.texts_of(lang)
        others = _others(languages, lang)
        for L in layers:
            for k, fs in sets:
                d = result.delta(L, lang, fs)
                rows.append(_row(mean_ci(d[own], seed), language=lang, layer=L, features=fs, series="self"))
                if others:
                    groups = [d[result.evalset.texts_of(o)] for o in others]
                    rows.append(_row(group_mean_ci(groups, seed), language=lang, layer=L, features=fs, series="others"))
                    foreign = np.mean([result.delta(L, o, fs)[own] for o in others], axis=0)
                    rows.append(_row(mean_ci(foreign, seed), language=lang, layer=L, features=fs, series="other_lang_features"))
                rand = result.random_delta(L, k)
                if rand is not None:
                    rows.append(_row(mean_ci(rand[own], seed), language=lang, layer=L, features=fs, series="random"))
    return rows


def figure6_rows(result, languages: Sequence[str], layers: Sequence[int], top_k: int, seed: int) -> list[dict]:
    """Figure 6 data: per language and layer, on its own texts ("self") and on the others,
    ΔCE of each single top feature, of all together, and synergy = Δ(all) − Σ Δ(single),
    bootstrapped on the per-text synergy (paired)."""
    if top_k < 2:
        return []
    singles = [f"top{r}" for r in range(1, top_k + 1)]
    combined = _combined(top_k)
    rows = []
    for lang in languages:
        for L in layers:
            d = {fs: result.delta(L, lang, fs) for fs in [*singles, combined]}
            synergy = d[combined] - sum(d[fs] for fs in singles)
            for where, evals in (("self", [lang]), ("others", _others(languages, lang))):
                if not evals:
                    continue
                idx = [result.evalset.texts_of(e) for e in evals]
                for name, per_text in [*((fs, d[fs]) for fs in [*singles, combined]), ("synergy", synergy)]:
                    est = group_mean_ci([per_text[i] for i in idx], seed)
                    rows.append(_row(est, language=lang, layer=L, eval=where, quantity=name))
    return rows


def summary_rows(result, languages: Sequence[str], layers: Sequence[int], top_k: int, seed: int) -> list[dict]:
    """Per language: the layer where ablating its top-1..k features hurts its own texts most,
    and there the specificity ratio (self ΔCE ÷ mean ΔCE on the other languages), synergy,
    and the two controls. `shared_with` lists languages whose top-k overlaps at that layer
    (their ablations are partly the same)."""
    fs = _combined(top_k)
    rows = []
    for lang in languages:
        own = result.evalset.texts_of(lang)
        self_by_layer = {L: float(np.mean(result.delta(L, lang, fs)[own])) for L in layers}
        peak = max(layers, key=lambda L: self_by_layer[L])
        d = result.delta(peak, lang, fs)
        others = _others(languages, lang)
        groups = [d[result.evalset.texts_of(o)] for o in others]
        row = {"language": lang, "peak_layer": peak, "features": fs}
        est = mean_ci(d[own], seed)
        row.update(self_delta_ce=est.value, self_ci_low=est.low, self_ci_high=est.high)
        est = group_mean_ci(groups, seed) if others else Estimate(math.nan, math.nan, math.nan)
        row.update(others_delta_ce=est.value, others_ci_low=est.low, others_ci_high=est.high)
        est = ratio_ci(d[own], groups, seed) if others else Estimate(math.nan, math.nan, math.nan)
        row.update(specificity=est.value, specificity_ci_low=est.low, specificity_ci_high=est.high)
        if top_k > 1:
            syn = d - sum(result.delta(peak, lang, f"top{r}") for r in range(1, top_k + 1))
            est = mean_ci(syn[own], seed)
        else:
            est = Estimate(math.nan, math.nan, math.nan)
        row.update(synergy=est.value, synergy_ci_low=est.low, synergy_ci_high=est.high)
        rand = result.random_delta(peak, top_k)
        row["random_delta_ce"] = float(np.mean(rand[own])) if rand is not None else math.nan
        row["other_lang_features_delta_ce"] = (
            float(np.mean([np.mean(result.delta(peak, o, fs)[own]) for o in others])) if others else math.nan
        )
        mine = set(result.feature_ids(peak, lang, fs))
        row["feature_ids"] = "+".join(map(str, sorted(mine)))
        row["shared_with"] = ",".join(o for o in others if mine & set(result.feature_ids(peak, o, fs)))
        rows.append(row)
    return rows


def format_summary(rows: Sequence[dict]) -> str:
    """The per-language summary as a fixed-width table for the terminal."""

    def ci(v, lo, hi):
        return f"{v:+.3f} [{lo:+.3f},{hi:+.3f}]" if np.isfinite(v) else "n/a"

    head = f"{'language':<10}{'peak':>5}  {'self ΔCE [95% CI]':<26}{'others ΔCE':>11}  {'specificity':>11}  {'synergy [95% CI]':<26}{'random':>8}{'other lang':>11}  shared top-k with"
    lines = [head, "-" * len(head)]
    for r in rows:
        spec = f"{r['specificity']:.2f}" if np.isfinite(r["specificity"]) else "n/a"
        lines.append(
            f"{r['language']:<10}{r['peak_layer']:>5}  {ci(r['self_delta_ce'], r['self_ci_low'], r['self_ci_high']):<26}"
            f"{r['others_delta_ce']:>+11.3f}  {spec:>11}  {ci(r['synergy'], r['synergy_ci_low'], r['synergy_ci_high']):<26}"
            f"{r['random_delta_ce']:>+8.3f}{r['other_lang_features_delta_ce']:>+11.3f}  {r['shared_with'] or '-'}"
        )
    return "\n".join(lines)
