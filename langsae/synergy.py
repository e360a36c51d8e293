"""Pairwise feature synergy between languages, and whether it differs within and between clusters.

For languages A and B at layer L, one condition ablates A's top-1 together with B's top-1 (the
orthonormal basis of the union): measured on every language's texts, it gives ΔAB on A's
texts and on B's texts. ΔA and ΔB are Section 5's top-1 conditions (cached there). Synergy
on A's texts = ΔAB − ΔA − ΔB, paired per text (means are linear, so the joint bootstrap of
the three means is the bootstrap of the per-text synergy). A pair's synergy in the summaries
is the mean of its two sides.

Degenerate pairs: when A and B share their top-1 feature, ΔAB = ΔA = ΔB and the synergy is
−ΔA by construction (`same_feature`); when their decoder directions nearly coincide
(|cosine| above a threshold, `overlapping`), most of it is. Every summary is given with and
without them. Intra- vs inter-cluster: mean synergy of pairs whose languages share a cluster
minus that of the others, tested by permuting the languages' cluster labels (cluster sizes
kept); a regression of synergy on the pair's |cosine| asks whether shared directions explain
sub-additivity, and the intra coefficient of synergy ~ 1 + |cosine| + intra (same permutation
test) asks whether clusters add anything once they have. The sign of a cosine does not matter to a
directional ablation (it removes a span), hence |cosine|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import linregress

from langsae.features import NuResults
from langsae.stats import Estimate, JointBootstrap, Resampled, format_interval
from langsae.sweep import Condition, SweepResult, language_conditions

SINGLE = "top1"

# Artifact names (sae_features/<run>/ files; output/<run>/ figure stems, + .png/.pdf)
PAIRS_FILE, SUMMARY_FILE = "cluster_synergy.csv", "cluster_synergy_summary.json"
INTRA_INTER_FIGURE, COSINE_FIGURE, PAIRS_FIGURE = "synergy_intra_inter", "synergy_vs_cosine", "synergy_pairs"
FIGURES = (INTRA_INTER_FIGURE, COSINE_FIGURE, PAIRS_FIGURE)
SCRIPT = "cluster_synergy.py"

# What the summary's numbers are (its meta fields of the same names)
PAIR_SYNERGY = "mean of the pair's synergy on A's texts and on B's texts"
REGRESSION = "pair synergy on |cosine| of the two top-1 decoder directions (scipy.stats.linregress)"
PERMUTATION_TEST = (
    "two-sided, intra mean - inter mean, cluster labels permuted over languages (sizes kept), "
    "p = (1 + hits) / (1 + n)"
)


def pair_name(a: str, b: str) -> str:
    """The `ablated_lang` of a pair condition: 'eng_Latn+spa_Latn'."""
    return f"{a}+{b}"


@dataclass(frozen=True)
class Pair:
    """An unordered pair of languages at one layer, with what makes it degenerate."""

    layer: int
    a: str
    b: str
    feature_a: int
    feature_b: int
    cosine: float  # of the two top-1 decoder directions (1 when they are one feature)
    overlap_threshold: float

    @property
    def same_feature(self) -> bool:
        return self.feature_a == self.feature_b

    @property
    def overlapping(self) -> bool:
        return abs(self.cosine) > self.overlap_threshold

    @property
    def degenerate(self) -> bool:
        return self.same_feature or self.overlapping


def language_pairs(nu: NuResults, languages: Sequence[str], overlap_threshold: float) -> list[Pair]:
    """Every unordered pair of `languages` at every layer of `nu`, in a fixed order (layer, then
    the order of `languages`)."""
    out = []
    for L, lf in sorted(nu.layers.items()):
        for a, b in combinations(languages, 2):
            (fa,), (fb,) = lf.top(a, (1,)), lf.top(b, (1,))
            w = lf.W_dec[lf.rows([fa, fb])].detach().double()
            cos = float(w[0] @ w[1] / (w[0].norm() * w[1].norm()))
            out.append(Pair(L, a, b, fa, fb, cos, overlap_threshold))
    return out


def pair_conditions(
    nu: NuResults, languages: Sequence[str], mode: str, pairs: Sequence[Pair]
) -> list[Condition]:
    """Per layer: each language's top-1 (Section 5's) and, per pair, the union of the two top-1s."""
    out = []
    for _, lf in sorted(nu.layers.items()):
        out += language_conditions(lf, languages, mode, (1,))
    for p in pairs:
        out.append(
            Condition(p.layer, mode, pair_name(p.a, p.b), SINGLE, tuple(sorted({p.feature_a, p.feature_b})))
        )
    return out


@dataclass(frozen=True)
class PairEffects:
    """Per pair and side (0: on A's texts, 1: on B's texts), each Resampled with point [P, 2] and
    reps [n_boot, P, 2] from one joint bootstrap over sentence ids: ΔAB, ΔA, ΔB and synergy."""

    pairs: list[Pair]
    delta_ab: Resampled
    delta_a: Resampled
    delta_b: Resampled

    @property
    def synergy(self) -> Resampled:
        return self.delta_ab - self.delta_a - self.delta_b

    def pair_synergy(self) -> Resampled:
        """Mean of the two sides: point [P], reps [n_boot, P]."""
        s = self.synergy
        return Resampled(s.point.mean(axis=-1), s.reps.mean(axis=-1))


def pair_effects(result: SweepResult, pairs: Sequence[Pair], seed: int, n_boot: int) -> PairEffects:
    """ΔAB, ΔA and ΔB on both languages' texts for every pair, from a sweep of `pair_conditions`."""
    ev = result.evalset
    plan = JointBootstrap(ev.sentence_ids, ev.lang_index, len(ev.languages), seed, n_boot)
    P = len(pairs)
    point = np.zeros((3, P, 2))
    reps = np.zeros((3, n_boot, P, 2))
    for L in sorted({p.layer for p in pairs}):
        mine = [i for i, p in enumerate(pairs) if p.layer == L]
        cols = {}  # (ablated_lang) -> column of the layer's means
        for i in mine:
            for name in (pair_name(pairs[i].a, pairs[i].b), pairs[i].a, pairs[i].b):
                cols.setdefault(name, len(cols))
        rows = [result.index(L, name, SINGLE) for name in cols]
        m = plan.means((result.ablated[rows] - result.baseline).T)  # point [G, C], reps [B, G, C]
        for i in mine:
            p = pairs[i]
            for side, lang in enumerate((p.a, p.b)):
                g = ev.languages.index(lang)
                for q, name in enumerate((pair_name(p.a, p.b), p.a, p.b)):
                    point[q, i, side] = m.point[g, cols[name]]
                    reps[q, :, i, side] = m.reps[:, g, cols[name]]
    return PairEffects(list(pairs), *(Resampled(point[q], reps[q]) for q in range(3)))


