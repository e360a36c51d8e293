"""Section 5 of the paper from a ΔCE sweep: the results table, Figure 5 and 6 data, the summary.

Everything here reads a langsae.sweep.SweepResult (per-text ΔCE of every condition, paired
with the baseline on the same texts) and aggregates it with langsae.stats: per-language
means of every condition are bootstrapped once, jointly over sentence ids (the evaluation
texts are translations of the same sentences), and every quantity is composed from them.
"self" = ΔCE on the ablated language's own texts; "others" = unweighted mean over the other
languages of their mean ΔCE; specificity = self − others (primary) and self ÷ others.
The summary's peak layer is chosen on one half of the sentences and reported on the other.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Sequence

import numpy as np

from langsae.artifacts import read_json, save_csv
from langsae.config import RunConfig
from langsae.errors import UserError
from langsae.features import stage_command
from langsae.stats import (
    N_BOOT,
    Estimate,
    JointBootstrap,
    Resampled,
    argmax_frequency,
    format_interval,
    mean_over_draws,
    ratio_estimate,
    split_halves,
)
from langsae.sweep import NO_LANGUAGE, RANDOM, SweepResult, feature_set_name

if TYPE_CHECKING:
    from langsae.verdicts import Artifacts

# Artifact names. Files made per ablation mode carry the mode's suffix (none for the paper's
# directional mode): `summary_file(mode)` etc.; RESULTS_FILE holds every mode's rows in one table.
RESULTS_FILE = "ablation_results.csv"
DEFAULT_MODE = "directional"
FIGURE5, FIGURE6 = "figure5", "figure6"  # figure stems in output/<run>/ (+ suffix, + .png/.pdf)


def mode_suffix(mode: str) -> str:
    """The file-name suffix of an ablation mode's Section 5 artifacts: none for the default mode."""
    return "" if mode == DEFAULT_MODE else f"_{mode}"


def summary_file(mode: str = DEFAULT_MODE) -> str:
    return f"section5_summary{mode_suffix(mode)}.csv"


def meta_file(mode: str = DEFAULT_MODE) -> str:
    return f"section5_meta{mode_suffix(mode)}.json"


def figure5_data_file(mode: str = DEFAULT_MODE) -> str:
    return f"figure5_data{mode_suffix(mode)}.csv"


def figure6_data_file(mode: str = DEFAULT_MODE) -> str:
    return f"figure6_data{mode_suffix(mode)}.csv"


def figure_stem(figure: str, mode: str = DEFAULT_MODE) -> str:
    """A figure's stem in output/<run>/ for `mode` (FIGURE5 or FIGURE6)."""
    return f"{figure}{mode_suffix(mode)}"


SUMMARY_FILE, META_FILE = summary_file(), meta_file()  # the default mode's, which the report reads
FIGURE5_PNG, FIGURE6_PNG = f"{FIGURE5}.png", f"{FIGURE6}.png"  # the report's images

RESULTS_COLUMNS = [
    "layer",
    "ablated_lang",
    "features",
    "mode",
    "eval_lang",
    "delta_ce",
    "ci_low",
    "ci_high",
    "n_texts",
    "n_tokens",
    "draw",
    "n_features",
    "feature_ids",
]
SCRIPT = "reproduce_figures_section5.py"
# How the sweep stages' intervals resample (their metas' "bootstrap" records): sentence ids, and
# the random control's draws as well.
RESAMPLING = "sentence ids with replacement, one draw shared by all languages"
RANDOM_RESAMPLING = "draws resampled with replacement as well as sentence ids"
PEAK_RULE = (
    "per language, the layer maximising own-text mean ΔCE of its top-1..k set on half A of the "
    "sentence ids (seeded split); every summary value is measured on half B"
)


