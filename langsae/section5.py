"""Section 5 of the paper from a ΔCE sweep: the results table, Figure 5 and 6 data, the summary.

Everything here reads a langsae.sweep.SweepResult (per-text ΔCE of every condition, paired
with the baseline on the same texts) and aggregates it with langsae.stats. "self" = ΔCE on
the ablated language's own texts; "others" = unweighted mean over the other languages of
their mean ΔCE.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from langsae.artifacts import save_csv
from langsae.stats import Estimate, group_mean_ci, mean_ci, ratio_ci
from langsae.sweep import SweepResult

RESULTS_COLUMNS = [
    "layer", "ablated_lang", "features", "mode", "eval_lang", "delta_ce", "ci_low", "ci_high",
    "n_texts", "n_tokens", "draw", "n_features", "feature_ids",
]  # fmt: skip


def results_rows(result: SweepResult, seed: int) -> list[dict]:
    """One row per condition x evaluation language: mean ΔCE over texts with a bootstrap CI."""
    rows = []
    texts = {lang: result.evalset.texts_of(lang) for lang in result.evalset.languages}
    for i, c in enumerate(result.conditions):
        delta = result.ablated[i] - result.baseline
        for lang, idx in texts.items():
            est = mean_ci(delta[idx], seed)
            rows.append({
                "layer": c.layer, "ablated_lang": c.ablated_lang, "features": c.features, "mode": c.mode,
                "eval_lang": lang, "delta_ce": est.value, "ci_low": est.low, "ci_high": est.high,
                "n_texts": len(idx), "n_tokens": int(result.n_tokens[idx].sum()),
                "draw": "" if c.draw is None else c.draw, "n_features": len(c.feature_ids),
                "feature_ids": "+".join(map(str, c.feature_ids)),
            })  # fmt: skip
    return rows


def write_results(rows: list[dict], path: Path, mode: str) -> None:
    """Write the results table; rows of the other ablation mode already in it are kept, so one
    table holds both modes when both were run."""
    kept = []
    if Path(path).exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("mode") != mode]
    save_csv(kept + rows, path, RESULTS_COLUMNS)



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