# ----------------------------------------------------------------------------- intra vs inter


def intra_mask(pairs: Sequence[Pair], labels: Mapping[str, int]) -> np.ndarray:
    """[P] bool: both languages of the pair are in one cluster."""
    return np.array([labels[p.a] == labels[p.b] for p in pairs], dtype=bool)


def group_means(values: Resampled, intra: np.ndarray) -> tuple[Resampled, Resampled, Resampled]:
    """Mean synergy over intra pairs, over inter pairs, and intra − inter (values: point [P], reps [B, P])."""

    def mean(mask):
        if not mask.any():
            return Resampled(np.array(math.nan), np.full(len(values.reps), math.nan))
        return Resampled(values.point[mask].mean(), values.reps[:, mask].mean(axis=1))

    i, o = mean(intra), mean(~intra)
    return i, o, i - o


def permutation_test(
    values: np.ndarray,
    a_idx: np.ndarray,
    b_idx: np.ndarray,
    labels: np.ndarray,
    n_perm: int,
    seed: int,
    covariate: np.ndarray | None = None,
) -> tuple[float, float, int]:
    """The cluster effect on `values` [P] and its two-sided p-value under random permutations of the
    languages' cluster `labels` [G] (which keeps the cluster sizes). Pair p joins languages
    a_idx[p] and b_idx[p].

    The effect is the least-squares coefficient of intra-cluster membership in values ~ 1 + intra
    (= mean over intra pairs − mean over inter pairs) or, with a `covariate` [P], in
    values ~ 1 + covariate + intra: the cluster effect beyond what the covariate (the pair's
    |cosine|) explains. Computed by partialling out (Frisch–Waugh): residualise intra and values on
    [1, covariate], then coefficient = <r_intra, r_values> / <r_intra, r_intra>.

    Returns (effect, p, n) with p = (1 + #{|T_perm| ≥ |T_obs|}) / (1 + n) over the n permutations
    where the effect is defined (both groups have pairs; the +1 counts the observed labelling, so
    p is never 0 and the test keeps its level). NaN effect and p when it is undefined as observed.
    """
    values, labels = np.asarray(values, dtype=np.float64), np.asarray(labels)
    x0 = (
        np.ones((len(values), 1)) if covariate is None else np.column_stack([np.ones(len(values)), covariate])
    )
    hat = x0 @ np.linalg.pinv(x0)  # projection onto [1, covariate]
    r_values = values - hat @ values

    def stat(lab):  # lab [R, G] -> [R]
        intra = (lab[:, a_idx] == lab[:, b_idx]).astype(np.float64)
        r_intra = intra - intra @ hat  # hat is symmetric
        ss = (r_intra * r_intra).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ss > 1e-9, (r_intra @ r_values) / ss, math.nan)

    observed = stat(labels[None, :])[0]
    if not np.isfinite(observed):
        return math.nan, math.nan, 0
    rng = np.random.default_rng([seed, 3])
    perms = np.argsort(rng.random((n_perm, len(labels))), axis=1)
    t = stat(labels[perms])
    t = t[np.isfinite(t)]
    # a relative tolerance: permutations that give the observed split again must count as "as extreme"
    hits = np.sum(np.abs(t) >= np.abs(observed) * (1 - 1e-12) - 1e-15)
    return float(observed), float((1 + hits) / (1 + len(t))), len(t)