class _Means:
    """Per-language mean ΔCE of every condition of a sweep, bootstrapped jointly over sentence ids.

    m: Resampled with point [G, C] and reps [n_boot, G, C] (G = evaluation languages, C = conditions),
    from one matmul per language. only: restrict to these sentence ids (a half of a split).
    """

    def __init__(self, result: SweepResult, seed: int, n_boot: int, only: Collection | None = None):
        ev = result.evalset
        self.result, self.seed, self.languages = result, seed, ev.languages
        self.plan = JointBootstrap(ev.sentence_ids, ev.lang_index, len(ev.languages), seed, n_boot, only)
        self.m = self.plan.means((result.ablated - result.baseline).T)

    def _g(self, langs: Sequence[str]) -> list[int]:
        return [self.languages.index(lang) for lang in langs]

    def n_texts(self, lang: str) -> int:
        """Texts of `lang` this plan uses."""
        return len(self.plan.members[self.languages.index(lang)])

    def on(self, eval_langs: Sequence[str], layer: int, ablated_lang: str, features: str) -> Resampled:
        """ΔCE of one condition, unweighted mean over `eval_langs` of their means (scalar)."""
        return self.m[self._g(eval_langs), self.result.index(layer, ablated_lang, features)].mean(0)

    def foreign(self, lang: str, layer: int, others: Sequence[str], features: str) -> Resampled:
        """On `lang`'s texts, ΔCE of the other languages' same feature set, mean over them (scalar)."""
        cols = [self.result.index(layer, o, features) for o in others]
        return self.m[self._g([lang])[0], cols].mean(0)

    def by_layer(self, lang: str, layers: Sequence[int], features: str) -> Resampled:
        """Own-text ΔCE of `lang`'s feature set at each layer: point [K], reps [n_boot, K]."""
        return self.m[self._g([lang])[0], [self.result.index(L, lang, features) for L in layers]]

    def random(self, lang: str, layer: int, k: int) -> Resampled | None:
        """On `lang`'s texts, ΔCE of k random live features: mean over draws, replicates resample
        draws and sentences (scalar); None without draws."""
        draws = self.result.random_draws(layer, k)
        if not draws:
            return None
        cols = [self.result.index(layer, NO_LANGUAGE, RANDOM, d, k) for d in draws]
        return mean_over_draws(self.m[self._g([lang])[0], cols], self.seed)

    def synergy(self, eval_langs: Sequence[str], layer: int, lang: str, top_k: int) -> Resampled:
        """Δ(top1+..+k) − Σ Δ(top r) of `lang`'s features on `eval_langs` (scalar). Means are linear
        in the per-text values, so this is the bootstrap of the paired per-text synergy."""
        out = self.on(eval_langs, layer, lang, _combined(top_k))
        for r in range(1, top_k + 1):
            out = out - self.on(eval_langs, layer, lang, f"top{r}")
        return out


def results_rows(result: SweepResult, seed: int, n_boot: int = N_BOOT) -> list[dict]:
    """One row per condition x evaluation language: mean ΔCE over texts with a joint-bootstrap CI."""
    means = _Means(result, seed, n_boot)
    low, high = means.m.interval()  # [G, C] each
    langs = list(enumerate(result.evalset.languages))
    members = [means.plan.members[g] for g, _ in langs]
    n_tokens = [int(result.n_tokens[idx].sum()) for idx in members]
    rows = []
    for i, c in enumerate(result.conditions):
        for g, lang in langs:
            rows.append(
                {
                    "layer": c.layer,
                    "ablated_lang": c.ablated_lang,
                    "features": c.features,
                    "mode": c.mode,
                    "eval_lang": lang,
                    "delta_ce": float(means.m.point[g, i]),
                    "ci_low": float(low[g, i]),
                    "ci_high": float(high[g, i]),
                    "n_texts": len(members[g]),
                    "n_tokens": n_tokens[g],
                    "draw": "" if c.draw is None else c.draw,
                    "n_features": len(c.feature_ids),
                    "feature_ids": "+".join(map(str, c.feature_ids)),
                }
            )
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
    return feature_set_name(range(1, top_k + 1))


def _row(est: Estimate, **keys) -> dict:
    return {**keys, "delta_ce": est.value, "ci_low": est.low, "ci_high": est.high}


def _cols(name: str, est: Estimate, ci: str | None = None) -> dict:
    """Summary columns of an estimate: `name`, `<ci>_ci_low`, `<ci>_ci_high` (ci defaults to name)."""
    ci = ci or name
    return {name: est.value, f"{ci}_ci_low": est.low, f"{ci}_ci_high": est.high}


NAN = Estimate(math.nan, math.nan, math.nan)


