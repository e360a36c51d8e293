"""output/<run>/REPORT.md: every claim next to its evidence, built from a run's artifacts alone.

`write_report(features_dir, output_dir)` can be called by any stage (run_pipeline.py calls it
after every stage); it reads only files the stages wrote and never loads a model. The claims
are a registry (`CLAIMS`): each is a sentence, where it comes from, the stage that can answer
it, and a function from the run's artifacts to `Evidence` (numbers with CIs, the control next
to them, the figure, a verdict by `VERDICT_RULE`), or None when that stage has not run, in
which case its row says "not run".

    python -m langsae.report --model toy      # rebuild output/toy/REPORT.md
    python -m langsae.report --readme         # README's toy results block from output/toy/REPORT.md
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from langsae.artifacts import package_versions, read_json, save_text
from langsae.errors import CorruptArtifact
from langsae.stats import format_interval

REPORT_NAME = "REPORT.md"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN = "supported", "not supported", "inconclusive", "not run"
FREQ_SURE = 0.95  # a categorical claim wins in at least this share of resamples: supported (at most 1 − this: not)
COLLAPSE_SHARE = 0.5  # a collapse loses at least this share of the baseline's margin over chance
ROBUST_SHARE = 0.1  # robust: the drop beyond random stays within this share of that margin
PERMUTATION_ALPHA = 0.05  # intra vs inter cluster: the permutation test of the cluster labels must reach this

VERDICT_RULE = f"""\
**Verdict rule.** An *interval* claim (an effect in a stated direction) is **supported** when
the effect's 95% CI excludes zero and lies beyond the control's 95% CI, both in the claimed
direction; **not supported** when the CI lies entirely on the other side of zero or of the
control's CI; **inconclusive** otherwise. A *categorical* claim (which layer peaks) is judged
by how often the claimed answer wins across the joint bootstrap resamples: supported at
≥ {FREQ_SURE:.0%}, not supported at ≤ {1 - FREQ_SURE:.0%}, inconclusive in between. A claim
about several languages combines their verdicts as it is worded: *every* language (supported
when all are, not supported when any is not), *most* languages (supported when more than half
are, not supported when at least half are not), or *some* language (supported when any is, not
supported when all are not); otherwise inconclusive. A claim about a layer or language this
run did not measure is inconclusive. Cluster claims are categorical, pair by pair: the share
of stage 3's bootstrap resamples in which the two languages share (or do not share) a cluster.
Intra- vs inter-cluster synergy leaves out the pairs that share (or nearly share) a top-1
feature and needs, besides the intervals, the permutation test of the languages' cluster labels
at p < {PERMUTATION_ALPHA} (the sentence bootstrap holds the pairs fixed).
The exclusivity claim is counted from the ν stage, without resampling: supported when every
language's top-1 feature is in no other language's top-5 at the layer of most held-out peaks, not
supported when at most half are, inconclusive in between. The code-switching claim is judged per
language at that layer (chosen without the probe items), combined as *most*; gated steering per
task, language pair and layer span, its success at the best α (chosen on one half of the items
under the collateral budget, reported on the other) against no steering and every control,
combined as *most*.
Task claims are judged per task and language on the primary metric (QA F1, sentiment and topic
accuracy): a baseline whose CI reaches chance (F1 0, accuracy 1/5 and 1/7) has nothing to lose
and is inconclusive; a **collapse** is a drop beyond the random features' whose CI lies entirely
past {COLLAPSE_SHARE:.0%} of the baseline's margin over chance (not supported when the drop is
not beyond random, or its CI lies entirely short of that); **robust** means own − random has a
CI above −{ROBUST_SHARE:.0%} of that margin (not supported when it lies entirely below zero).
CIs are 95% percentile intervals of a bootstrap that resamples sentence ids (items) jointly
across languages (random controls: draws as well); a claim about "some" of ten languages is
not corrected for multiple comparisons."""


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    def __str__(self) -> str:
        return format_interval(self.value, self.low, self.high) if self.finite() else "n/a"


def interval_verdict(effect: Interval, control: Interval | None = None, direction: int = 1) -> str:
    """VERDICT_RULE for an effect claimed to be > 0 (direction +1) or < 0 (-1), and beyond `control`."""
    if not effect.finite() or (control is not None and not control.finite()):
        return INCONCLUSIVE
    lo, hi = sorted((direction * effect.low, direction * effect.high))
    c_lo, c_hi = sorted((direction * control.low, direction * control.high)) if control is not None else (0.0, 0.0)
    if lo > 0 and lo > c_hi:
        return SUPPORTED
    if hi < 0 or hi < c_lo:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def frequency_verdict(share: float) -> str:
    """VERDICT_RULE for a categorical claim that wins in `share` of the resamples."""
    if not math.isfinite(share):
        return INCONCLUSIVE
    return SUPPORTED if share >= FREQ_SURE else NOT_SUPPORTED if share <= 1 - FREQ_SURE else INCONCLUSIVE


def combine(verdicts: Sequence[str], how: str) -> str:
    """Several languages' verdicts as the claim is worded: 'every', 'most' or 'some'."""
    n, sup, nos = len(verdicts), verdicts.count(SUPPORTED), verdicts.count(NOT_SUPPORTED)
    if n == 0:
        return INCONCLUSIVE
    if how == "every":
        return SUPPORTED if sup == n else NOT_SUPPORTED if nos else INCONCLUSIVE
    if how == "most":
        return SUPPORTED if sup > n / 2 else NOT_SUPPORTED if nos >= n / 2 else INCONCLUSIVE
    if how == "some":
        return SUPPORTED if sup else NOT_SUPPORTED if nos == n else INCONCLUSIVE
    raise ValueError(f"unknown combination {how!r}")


# ----------------------------------------------------------------------------- the run's artifacts