def regression(x: np.ndarray, y: np.ndarray) -> dict:
    """Least-squares y = slope·x + intercept with Pearson r and its two-sided p (scipy.stats.linregress)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "intercept": math.nan, "r": math.nan, "p": math.nan, "n": len(x)}
    r = linregress(x, y)
    return {
        "slope": float(r.slope),
        "intercept": float(r.intercept),
        "r": float(r.rvalue),
        "p": float(r.pvalue),
        "n": len(x),
    }


def _est(e: Estimate, n: int) -> dict:
    return {"value": e.value, "ci_low": e.low, "ci_high": e.high, "n_pairs": n}


def compare(
    effects: PairEffects,
    which: np.ndarray,
    labels: Mapping[str, int],
    languages: Sequence[str],
    n_perm: int,
    seed: int,
) -> dict:
    """Intra vs inter on the pairs selected by `which` [P] bool: means with CIs, difference with CI,
    permutation p-value, the regression of pair synergy on |cosine|, and the cluster effect left
    once |cosine| is accounted for (`intra_given_cosine`: the intra coefficient of
    synergy ~ 1 + |cosine| + intra, with its label-permutation p). The regression's own p treats
    pairs as independent, which they are not (pairs share languages): read it as descriptive."""
    idx = np.flatnonzero(which)
    pairs = [effects.pairs[i] for i in idx]
    values = effects.pair_synergy()[idx]
    intra = intra_mask(pairs, labels)
    i, o, diff = group_means(values, intra)
    lab = np.array([labels[lang] for lang in languages])
    a_idx = np.array([languages.index(p.a) for p in pairs], dtype=int)
    b_idx = np.array([languages.index(p.b) for p in pairs], dtype=int)
    cos = np.array([abs(p.cosine) for p in pairs])
    none = (math.nan, math.nan, 0)  # no pairs to test
    plain = permutation_test(values.point, a_idx, b_idx, lab, n_perm, seed) if len(pairs) else none
    given = permutation_test(values.point, a_idx, b_idx, lab, n_perm, seed, cos) if len(pairs) else none
    (_, p_value, n_used), (effect, p_given, n_given) = plain, given
    return {
        "intra": _est(i.estimate(), int(intra.sum())),
        "inter": _est(o.estimate(), int((~intra).sum())),
        "difference": _est(diff.estimate(), len(pairs)),
        "permutation_p": p_value,
        "n_permutations": n_used,
        "regression": regression(cos, values.point),
        "intra_given_cosine": {"coefficient": effect, "permutation_p": p_given, "n_permutations": n_given},
    }


def summary(
    effects: PairEffects, labels: Mapping[str, int], languages: Sequence[str], n_perm: int, seed: int
) -> dict:
    """Per layer and over all layers pooled: `compare` with and without degenerate pairs."""
    layers = np.array([p.layer for p in effects.pairs])
    clean = ~np.array([p.degenerate for p in effects.pairs], dtype=bool)
    out = {}
    for key, sel in [
        *((str(L), layers == L) for L in sorted(set(layers.tolist()))),
        ("all_layers", np.ones(len(layers), bool)),
    ]:
        out[key] = {
            "with_degenerate": compare(effects, sel, labels, languages, n_perm, seed),
            "without_degenerate": compare(effects, sel & clean, labels, languages, n_perm, seed),
            "n_same_feature": int(sum(effects.pairs[i].same_feature for i in np.flatnonzero(sel))),
            "n_overlapping": int(sum(effects.pairs[i].overlapping for i in np.flatnonzero(sel))),
        }
    return out


def pair_rows(effects: PairEffects, labels: Mapping[str, int], n_texts: Mapping[str, int]) -> list[dict]:
    """One row per pair, layer and evaluation side, with the flags and the cosine."""
    syn = effects.synergy
    low, high = syn.interval()
    rows = []
    for i, p in enumerate(effects.pairs):
        for side, lang in enumerate((p.a, p.b)):
            rows.append(
                {
                    "layer": p.layer,
                    "lang_a": p.a,
                    "lang_b": p.b,
                    "eval_lang": lang,
                    "feature_a": p.feature_a,
                    "feature_b": p.feature_b,
                    "cosine": p.cosine,
                    "same_feature": p.same_feature,
                    "overlapping": p.overlapping,
                    "degenerate": p.degenerate,
                    "intra_cluster": labels[p.a] == labels[p.b],
                    "cluster_a": labels[p.a],
                    "cluster_b": labels[p.b],
                    "delta_ab": float(effects.delta_ab.point[i, side]),
                    "delta_a": float(effects.delta_a.point[i, side]),
                    "delta_b": float(effects.delta_b.point[i, side]),
                    "synergy": float(syn.point[i, side]),
                    "ci_low": float(low[i, side]),
                    "ci_high": float(high[i, side]),
                    "n_texts": n_texts[lang],
                }
            )
    return rows


def format_summary(summary: Mapping) -> str:
    """Intra vs inter per layer for the terminal, with and without degenerate pairs."""

    def ci(e):
        return format_interval(e["value"], e["ci_low"], e["ci_high"], sep=",")

    head = (
        f"{'layer':<11}{'pairs':<9}{'intra [95% CI]':<27}{'inter [95% CI]':<27}"
        f"{'intra − inter [95% CI]':<27}{'perm. p':>8}"
        f"  synergy ~ |cos|: slope, r    intra beyond |cos|, perm. p"
    )
    lines = [head, "-" * len(head)]
    for layer, s in summary.items():
        for which in ("with_degenerate", "without_degenerate"):
            c, r, g = s[which], s[which]["regression"], s[which]["intra_given_cosine"]
            n = f"{c['intra']['n_pairs']}+{c['inter']['n_pairs']}"
            lines.append(
                f"{layer:<11}{n:<9}{ci(c['intra']):<27}{ci(c['inter']):<27}{ci(c['difference']):<27}"
                f"{c['permutation_p']:>8.3g}  {r['slope']:+.3f}, {r['r']:+.2f}{'':<14}"
                f"{g['coefficient']:+.3f}, {g['permutation_p']:.3g}"
                + ("" if which == "with_degenerate" else "   (degenerate pairs left out)")
            )
        lines.append(
            f"{'':<11}{s['n_same_feature']} pairs share their top-1 feature, {s['n_overlapping']} overlap "
            "above the threshold"
        )
    lines.append("pairs: intra+inter; a pair's synergy is the mean of ΔAB − ΔA − ΔB on A's and on B's texts")
    return "\n".join(lines)