def figure5_rows(
    result, languages: Sequence[str], layers: Sequence[int], top_k: int, seed: int, n_boot: int = N_BOOT
) -> list[dict]:
    """Figure 5 data: per language, layer and feature set (top1, and top1+..+k when k > 1), the
    series self, others, and two controls on the language's own texts: `other_lang_features`
    (mean over the other languages' features of the same set) and `random` (k random live
    features of the layer, mean over draws; its CI resamples draws and sentences). All CIs from
    one joint bootstrap over sentence ids."""
    means = _Means(result, seed, n_boot)
    rows = []
    sets = [(1, "top1")] + ([(top_k, _combined(top_k))] if top_k > 1 else [])
    for lang in languages:
        others = _others(languages, lang)
        for L in layers:
            for k, fs in sets:
                keys = dict(language=lang, layer=L, features=fs)
                rows.append(_row(means.on([lang], L, lang, fs).estimate(), **keys, series="self"))
                if others:
                    rows.append(_row(means.on(others, L, lang, fs).estimate(), **keys, series="others"))
                    foreign = means.foreign(lang, L, others, fs).estimate()
                    rows.append(_row(foreign, **keys, series="other_lang_features"))
                rand = means.random(lang, L, k)
                if rand is not None:
                    rows.append(_row(rand.estimate(), **keys, series="random"))
    return rows


def figure6_rows(
    result, languages: Sequence[str], layers: Sequence[int], top_k: int, seed: int, n_boot: int = N_BOOT
) -> list[dict]:
    """Figure 6 data: per language and layer, on its own texts ("self") and on the others,
    ΔCE of each single top feature, of all together, and synergy = Δ(all) − Σ Δ(single)
    (paired per text), with joint-bootstrap CIs."""
    if top_k < 2:
        return []
    means = _Means(result, seed, n_boot)
    names = [f"top{r}" for r in range(1, top_k + 1)] + [_combined(top_k)]
    rows = []
    for lang in languages:
        for L in layers:
            for where, evals in (("self", [lang]), ("others", _others(languages, lang))):
                if not evals:
                    continue
                keys = {"language": lang, "layer": L, "eval": where}
                for name in names:
                    rows.append(_row(means.on(evals, L, lang, name).estimate(), **keys, quantity=name))
                rows.append(_row(means.synergy(evals, L, lang, top_k).estimate(), **keys, quantity="synergy"))
    return rows


def _peak_frequency(layers: Sequence[int], freq: np.ndarray) -> dict:
    """How often each layer is the argmax: "L:share;..." by share (layers never chosen left out),
    and the most frequent layer with its share."""
    order = sorted((i for i in range(len(layers)) if freq[i] > 0), key=lambda i: (-freq[i], layers[i]))
    if not order:
        return {"peak_frequency": "", "modal_peak_layer": "", "modal_peak_share": math.nan}
    return {
        "peak_frequency": ";".join(f"{layers[i]}:{freq[i]:.3f}" for i in order),
        "modal_peak_layer": layers[order[0]],
        "modal_peak_share": float(freq[order[0]]),
    }


def summary_rows(
    result, languages: Sequence[str], layers: Sequence[int], top_k: int, seed: int, n_boot: int = N_BOOT
) -> list[dict]:
    """Per language, at its held-out peak layer: self and others ΔCE, specificity, synergy, controls.

    The sentence ids are split in two with the seed (stats.split_halves). The peak layer is the
    argmax over layers of own-text ΔCE of the top-1..k set on half A; everything reported is
    measured on half B, so the peak's value is not inflated by having been chosen (an argmax
    over many layers measured on the texts that chose it is biased high). `peak_frequency`:
    how often each layer is the argmax over joint resamples of all sentences.
    Specificity: `specificity_diff` = self − mean others (primary, paired CI) and the ratio
    `specificity` (interval ±inf and `specificity_ratio_unbounded` when its denominator's
    replicates cross zero). `shared_with` lists languages whose top-k overlaps at that layer.
    """
    fs = _combined(top_k)
    half_a, half_b = split_halves(result.evalset.sentence_ids, seed)
    select = _Means(result, seed, 0, only=half_a)  # point values only
    report = _Means(result, seed, n_boot, only=half_b)
    everything = _Means(result, seed, n_boot)
    rows = []
    for lang in languages:
        selection = select.by_layer(lang, layers, fs).point
        peak = layers[int(np.nanargmax(selection))] if np.isfinite(selection).any() else layers[0]
        others = _others(languages, lang)
        row = {
            "language": lang,
            "peak_layer": peak,
            "features": fs,
            **_peak_frequency(layers, argmax_frequency(everything.by_layer(lang, layers, fs))),
            "peak_selection_half_n": select.n_texts(lang),
            "report_half_n": report.n_texts(lang),
        }
        own = report.on([lang], peak, lang, fs)
        row.update(_cols("self_delta_ce", own.estimate(), "self"))
        if others:
            rest = report.on(others, peak, lang, fs)
            ratio, unbounded = ratio_estimate(own, rest)
            row.update(
                _cols("others_delta_ce", rest.estimate(), "others"),
                **_cols("specificity_diff", (own - rest).estimate()),
            )
            row.update(_cols("specificity", ratio), specificity_ratio_unbounded=unbounded)
            row.update(
                _cols(
                    "other_lang_features_delta_ce",
                    report.foreign(lang, peak, others, fs).estimate(),
                    "other_lang_features",
                )
            )
        else:
            row.update(
                _cols("others_delta_ce", NAN, "others"),
                **_cols("specificity_diff", NAN),
                **_cols("specificity", NAN),
            )
            row.update(
                specificity_ratio_unbounded=False,
                **_cols("other_lang_features_delta_ce", NAN, "other_lang_features"),
            )
        row.update(
            _cols("synergy", report.synergy([lang], peak, lang, top_k).estimate() if top_k > 1 else NAN)
        )
        rand = report.random(lang, peak, top_k)
        row.update(_cols("random_delta_ce", rand.estimate() if rand is not None else NAN, "random"))
        row["random_draws"] = len(result.random_draws(peak, top_k))
        mine = set(result.feature_ids(peak, lang, fs))
        row["feature_ids"] = "+".join(map(str, sorted(mine)))
        row["shared_with"] = ",".join(o for o in others if mine & set(result.feature_ids(peak, o, fs)))
        rows.append(row)
    return rows