class Artifacts:
    """Read-only access to one run's files: sae_features/<run>/ and output/<run>/ (None when absent).

    A file that cannot be read (truncated JSON, undecodable bytes) is also None, so its section takes
    the not-run path, and is noted in `corrupt` (name -> what is wrong), which that path states with
    the command that remakes it; build_report clears it before each section and claim."""

    def __init__(self, features_dir: Path, output_dir: Path):
        self.features_dir, self.output_dir = Path(features_dir), Path(output_dir)
        self.corrupt: dict[str, str] = {}

    def json(self, name: str) -> dict | None:
        path = self.features_dir / name
        if not path.exists():
            return None
        try:
            return read_json(path, "-")
        except CorruptArtifact as e:
            self.corrupt[name] = f"{path} is {e.state}"
            return None

    def csv(self, name: str) -> list[dict] | None:
        path = self.features_dir / name
        if not path.exists():
            return None
        try:
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            self.corrupt[name] = f"{path} is corrupted ({e})"
            return None

    def damaged(self) -> str | None:
        """The unreadable files met since `corrupt` was last cleared, in words, or None."""
        return "; ".join(self.corrupt.values()) or None

    def figure(self, name: str) -> str | None:
        """A figure's link relative to REPORT.md, if it exists."""
        return name if (self.output_dir / name).exists() else None

    def stage_status(self, stage: str) -> str | None:
        timings = self.json("pipeline_timings.json") or {"stages": []}
        return next((r["status"] for r in timings["stages"] if r["stage"] == stage), None)


@dataclass(frozen=True)
class Evidence:
    """A claim's row: the numbers with CIs, the control next to them, the figure, the verdict."""

    numbers: str
    control: str
    figure: str | None
    verdict: str


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    stage: str  # the pipeline stage whose artifacts answer it
    evidence: Callable[[Artifacts], Evidence | None]