def format_summary(rows: Sequence[dict]) -> str:
    """The per-language summary as a fixed-width table for the terminal."""

    def ci(r, key, ci=None):
        v, lo, hi = (float(r[k]) for k in (key, f"{ci or key}_ci_low", f"{ci or key}_ci_high"))
        return format_interval(v, lo, hi, sep=",")

    def ratio(r):
        if str(r["specificity_ratio_unbounded"]) == "True":
            return "unbounded"
        return f"{float(r['specificity']):.2f}" if np.isfinite(float(r["specificity"])) else "n/a"

    head = (
        f"{'language':<10}{'peak':>5}{'share':>7}  {'self ΔCE [95% CI]':<26}{'self − others [95% CI]':<26}"
        f"{'self÷others':>11}  {'synergy [95% CI]':<26}{'random [95% CI]':<26}shared top-k with"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['language']:<10}{r['peak_layer']:>5}{float(r['modal_peak_share']):>7.2f}  "
            f"{ci(r, 'self_delta_ce', 'self'):<26}{ci(r, 'specificity_diff'):<26}{ratio(r):>11}  "
            f"{ci(r, 'synergy'):<26}{ci(r, 'random_delta_ce', 'random'):<26}{r['shared_with'] or '-'}"
        )
    lines.append(
        "peak: chosen on half A of the sentences, all values measured on half B; share: how often the "
        "most frequent peak layer wins across resamples; random: CI resamples draws and sentences"
    )
    return "\n".join(lines)


def load_peaks(cfg: RunConfig, store_settings: dict, mode: str, n_texts: int) -> dict[str, int]:
    """Each language's held-out peak layer from the Section 5 summary of this run, refused when
    missing or made from other settings (model, evaluation texts, nu run, mode)."""
    fdir = Path(cfg.features_dir)
    meta_path, summary_path = fdir / meta_file(mode), fdir / summary_file(mode)
    command = stage_command(SCRIPT, cfg, f"--n-texts {n_texts}", f"--mode {mode}")
    if not meta_path.exists() or not summary_path.exists():
        raise UserError(
            f"no Section 5 summary in {fdir} (its held-out peak layers are needed); run `{command}` first"
        )
    meta = read_json(meta_path, command)
    with open(summary_path, newline="") as f:
        peaks = {r["language"]: int(r["peak_layer"]) for r in csv.DictReader(f)}
    same = meta.get("settings") == store_settings and meta.get("mode") == mode
    if not same or not set(cfg.languages) <= set(peaks):
        raise UserError(f"the Section 5 summary in {fdir} was made with other settings; run `{command}`")
    return {lang: peaks[lang] for lang in cfg.languages}


# ----------------------------------------------------------------------------- reading a run's results


def summary(a: Artifacts) -> tuple[list[dict], dict] | None:
    """The run's Section 5 summary rows and meta, or None before Section 5 (or when either is unreadable)."""
    rows, meta = a.csv(SUMMARY_FILE), a.json(META_FILE)
    return (rows, meta) if rows and meta else None


def modal_peak(a: Artifacts) -> int | None:
    """The layer where most of Section 5's held-out peaks lie (None before Section 5)."""
    s5 = summary(a)
    peaks = [int(r["peak_layer"]) for r in s5[0]] if s5 else []
    return max(set(peaks), key=peaks.count) if peaks else None