def _f(row: dict, key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return math.nan


def _iv(row: dict, key: str, ci: str | None = None) -> Interval:
    ci = ci or key
    return Interval(_f(row, key), _f(row, f"{ci}_ci_low"), _f(row, f"{ci}_ci_high"))


def _short(lang: str) -> str:
    return lang.split("_")[0]


N_LISTED = 4  # a claims cell lists at most this many languages' results, else the strongest and the weakest


def _spread(items: Sequence[tuple[str, float, str]], sep: str = "; ") -> str:
    """A claims cell's one-line summary of per-language results (label, strength, text): each one when
    there are few, else the strongest and the weakest (NaN: the weakest); the stage's section has them all."""
    if len(items) <= N_LISTED:
        return sep.join(f"{label} {text}" for label, _, text in items)
    ranked = sorted(items, key=lambda it: it[1] if math.isfinite(it[1]) else -math.inf)
    return f"strongest {ranked[-1][0]} {ranked[-1][2]}, weakest {ranked[0][0]} {ranked[0][2]}"


def _by_lang(rows: Sequence[dict], get: Callable[[dict], Interval], direction: int = 1) -> str:
    """_spread of one interval per Section 5 row, ranked by its value in the claimed direction."""
    return _spread([(_short(r["language"]), direction * get(r).value, str(get(r))) for r in rows])


def _layer_span(layers: Sequence[int]) -> str:
    layers = sorted(int(L) for L in layers)
    contiguous = layers and layers == list(range(layers[0], layers[-1] + 1))
    return f"{layers[0]}-{layers[-1]}" if contiguous else ",".join(map(str, layers))


def _peaks_by_layer(rows: Sequence[dict]) -> str:
    """Each language's held-out peak layer when there are few, else how many peak at each layer."""
    if len(rows) <= N_LISTED:
        return ", ".join(f"{_short(r['language'])} {r['peak_layer']}" for r in rows)
    counts = {}
    for r in rows:
        counts[int(r["peak_layer"])] = counts.get(int(r["peak_layer"]), 0) + 1
    return ", ".join(f"L{L} {n}" for L, n in sorted(counts.items()))


def _peak_shares(row: dict) -> dict[int, float]:
    """section5_summary's peak_frequency "L:share;..." as {layer: share}."""
    out = {}
    for part in filter(None, str(row.get("peak_frequency", "")).split(";")):
        layer, share = part.split(":")
        out[int(layer)] = float(share)
    return out


def _section5(a: Artifacts) -> tuple[list[dict], dict] | None:
    rows, meta = a.csv("section5_summary.csv"), a.json("section5_meta.json")
    return (rows, meta) if rows and meta else None


def _peak_claim(a: Artifacts, layer: int, languages: Sequence[str] | None, how: str) -> Evidence | None:
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, meta = s5
    figure = a.figure("figure5.png")
    if languages is not None:
        missing = [lang for lang in languages if lang not in {r["language"] for r in rows}]
        if missing:
            return Evidence(f"{', '.join(missing)} not in this run", "-", figure, INCONCLUSIVE)
        rows = [r for r in rows if r["language"] in languages]
    held_out = f"held-out peaks: {_peaks_by_layer(rows)}"
    if layer not in meta["layers"]:
        measured = _layer_span(meta["layers"])
        numbers = f"layer {layer} not measured (layers {measured}); {held_out}"
        return Evidence(numbers, "-", figure, INCONCLUSIVE)
    shares = [_peak_shares(r).get(layer, 0.0) for r in rows]
    at = sum(int(r["peak_layer"]) == layer for r in rows)
    sure = sum(frequency_verdict(s) == SUPPORTED for s in shares)
    spread = _spread([(_short(r["language"]), s, f"{s:.2f}") for r, s in zip(rows, shares)], ", ")
    n = len(rows)
    numbers = f"held-out peak at layer {layer} for {at}/{n}; in ≥ 95% of resamples {sure}/{n}: {spread}"
    control = f"peak chosen on half A of the sentences, reported on half B; {held_out}"
    return Evidence(numbers, control, figure, combine([frequency_verdict(s) for s in shares], how))


def layer10_dominant(a: Artifacts) -> Evidence | None:
    return _peak_claim(a, 10, None, "most")


def korean_thai_layer0(a: Artifacts) -> Evidence | None:
    return _peak_claim(a, 0, ["kor_Hang", "tha_Thai"], "every")


def hurts_mainly_target(a: Artifacts) -> Evidence | None:
    """Per language at its held-out peak: self − others above zero, and self above k random features."""
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, _ = s5
    own = [_iv(r, "self_delta_ce", "self") for r in rows]
    beyond_random = [interval_verdict(o, _iv(r, "random_delta_ce", "random")) for o, r in zip(own, rows)]
    specific = [interval_verdict(_iv(r, "specificity_diff")) for r in rows]
    verdicts = [combine([v, b], "every") for v, b in zip(specific, beyond_random)]
    numbers = f"self − others ΔCE at the peak: {_by_lang(rows, lambda r: _iv(r, 'specificity_diff'))}"
    control = f"own ΔCE beyond k random live features in {beyond_random.count(SUPPORTED)}/{len(rows)}"
    verdict = combine(verdicts, "most")
    numbers = f"{verdicts.count(SUPPORTED)}/{len(rows)} languages supported. {numbers}"
    return Evidence(numbers, control, a.figure("figure5.png"), verdict)


def own_features_beat_others(a: Artifacts) -> Evidence | None:
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, _ = s5

    def own(r):
        return _iv(r, "self_delta_ce", "self")

    def other(r):
        return _iv(r, "other_lang_features_delta_ce", "other_lang_features")

    verdicts = [interval_verdict(own(r), other(r)) for r in rows]
    numbers = f"{verdicts.count(SUPPORTED)}/{len(rows)} languages supported; own: {_by_lang(rows, own)}"
    control = f"other languages' features: {_by_lang(rows, other)}"
    return Evidence(numbers, control, a.figure("figure5.png"), combine(verdicts, "most"))


def some_synergy(a: Artifacts) -> Evidence | None:
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, meta = s5
    if int(meta.get("top_k", 2)) < 2:
        return Evidence("synergy needs --top-k 2 or more in Section 5", "-", None, INCONCLUSIVE)
    verdicts = [interval_verdict(_iv(r, "synergy")) for r in rows]
    sub = sum(interval_verdict(_iv(r, "synergy"), direction=-1) == SUPPORTED for r in rows)
    spread = _by_lang(rows, lambda r: _iv(r, "synergy"))
    numbers = f"synergy > 0 in {verdicts.count(SUPPORTED)}/{len(rows)}, < 0 (sub-additive) in {sub}: {spread}"
    return Evidence(numbers, "none: synergy is a paired difference of the same texts' ΔCEs", a.figure("figure6.png"), combine(verdicts, "some"))


def exclusive_top1(a: Artifacts) -> Evidence | None:
    """At the layer where most held-out peaks lie (else 10), each language's top-1 is in no other top-5."""
    meta = a.json("meta.json")
    if meta is None or "exclusive_top1" not in meta:
        return None
    peak = _modal_peak(a)
    layer = 10 if peak is None else peak
    excl = meta["exclusive_top1"].get(str(layer))
    figure = a.figure("features/topk_overlap.png")
    if excl is None:
        computed = _layer_span(meta["layers"])
        return Evidence(f"layer {layer} has no ν results (layers {computed})", "-", figure, INCONCLUSIVE)
    n, yes = len(excl), sum(excl.values())
    shared = ", ".join(_short(lang) for lang, v in excl.items() if not v) or "none"
    verdict = SUPPORTED if yes == n else NOT_SUPPORTED if yes <= n / 2 else INCONCLUSIVE
    where = "no Section 5 yet" if peak is None else "most common held-out peak"
    by_layer = [(f"L{L}", sum(v.values()), f"{sum(v.values())}/{len(v)}")
                for L, v in meta["exclusive_top1"].items()]
    numbers = f"layer {layer} ({where}): exclusive top-1 for {yes}/{n}; shared: {shared}"
    return Evidence(numbers, f"by layer: {_spread(by_layer, ', ')}", figure, verdict)


# ----------------------------------------------------------------------------- stages 3-5, code switching, steering

CHANCE = {("qa", "f1"): 0.0, ("sentiment", "accuracy"): 0.2, ("topic", "accuracy"): 1 / 7}
TASK_METRICS = (("qa", "f1", "generate"), ("sentiment", "accuracy", "generate"), ("topic", "accuracy", "loglik"))


def _value_ci(row: dict) -> Interval:
    """A tidy row's (or a summary entry's) value with its ci_low, ci_high."""
    return Interval(_f(row, "value"), _f(row, "ci_low"), _f(row, "ci_high"))


def _ivl(v: Sequence[float] | None) -> Interval:
    return Interval(*map(float, v)) if v else Interval(math.nan, math.nan, math.nan)


def _co_clustering(a: Artifacts) -> tuple[dict, dict[str, int]] | None:
    c = a.json("interaction_clusters.json")
    return (c, {lang: k for k, lang in enumerate(c["languages"])}) if c else None


def _cluster_evidence(a: Artifacts, lang: str, shares: dict[str, float], how: str, what: str, control: str) -> Evidence:
    """A categorical claim on stage 3's clusters: each pair's share of bootstrap resamples that agrees with it."""
    c, _ = _co_clustering(a)
    figure = a.figure("interaction_mds.png")
    if not shares:
        return Evidence(f"{_short(lang)} or the languages it is compared with are not in this run", "-", figure, INCONCLUSIVE)
    n = c["ari"]["n_resamples"]
    point = ", ".join(_short(x) for x, g in c["labels"].items() if g == c["labels"][lang])
    verdicts = [frequency_verdict(s) for s in shares.values()]
    spread = _spread([(_short(x), s, f"{s:.2f}") for x, s in shares.items()], ", ")
    sure = f"{verdicts.count(SUPPORTED)}/{len(shares)}"
    numbers = f"{what} (k={c['settings']['k']}), in ≥ {FREQ_SURE:.0%} of {n} resamples: {sure}; {spread}"
    numbers += f"; point cluster of {_short(lang)}: {point}"
    return Evidence(numbers, control, figure, combine(verdicts, how))


def vietnamese_clusters(a: Artifacts) -> Evidence | None:
    got = _co_clustering(a)
    if got is None:
        return None
    c, i = got
    vie, co = "vie_Latn", c["co_clustering"]
    if vie not in i:
        return _cluster_evidence(a, vie, {}, "every", "", "-")
    shares = {x: co[i[vie]][i[x]] for x in ("eng_Latn", "spa_Latn", "fra_Latn", "por_Latn") if x in i}
    rivals = ", ".join(f"{_short(x)} {co[i[vie]][i[x]]:.2f}" for x in ("tha_Thai", "kor_Hang") if x in i) or "-"
    control = f"with tha/kor: {rivals}; mean ARI, resamples vs point clusters {c['ari']['mean']:.2f}"
    return _cluster_evidence(a, vie, shares, "every", "vie shares a cluster with", control)


def arabic_isolated(a: Artifacts) -> Evidence | None:
    got = _co_clustering(a)
    if got is None:
        return None
    c, i = got
    arb, co = "arb_Arab", c["co_clustering"]
    shares = {x: 1 - co[i[arb]][k] for x, k in i.items() if x != arb} if arb in i else {}
    control = f"mean ARI of the resamples vs the point clusters {c['ari']['mean']:.2f}"
    return _cluster_evidence(a, arb, shares, "every", "arb apart from", control)


def intra_subadditive(a: Artifacts) -> Evidence | None:
    """Pooled over layers, without the pairs that share (or nearly share) a top-1 feature, whose
    sub-additivity is built in: intra-cluster synergy below zero and below the inter-cluster pairs'.
    The regression on |cosine| and the per-layer numbers are in the stage's section."""
    s = a.json("cluster_synergy_summary.json")
    if s is None:
        return None
    w = s["layers"]["all_layers"]

    def part(which: str, key: str) -> Interval:
        return _value_ci(w[which][key])

    clean, full = w["without_degenerate"], w["with_degenerate"]
    n_intra = clean["intra"]["n_pairs"]
    verdict = interval_verdict(part("without_degenerate", "intra"), part("without_degenerate", "inter"), -1) if n_intra else INCONCLUSIVE
    if verdict == SUPPORTED and not clean["permutation_p"] < PERMUTATION_ALPHA:
        verdict = INCONCLUSIVE  # the sentence bootstrap holds the pairs fixed; which languages share a cluster is tested by permutation
    without, with_ = part("without_degenerate", "intra"), part("with_degenerate", "intra")
    numbers = (f"intra-cluster synergy, pooled over layers, without degenerate pairs: {without} "
               f"({n_intra} pair-layers); with them: {with_} ({full['intra']['n_pairs']})")
    inter = part("without_degenerate", "inter")
    control = f"inter-cluster pairs: {inter}; permutation p = {clean['permutation_p']:.3g}"
    return Evidence(numbers, control, a.figure("synergy_vs_cosine.png"), verdict)


def _given_cos(d: dict) -> str:
    g = d.get("intra_given_cosine")  # absent from summaries written before it existed
    return "n/a" if g is None else f"{g['coefficient']:+.3f}, permutation p = {g['permutation_p']:.3g}"


def _downstream(a: Artifacts) -> tuple[list[dict], int] | None:
    """The summary entries of the primary metrics at layer 10, or at the stage's first layer when it did not run 10."""
    d = a.json("downstream_summary.json")
    if d is None:
        return None
    entries = [e for e in d["entries"] if (e["task"], e["metric"], e["scoring"]) in TASK_METRICS]
    layers = [e["layer"] for e in entries]
    if not layers:
        return [], 10
    layer = 10 if 10 in layers else layers[0]
    return [e for e in entries if e["layer"] == layer], layer


def _margin(e: dict) -> float:
    """The baseline's margin over chance; NaN when its CI reaches chance (nothing to lose)."""
    chance, base = CHANCE[(e["task"], e["metric"])], _ivl(e["baseline"])
    return base.value - chance if base.low > chance else math.nan


def _collapse_verdict(e: dict) -> str:
    margin, own = _margin(e), _ivl(e["own_delta"])
    if not math.isfinite(margin) or e["own_minus_random"] is None:
        return INCONCLUSIVE
    beyond_random = interval_verdict(own, _ivl(e["random_delta"]), -1)
    if beyond_random == NOT_SUPPORTED or own.low > -COLLAPSE_SHARE * margin:
        return NOT_SUPPORTED
    return SUPPORTED if beyond_random == SUPPORTED and own.high < -COLLAPSE_SHARE * margin else INCONCLUSIVE


def _robust_verdict(e: dict) -> str:
    margin, diff = _margin(e), _ivl(e["own_minus_random"])
    if not math.isfinite(margin) or not diff.finite():
        return INCONCLUSIVE
    if diff.high < 0:
        return NOT_SUPPORTED
    return SUPPORTED if diff.low > -ROBUST_SHARE * margin else INCONCLUSIVE


def _task_label(e: dict) -> str:
    return f"{e['task']} {_short(e['lang'])}"


def _task_figure(a: Artifacts, entries: list[dict], layer: int) -> str | None:
    return next((f for f in (a.figure(f"downstream_{e['task']}_L{layer}.png") for e in entries) if f), None)


def collapse(a: Artifacts) -> Evidence | None:
    got = _downstream(a)
    if got is None:
        return None
    entries, layer = got
    where = "" if layer == 10 else f"layer 10 not run; at layer {layer}: "
    if not entries:
        return Evidence(f"{where}no QA, sentiment or topic results", "-", None, INCONCLUSIVE)
    verdicts = [_collapse_verdict(e) for e in entries]
    at_chance = sum(not math.isfinite(_margin(e)) for e in entries)
    own = [_ivl(e["own_delta"]) for e in entries]
    drops = _spread([(_task_label(e), -o.value, str(o)) for e, o in zip(entries, own)])
    n = len(entries)
    numbers = f"{where}{verdicts.count(SUPPORTED)}/{n} task-languages collapse ({at_chance} at chance)"
    numbers += f"; own Δ: {drops}"
    beyond = sum(interval_verdict(o, _ivl(e["random_delta"]), -1) == SUPPORTED for e, o in zip(entries, own))
    control = f"own drop beyond the random features' in {beyond}/{len(entries)}"
    return Evidence(numbers, control, _task_figure(a, entries, layer), combine(verdicts, "most"))


def arabic_robust(a: Artifacts) -> Evidence | None:
    got = _downstream(a)
    if got is None:
        return None
    entries, layer = got
    where = "" if layer == 10 else f"layer 10 not run; at layer {layer}: "
    arb = [e for e in entries if e["lang"] == "arb_Arab"]
    if not arb:
        return Evidence(f"{where}no Arabic task results", "-", None, INCONCLUSIVE)
    others = [e for e in entries if e["lang"] != "arb_Arab"]
    at_chance = ", ".join(e["task"] for e in arb if not math.isfinite(_margin(e))) or "none"
    arb_diffs = "; ".join(f"{e['task']} {_ivl(e['own_minus_random'])}" for e in arb)
    numbers = f"{where}arb own − random: {arb_diffs}"
    control = f"baseline at chance: {at_chance}"
    own = sorted((_ivl(e["own_delta"]).value, _task_label(e)) for e in others)
    if own:
        control += f"; others' own Δ from {own[0][0]:+.3f} ({own[0][1]}) to {own[-1][0]:+.3f} ({own[-1][1]})"
    verdict = combine([_robust_verdict(e) for e in arb], "every")
    return Evidence(numbers, control, _task_figure(a, arb, layer), verdict)


def _modal_peak(a: Artifacts) -> int | None:
    """The layer where most of Section 5's held-out peaks lie (None before Section 5)."""
    s5 = _section5(a)
    peaks = [int(r["peak_layer"]) for r in s5[0]] if s5 else []
    return max(set(peaks), key=peaks.count) if peaks else None


def code_switching_claim(a: Artifacts) -> Evidence | None:
    """X's top feature on nouns of other languages after X's prefix, minus the same nouns alone (paired
    by item; each alone text holds the very noun token ids of the prefixed text it is cut from), per
    language at the layer where most of Section 5's held-out peaks lie: a layer chosen
    without the probe items. Before Section 5 (or when code switching did not measure that layer),
    the layer of the largest mean effect, which is chosen on the same items and said so."""
    rows, meta = a.csv("code_switching_results.csv"), a.json("code_switching_meta.json")
    if not rows or meta is None:
        return None
    effect = [r for r in rows if r["case"] == "context_on_foreign_nouns"]
    peak = _modal_peak(a)
    if peak is not None and any(r["layer"] == str(peak) for r in effect):
        layer, how = str(peak), "most common held-out peak"
    else:
        layer, how = str(meta["heatmap_layer"]), "largest mean effect, chosen on these items"
    at = [r for r in effect if r["layer"] == layer and r["language"] != "mean"]
    verdicts = [interval_verdict(_value_ci(r)) for r in at]
    spread = _spread([(_short(r["language"]), _value_ci(r).value, str(_value_ci(r))) for r in at])
    n_items = at[0]["n_items"] if at else "?"
    above = f"{verdicts.count(SUPPORTED)}/{len(at)} above 0"
    numbers = f"layer {layer} ({how}; {n_items} items): {above}: {spread}"
    mean = next((_value_ci(r) for r in effect if r["layer"] == layer and r["language"] == "mean"), None)
    control = f"vs the same noun ids alone; mean {mean}"  # every layer and language: in the section
    return Evidence(numbers, control, a.figure("code_switching_prefix_feature.png"), combine(verdicts, "most"))


def _rate(iv: Interval) -> str:
    return format_interval(iv.value, iv.low, iv.high, digits=2, signed=False) if iv.finite() else "n/a"


def gated_steering(a: Artifacts) -> Evidence | None:
    """Per task, pair and layer span: the gated method's success at its best α (chosen on half A under
    the collateral budget, reported on half B) above no steering and above every control's."""
    s = a.json("steering_summary.json")
    if s is None:
        return None
    by_cell: dict[tuple, dict[str, dict]] = {}
    for e in s["entries"]:
        by_cell.setdefault((e["task"], e["source"], e["target"], e["layer"], e["n_layers"]), {})[e["method"]] = e
    gated_items, beaten, verdicts = [], {}, []
    for (task, src, tgt, layer, n), methods in by_cell.items():
        gated = methods.get("gated")
        if gated is None:
            continue
        success = _ivl(gated["success"])  # None (no α within the budget): NaN, inconclusive
        name = f"{task} {_short(src)}→{_short(tgt)} L{layer}x{n}"
        gated_items.append((name, success.value, _rate(success)))
        controls = {"no steering": _ivl(gated["baseline_success"])}
        randoms = {k: m for k, m in methods.items() if k.startswith("random") and m["success"]}
        controls |= {k: _ivl(m["success"]) for k, m in randoms.items()}
        for k, c in controls.items():
            beaten[k] = beaten.get(k, 0) + (interval_verdict(success, c) == SUPPORTED)
        strongest = max(controls.values(), key=lambda c: c.high if c.finite() else -math.inf)
        verdicts.append(interval_verdict(success, strongest))
    if not verdicts:
        return Evidence("no gated steering in this run", "-", None, INCONCLUSIVE)
    n = len(verdicts)
    numbers = f"{verdicts.count(SUPPORTED)}/{n} beyond every control; success: {_spread(gated_items)}"
    control = "beyond " + ", ".join(f"{k.replace('_', ' ')} {m}/{n}" for k, m in beaten.items())
    figure = a.figure("steering_lid_success.png") or a.figure("steering_continuation_success.png")
    return Evidence(numbers, control, figure, combine(verdicts, "most"))


CLAIMS: list[Claim] = [
    Claim("Layer 10 is the dominant language-specificity layer (most languages peak there)", "seed reproduction", "section5", layer10_dominant),
    Claim("Korean and Thai peak at layer 0", "seed reproduction", "section5", korean_thai_layer0),
    Claim("Ablating a language's top features hurts mainly that language (self − others > 0, and beyond random features), for most languages", "paper (Sec. 5)", "section5", hurts_mainly_target),
    Claim("A language's own top features hurt it more than other languages' top features do, for most languages", "docs/method.md (control)", "section5", own_features_beat_others),
    Claim("Some languages show synergy: ablating top-1+2 together hurts more than the sum of each alone", "paper (Fig. 6)", "section5", some_synergy),
    Claim("Each language's top-1 feature is its own (in no other language's top-5) at the dominant layer", "docs/method.md (shared-feature trap)", "nu", exclusive_top1),
    Claim("Vietnamese clusters with EN/ES/FR/PT rather than with Thai or Korean", "seed reproduction", "interactions", vietnamese_clusters),
    Claim("Arabic is isolated (a cluster of its own)", "seed reproduction", "interactions", arabic_isolated),
    Claim("Intra-cluster language pairs are sub-additive (more than inter-cluster pairs)", "seed reproduction", "cluster-synergy", intra_subadditive),
    Claim("Ablating 2 features at layer 10 collapses QA (EN −41.1 F1, VI −34.8, ZH −28.9) and classification", "seed reproduction", "downstream", collapse),
    Claim("Arabic is robust to the ablation", "seed reproduction", "downstream", arabic_robust),
    Claim("The prefix language's top feature stays active on a noun in another language (code-switching)", "paper (Sec. 4)", "code-switching", code_switching_claim),
    Claim("Gated steering switches the output language (paper: 72–97% success at three layers)", "paper (Sec. 6)", "steering", gated_steering),
]


def claim_row(claim: Claim, a: Artifacts) -> tuple[Evidence, str]:
    """The claim's evidence and verdict; "not run" when its stage left nothing to read."""
    a.corrupt.clear()
    ev = claim.evidence(a)
    if ev is not None:
        return ev, ev.verdict
    damaged = a.damaged()
    status = a.stage_status(claim.stage)
    why = f"stage {claim.stage} was {status}" if status in ("skipped", "failed") else f"stage {claim.stage} not run"
    why = f"unreadable: {damaged}; rerun stage {claim.stage}" if damaged else why
    return Evidence(why, "-", None, NOT_RUN), NOT_RUN


# ----------------------------------------------------------------------------- the document


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(a: Artifacts) -> str:
    lines = ["| # | claim | source | evidence from this run | control | figure | verdict |", "|---|---|---|---|---|---|---|"]
    for i, claim in enumerate(CLAIMS, 1):
        ev, verdict = claim_row(claim, a)
        fig = f"[figure]({ev.figure})" if ev.figure else "-"  # the row stays short; the name is in the link
        lines.append(f"| {i} | {_cell(claim.text)} | {claim.source} | {_cell(ev.numbers)} | {_cell(ev.control)} | {fig} | **{verdict}** |")
    return "\n".join(lines)


def verdicts_in(report_text: str) -> list[str]:
    """The verdict column of a REPORT.md's claims table, in claim order."""
    section = report_text.split("\n## Claims\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    return [line.rsplit("**", 2)[-2] for line in rows]


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _toy_build(model_id: str) -> dict | None:
    path = Path(model_id).parent / "build.json"
    try:
        return read_json(path, "-") if path.exists() else None
    except CorruptArtifact:  # the header then shows no build record, as for a toy built elsewhere
        return None


def header(a: Artifacts, run: str) -> list[str]:
    nu_meta, s5 = a.json("meta.json"), a.json("section5_meta.json")
    meta = nu_meta or (s5 or {}).get("config") or {}
    cfg = (nu_meta or {}).get("config", {})
    lines = [f"# Report: {run}", ""]
    build = _toy_build(meta.get("model_id", "")) if meta.get("model_id") else None
    if build is not None or cfg.get("preset") == "toy" or (s5 or {}).get("config", {}).get("preset") == "toy":
        scale = f" (toy build: seed {build.get('seed')}, scale {build.get('scale')})" if build else ""
        lines += [f"> **Toy run.** These are results of a small model trained in this project{scale}, **not of Qwen3-0.6B**. They test the pipeline, not the paper.", ""]
    rows = [
        ("model", meta.get("model_id", "-")), ("SAE release", meta.get("sae_release", "-")),
        ("data (selection)", (nu_meta or {}).get("data_source", "-")), ("data (evaluation)", (s5 or {}).get("eval_source", "-")),
        ("languages", ", ".join((nu_meta or {}).get("languages", []))), ("ν layers", (nu_meta or {}).get("layers", "-")),
        ("ν settings", ", ".join(f"{k} {cfg[k]}" for k in ("weighting", "top_k", "control_pool", "dtype", "seed") if k in cfg) or "-"),
        ("Section 5 settings", ", ".join(f"{k} {s5[k]}" for k in ("mode", "top_k", "random_draws", "n_texts_per_lang", "seed") if k in s5) if s5 else "-"),
        ("bootstrap", f"{s5['bootstrap']['n_boot']} resamples, {s5['bootstrap']['resampling']}" if s5 else "-"),
        ("versions", ", ".join(f"{k} {v}" for k, v in ((nu_meta or s5 or {}).get("versions") or package_versions()).items())),
        ("code (git commit)", git_commit()), ("report written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]  # fmt: skip
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
    timings = a.json("pipeline_timings.json")
    if timings:
        lines += ["**Timings** (latest run of each stage by `run_pipeline.py`)", "", "| stage | status | wall s | computed | cached | unit |", "|---|---|---|---|---|---|"]
        for r in timings["stages"]:
            lines.append(f"| {r['stage']} | {r['status']} | {r['wall_s']:.1f} | {r.get('computed', '-')} | {r.get('cached', '-')} | {r.get('unit', '-')} |")
        lines.append("")
    return lines


def data_section(a: Artifacts) -> list[str]:
    checks = a.json("data_checks.json")
    if checks is None:
        return _not_run("Data checks", a, None, "python check_data.py")
    lines = ["## Data checks", "", f"Overall: **{checks['status']}** (details in `data_checks.json`).", "", "| check | status | summary |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {_cell(c['summary'])} |" for c in checks["checks"]]
    return lines + [""]


def _img(a: Artifacts, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""] if a.figure(name) else []


def nu_section(a: Artifacts) -> list[str]:
    meta = a.json("meta.json")
    if meta is None:
        return _not_run("Stage 1: ν-scores", a, None, "python compute_nu_scores.py")
    lines = ["## Stage 1: ν-scores", "", f"{len(meta['layers'])} layers, d_sae {meta.get('d_sae')}, position 0 {meta.get('position_0', '')}.", ""]
    lines += ["| layer | languages with an exclusive top-1 | top-5 features shared with another language, per language |", "|---|---|---|"]
    for L in meta["layers"] if "exclusive_top1" in meta and "shared_top5" in meta else []:
        excl, shared = meta["exclusive_top1"][str(L)], meta["shared_top5"][str(L)]
        lines.append(f"| {L} | {sum(excl.values())}/{len(excl)} | {', '.join(f'{_short(k)} {v}' for k, v in shared.items())} |")
    lines.append("")
    figs = sorted(p.name for p in (a.output_dir / "features").glob("*.png")) if (a.output_dir / "features").exists() else []
    for name in [n for n in figs if n.startswith("figure1")] + ["topk_overlap.png", "top1_nu_by_layer.png", "nu_distributions.png"] + [n for n in figs if n.startswith("specificity")]:
        lines += _img(a, f"features/{name}", name.removesuffix(".png"))
    if a.figure("features/top_features.md"):
        lines += ["Top features per layer and language, with Neuronpedia links: [features/top_features.md](features/top_features.md)", ""]
    return lines


def section5_section(a: Artifacts) -> list[str]:
    s5 = _section5(a)
    if s5 is None:
        return _not_run("Stage 2: Section 5 (ΔCE)", a, None, "python reproduce_figures_section5.py")
    rows, meta = s5
    lines = ["## Stage 2: Section 5 (ΔCE)", "", f"{meta['mode']} ablation, {meta['n_texts_per_lang']} evaluation texts per language, layers {meta['layers']}. {meta['peak_rule']}.", ""]
    lines += _img(a, "figure5.png", "Figure 5") + _img(a, "figure6.png", "Figure 6")
    head = ["language", "held-out peak (share)", "share of resamples by peak layer", "self ΔCE [95% CI]",
            "self − others [95% CI]", "synergy [95% CI]", "random k [95% CI]", "other languages' features",
            "shared top-k with"]

    def by_share(r: dict) -> str:
        return ", ".join(f"{L} {v:.2f}" for L, v in sorted(_peak_shares(r).items(), key=lambda x: -x[1]))

    return lines + _table(head, [
        (r["language"], f"{r['peak_layer']} ({_f(r, 'modal_peak_share'):.2f})", by_share(r),
         _iv(r, "self_delta_ce", "self"), _iv(r, "specificity_diff"), _iv(r, "synergy"),
         _iv(r, "random_delta_ce", "random"), _iv(r, "other_lang_features_delta_ce", "other_lang_features"),
         r["shared_with"] or "-")
        for r in rows
    ])


def _not_run(title: str, a: Artifacts, stage: str | None, command: str) -> list[str]:
    """A section without results: not run, skipped or failed, or its files unreadable (named, with the
    command that remakes them)."""
    damaged = a.damaged()
    if damaged:
        return [f"## {title}", "", f"Unreadable: {damaged}; remake it with `{command}`.", ""]
    status = a.stage_status(stage) if stage else None
    why = f"Stage {status}" if status in ("skipped", "failed") else "Not run"
    return [f"## {title}", "", f"{why} (`{command}`).", ""]


def _images(a: Artifacts, names: Sequence[str]) -> list[str]:
    return [line for name in names for line in _img(a, name, name.removesuffix(".png"))]


def _table(head: Sequence[str], rows: list[Sequence]) -> list[str]:
    return [f"| {' | '.join(head)} |", "|" + "---|" * len(head)] + [f"| {' | '.join(_cell(x) for x in r)} |" for r in rows] + [""]


def _rows_of(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> list[tuple]:
    return [(x, *(f"{v:.2f}" for v in row)) for x, row in zip(names, matrix)]


def interactions_section(a: Artifacts) -> list[str]:
    title = "Stage 3: cross-linguistic interactions and clusters"
    c = a.json("interaction_clusters.json")
    if c is None:
        return _not_run(title, a, "interactions", "python cross_linguistic_interactions.py")
    st = c["settings"]
    lines = [f"## {title}", "", f"M from {st['features']} at layers {st['layers']} ({st['aggregate']}), {st['mode']} ablation, {st['n_texts']} texts per "
             f"language; distance `{c['distance_kind']}` (negative eigenvalue mass {c['negative_eigen_mass']:.3f}); metric MDS stress {c['stress']:.3f}; "
             f"Ward on the MDS coordinates cut at k={st['k']}; stability over {c['ari']['n_resamples']} resamples: mean ARI {c['ari']['mean']:.2f} "
             f"[{c['ari']['q05']:.2f}, {c['ari']['q95']:.2f}].", ""]  # fmt: skip
    groups = sorted({g for g in c["labels"].values()})
    ward_d = c.get("ward_on_distance_labels", {})
    lines += _table(["cluster", "languages (Ward on MDS)", "silhouette by k"], [
        (g, ", ".join(_short(x) for x, y in c["labels"].items() if y == g), ", ".join(f"{k}: {v:.2f}" for k, v in c["silhouette"].items()) if i == 0 else "")
        for i, g in enumerate(groups)
    ])  # fmt: skip
    if ward_d:
        lines += ["Ward run directly on D (the earlier reproduction's): " + "; ".join(
            ", ".join(_short(x) for x, y in ward_d.items() if y == g) for g in sorted(set(ward_d.values()))), ""]
    short = [_short(x) for x in c["languages"]]
    lines += [f"Share of the {c['ari']['n_resamples']} resamples in which two languages share a cluster:", ""]
    lines += _table(["", *short], _rows_of(short, c["co_clustering"]))
    return lines + _images(a, ["interaction_matrix.png", "interaction_mds.png", "interaction_coclustering.png", "interaction_dendrogram.png"])


def cluster_synergy_section(a: Artifacts) -> list[str]:
    title = "Stage 4: intra- vs inter-cluster synergy"
    s = a.json("cluster_synergy_summary.json")
    if s is None:
        return _not_run(title, a, "cluster-synergy", "python cluster_synergy.py")
    rows = []
    for layer, w in s["layers"].items():
        for which in ("with_degenerate", "without_degenerate"):
            d = w[which]
            iv = {k: _value_ci(d[k]) for k in ("intra", "inter", "difference")}
            pairs = which.replace("_", " ")
            if which == "with_degenerate":
                pairs += f" ({w['n_same_feature']} share a top-1, {w['n_overlapping']} overlap)"
            n_intra, n_inter = d["intra"]["n_pairs"], d["inter"]["n_pairs"]
            slope = f"{d['regression']['slope']:+.3f} (r {d['regression']['r']:+.2f})"
            intra, inter = f"{iv['intra']} ({n_intra})", f"{iv['inter']} ({n_inter})"
            p = f"{d['permutation_p']:.3g}"
            rows.append((layer, pairs, intra, inter, iv["difference"], p, slope, _given_cos(d)))
    lines = [f"## {title}", "", "Synergy = ΔAB − ΔA − ΔB of two languages' top-1 features, per pair the mean of its two sides; degenerate pairs share "
             "their top-1 feature or have decoder |cosine| above the threshold (their sub-additivity is built in).", ""]  # fmt: skip
    lines += _table(["layer", "pairs", "intra [95% CI] (n)", "inter [95% CI] (n)", "intra − inter", "permutation p", "slope on abs(cos)", "intra beyond abs(cos), p"], rows)
    return lines + _images(a, ["synergy_intra_inter.png", "synergy_vs_cosine.png", "synergy_pairs.png"])


def _margin_text(e: dict) -> str:
    return "at chance" if not math.isfinite(_margin(e)) else f"{_margin(e):.3f}"


def downstream_section(a: Artifacts) -> list[str]:
    title = "Stage 5: downstream tasks under ablation"
    d = a.json("downstream_summary.json")
    if d is None:
        return _not_run(title, a, "downstream", "python downstream_ablation.py")
    rows = [(e["task"], f"{e['metric']}/{e['scoring']}", _short(e["lang"]), e["layer"],
             f"{_ivl(e['baseline']).value:.3f}", _margin_text(e), _ivl(e["own_delta"]),
             _ivl(e["random_delta"]), f"{_ivl(e['cross_delta'])} ({_short(e['cross_lang'])})", _ivl(e["own_minus_random"]),
             {True: "yes", False: "no", None: "-"}[e["own_drop_exceeds_random"]])
            for e in d["entries"] if (e["task"], e["metric"], e["scoring"]) in TASK_METRICS]  # fmt: skip
    lines = [f"## {title}", "", f"{d['mode']} ablation; {d['rule']}", ""]
    head = ["task", "metric", "lang", "layer", "baseline", "margin over chance", "own Δ", "random Δ",
            "cross Δ (features of)", "own − random", "own drop > random"]
    lines += _table(head, rows)
    return lines + _images(a, sorted(p.name for p in a.output_dir.glob("downstream_*.png")))


def code_switching_section(a: Artifacts) -> list[str]:
    title = "Code switching (Section 4)"
    rows, meta = a.csv("code_switching_results.csv"), a.json("code_switching_meta.json")
    if not rows or meta is None:
        return _not_run(title, a, "code-switching", "python code_switching.py")
    contrasts = [r for r in rows if r["kind"] == "contrast" and r["language"] == "mean"]
    layers = sorted({int(r["layer"]) for r in contrasts})
    names = list(dict.fromkeys(r["case"] for r in contrasts))
    table = [(L, *(_value_ci(next(r for r in contrasts if r["case"] == n and int(r["layer"]) == L)) for n in names)) for L in layers]
    lines = [f"## {title}", "", f"Mean over languages of each paired contrast, {contrasts[0]['n_items']} items; heatmap layer {meta['heatmap_layer']} "
             f"({meta['heatmap_layer_rule']}). Each alone text is the neutral start + the noun token ids of the "
             "code-switched text it is paired with, so after prefix − alone compares identical ids.", ""]  # fmt: skip
    lines += _table(["layer", *names], table)
    effect = [r for r in rows if r["case"] == "context_on_foreign_nouns" and r["language"] != "mean"]
    langs = list(dict.fromkeys(r["language"] for r in effect))
    by = {(r["layer"], r["language"]): _value_ci(r) for r in effect}
    lines += ["Per language: X's feature on foreign nouns after X's prefix − the same nouns alone.", ""]
    per_layer = [(L, *(by.get((str(L), x), "-") for x in langs)) for L in layers]
    lines += _table(["layer", *map(_short, langs)], per_layer)
    return lines + _images(a, ["code_switching_prefix_feature.png", "code_switching_noun_feature.png", "code_switching_heatmap.png"])


def steering_section(a: Artifacts) -> list[str]:
    title = "Steering (Section 6)"
    s = a.json("steering_summary.json")
    if s is None:
        return _not_run(title, a, "steering", "python steer_language.py")
    rows = [(e["task"], f"{_short(e['source'])}→{_short(e['target'])}", f"{e['layer']}..{e['layer'] + e['n_layers'] - 1}", e["method"],
             "-" if e["best_alpha"] is None else f"{e['best_alpha']:g}", _ivl(e["success"]), _ivl(e["collateral_delta_ce"]), _ivl(e["baseline_success"]))
            for e in s["entries"]]  # fmt: skip
    lines = [f"## {title}", "", f"{s['rule']} Collateral budget: {s['budget']} nats.", ""]
    lines += _table(["task", "pair", "layers", "method", "best α", "success (half B)", "collateral ΔCE", "no steering"], rows)
    return lines + _images(a, sorted(p.name for p in a.output_dir.glob("steering_*.png")))


def build_report(features_dir: Path, output_dir: Path, run: str | None = None) -> str:
    a = Artifacts(features_dir, output_dir)
    run = run or Path(output_dir).name
    lines = header(a, run)
    lines += ["## Claims", "", VERDICT_RULE, "", claims_table(a), ""]
    for section in (data_section, nu_section, section5_section, interactions_section, cluster_synergy_section,
                    downstream_section, code_switching_section, steering_section):
        a.corrupt.clear()  # each section names only the unreadable files it read itself
        lines += section(a)
    return "\n".join(lines)


def write_report(features_dir: Path, output_dir: Path, run: str | None = None) -> Path:
    """Build REPORT.md from the run's artifacts and write it atomically to output_dir."""
    path = Path(output_dir) / REPORT_NAME
    save_text(build_report(features_dir, output_dir, run), path)
    return path


# ----------------------------------------------------------------------------- README block

README_START, README_END = "<!-- toy-report:start -->", "<!-- toy-report:end -->"


def readme_block(report_text: str, report_link: str) -> str:
    """The claims of a toy REPORT.md for the README: its banner and claims table, with figure
    links made relative to the project root."""
    body = report_text.split("\n## Claims\n", 1)
    if len(body) != 2:
        raise ValueError("the report has no claims section")
    claims = body[1].split("\n## ", 1)[0].strip()
    claims = claims.split("\n\n", 1)[1] if claims.startswith("**Verdict rule.**") else claims  # the rule is in the report
    base = str(Path(report_link).parent)
    claims = re.sub(r"\]\((?!https?:)([^)]+)\)", lambda m: f"]({base}/{m.group(1)})", claims)
    banner = next((line for line in report_text.splitlines() if line.startswith("> ")), "")
    written = next((line for line in report_text.splitlines() if line.startswith("| report written")), "")
    return "\n".join([f"Generated by `python -m langsae.report --readme` from [{report_link}]({report_link}) ({written.split('|')[2].strip() if written else 'undated'}); the verdict rule is stated there.", "", banner, "", claims])


def update_readme(readme: Path, report: Path, report_link: str) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: {readme} has no {README_START} ... {README_END} markers")
    start, rest = text.split(README_START, 1)
    _, end = rest.split(README_END, 1)
    save_text(f"{start}{README_START}\n{readme_block(report.read_text(), report_link)}\n{README_END}{end}", readme)


def main(argv: list[str] | None = None) -> int:
    from langsae.config import PROJECT_ROOT, build_parser, resolve

    # the report reads the run's files, whatever settings made them
    unread = ("--languages", "--layers", "--n-texts-per-lang", "--split", "--device", "--dtype", "--batch-size")
    p = build_parser(__doc__.split("\n\n")[0], ignored=(*unread, "--seed", "--force"))
    p.add_argument("--readme", action="store_true", help="replace README.md's toy results block with the claims of output/<run>/REPORT.md (default run: toy)")
    argv = sys.argv[1:] if argv is None else argv
    if "--readme" in argv and "--model" not in argv:
        argv = [*argv, "--model", "toy"]
    args = p.parse_args(argv)
    cfg = resolve(args)
    if args.readme:
        report = cfg.output_dir / REPORT_NAME  # where the run's stages wrote it (--out-dir, --figures-dir)
        if not report.exists():
            print(f"error: no {report}; run `python run_pipeline.py --model {cfg.preset.name}` first", file=sys.stderr)
            return 2
        update_readme(PROJECT_ROOT / "README.md", report, os.path.relpath(report.resolve(), PROJECT_ROOT))
        print(f"README.md: toy results block rebuilt from {report}")
        return 0
    print(write_report(cfg.features_dir, cfg.output_dir, cfg.run_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
