"""Downstream ablation: conditions, the per-unit result store, running a task under every condition,
and the results table with paired bootstrap intervals.

A unit is one (task, language, layer, condition): its per-item results are one JSONL file under
sae_features/<run>/downstream/<task>/<lang>/ (`<unit>.jsonl`), finished by a sidecar
`<unit>.json` holding the config hash that made it, so a rerun skips finished units and never
reuses stale ones. The conditions of a (task, language) that still need computing run together,
stacked along the batch (langsae.generate).

Statistics: items are resampled with replacement (`stats.JointBootstrap` over item ids: XQuAD
and SIB-200 ids are parallel, so one draw is shared by every language; Amazon ids are not).
Every metric of every condition is computed under the same replicate weights, so a delta
(condition − baseline) is paired item by item, and a metric that is not a mean (QWK, macro-F1)
is recomputed on each replicate. The random control's mean over draws also resamples draws
(`stats.mean_over_draws`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from langsae import metrics, tasks
from langsae.ablation import make_ablation
from langsae.artifacts import read_json
from langsae.controls import NO_LANGUAGE, random_draw
from langsae.data import SIB_CATEGORIES
from langsae.errors import UserError
from langsae.features import NuResults
from langsae.generate import continuation_logprobs, greedy_generate, stop_token_ids
from langsae.section5 import DEFAULT_MODE, mode_suffix
from langsae.stats import N_BOOT, JointBootstrap, Resampled, format_interval, mean_over_draws
from langsae.units import UnitStore

log = logging.getLogger(__name__)

BASELINE, OWN, RANDOM, CROSS = "baseline", "own", "random", "cross"
TOP_RANKS = (1, 2)  # the task language's top-1+2 features
RESULTS_COLUMNS = [
    "task",
    "lang",
    "layer",
    "condition",
    "ablated_lang",
    "draw",
    "metric",
    "scoring",
    "quantity",
    "value",
    "ci_low",
    "ci_high",
    "n",
]
METRICS = {  # task -> (metric, scoring); all higher-is-better except unparseable_rate
    "qa": [("em", "generate"), ("f1", "generate"), ("lang_f1", "generate")],
    "sentiment": [
        ("accuracy", "generate"),
        ("qwk", "generate"),
        ("unparseable_rate", "generate"),
        ("accuracy", "loglik"),
        ("qwk", "loglik"),
    ],
    "topic": [("accuracy", "loglik"), ("macro_f1", "loglik")],
}
SUMMARY_RULE = (
    "per task, language, layer, metric and scoring: the own-feature drop exceeds the random control's "
    "when the 95% paired bootstrap intervals of own − baseline and of (own − baseline) − (random − baseline) "
    "= own − mean over random draws both lie entirely below zero (items resampled, jointly across "
    "languages for parallel data, separately per language otherwise, and draws resampled); "
    "unparseable_rate is left out (lower is better)"
)
CROSS_RULE = (
    "the nu run's language farthest from the task language in stage 3's interaction matrix "
    "(interaction_clusters.json, 'distance'), when that file exists and was made from this run's model, "
    "SAE and nu results; otherwise English, or Chinese for English tasks"
)

# Artifact names, declared once for the stage, its report section and any other reader. Files made
# per ablation mode carry the mode's suffix (section5.mode_suffix: none for the paper's directional mode).
UNITS_DIR = "downstream"  # in sae_features/<run>/: <task>/<lang>/<unit>.jsonl (+ .json) per finished unit


def results_file(mode: str = DEFAULT_MODE) -> str:
    return f"downstream_results{mode_suffix(mode)}.csv"


def summary_file(mode: str = DEFAULT_MODE) -> str:
    return f"downstream_summary{mode_suffix(mode)}.json"


def meta_file(mode: str = DEFAULT_MODE) -> str:
    return f"downstream_meta{mode_suffix(mode)}.json"


def figure_stem(task: str, layer: int, mode: str = DEFAULT_MODE) -> str:
    """A task's figure at one layer, in output/<run>/ (+ .png/.pdf)."""
    return f"downstream_{task}_L{layer}{mode_suffix(mode)}"


RESULTS_FILE, SUMMARY_FILE, META_FILE = results_file(), summary_file(), meta_file()  # the report reads these
FIGURES_GLOB = "downstream_*.png"  # the report's images: every task's figures, at every layer and mode

# The report's task claims: each task's primary metric, and the chance level its baseline must clear.
CHANCE = {("qa", "f1"): 0.0, ("sentiment", "accuracy"): 0.2, ("topic", "accuracy"): 1 / 7}
TASK_METRICS = (
    ("qa", "f1", "generate"),
    ("sentiment", "accuracy", "generate"),
    ("topic", "accuracy", "loglik"),
)
CLAIMED_LAYER = 10  # the earlier reproduction's layer of the 0.6B


def claimed_entries(a) -> tuple[list[dict], int] | None:
    """The summary entries the report's task claims judge: the primary metrics (TASK_METRICS) at
    layer 10, or at the stage's first layer when it did not run 10; None when the stage has not run.
    `a` is a run's `verdicts.Artifacts` (anything with `.json(name)`); the report and
    compare_runs.py both read through it."""
    d = a.json(SUMMARY_FILE)
    if d is None:
        return None
    entries = [e for e in d["entries"] if (e["task"], e["metric"], e["scoring"]) in TASK_METRICS]
    layers = [e["layer"] for e in entries]
    if not layers:
        return [], CLAIMED_LAYER
    layer = CLAIMED_LAYER if CLAIMED_LAYER in layers else layers[0]
    return [e for e in entries if e["layer"] == layer], layer


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """One row block of the engine: no edit (baseline) or an ablation of `feature_ids` at `layer`."""

    name: str  # BASELINE, OWN, RANDOM or CROSS
    layer: int | None = None
    ablated_lang: str = ""  # whose top-1+2 (OWN, CROSS); NO_LANGUAGE for RANDOM
    feature_ids: tuple[int, ...] = ()
    draw: int | None = None

    def unit(self, mode: str) -> str:
        """File stem of this condition's unit."""
        if self.name == BASELINE:
            return BASELINE
        return f"L{self.layer}_{mode}_{self.name}" + ("" if self.draw is None else str(self.draw))


STAGE3_IDENTITY = (
    "model",
    "sae_release",
    "nu_config_hash",
)  # what must match for stage 3's distances to describe this run


def cross_language(
    lang: str,
    nu_languages: Sequence[str],
    clusters_file: Path,
    expect: Mapping | None = None,
    remake: str = "cross_linguistic_interactions.py",
) -> str:
    """The cross-language control's language (CROSS_RULE). expect: this run's model (content identity),
    sae_release and nu_config_hash; a stage-3 file made from another model or nu run is not
    used (a warning says so) and the fallback applies. A stage-3 file that exists but cannot be read is
    a CorruptArtifact naming it and `remake` (the command that makes it again)."""
    others = [x for x in nu_languages if x != lang]
    if not others:
        raise UserError(f"the nu run has no language besides {lang}: no cross-language control is possible")
    data = read_json(clusters_file, remake) if Path(clusters_file).exists() else None
    if data is not None and expect is not None:
        made = data.get("settings", {}).get("store", {})
        stale = [k for k in STAGE3_IDENTITY if made.get(k) != expect.get(k)]
        if stale:
            log.warning(
                "%s was made with another %s; "
                "the cross-language control falls back to English (Chinese for English)",
                clusters_file,
                "/".join(stale),
            )
            data = None
    if data is not None:
        names, dist = list(data["languages"]), np.asarray(data["distance"], dtype=float)
        if lang in names:
            row = dist[names.index(lang)]
            candidates = [x for x in names if x in others]
            if candidates:
                return max(candidates, key=lambda x: (row[names.index(x)], -names.index(x)))
    fallback = "cmn_Hans" if lang == "eng_Latn" else "eng_Latn"
    return fallback if fallback in others else others[0]


def conditions_for(
    lang: str, nu: NuResults, layers: Sequence[int], random_draws: int, seed: int, cross_lang: str
) -> list[Condition]:
    """Baseline, then per layer: own top-1+2, the random draws of the same k, the cross-language control."""
    out = [Condition(BASELINE)]
    k = len(TOP_RANKS)
    for L in layers:
        lf = nu.layers[L]
        if random_draws and len(lf.control_indices) < k:
            raise UserError(
                f"layer {L}'s control pool has {len(lf.control_indices)} features, fewer than {k}"
            )
        out.append(Condition(OWN, L, lang, lf.top(lang, TOP_RANKS)))
        out += [
            Condition(RANDOM, L, NO_LANGUAGE, random_draw(lf.control_indices, k, seed, L, d), d)
            for d in range(random_draws)
        ]
        out.append(Condition(CROSS, L, cross_lang, lf.top(cross_lang, TOP_RANKS)))
    return out


# ----------------------------------------------------------------------------- a unit's config hash


def unit_key(
    store: UnitStore, task: str, lang: str, condition: Condition, mode: str, task_settings: dict
) -> str:
    """The config hash of a unit: the store's settings, the task and language, and (but for the baseline)
    the ablation's layer, mode and features."""
    what = {"task": task, "lang": lang, "task_settings": task_settings}
    if condition.name != BASELINE:
        what.update(layer=condition.layer, mode=mode, feature_ids=sorted(condition.feature_ids))
    return store.key(what)


# ----------------------------------------------------------------------------- running a task


@dataclass(frozen=True)
class EngineSettings:
    pad_id: int
    max_new_tokens: int
    rows_per_forward: int
    device: str  # where edits are built; the engine moves each to its layer's device (forward.stacked_edits)


def _choice_scores(model, tokenizer, prompt_ids, items, edits, eng: EngineSettings, desc: str) -> np.ndarray:
    """[C, N, K] log-likelihood of each item's K choices under each edit."""
    K = len(items[0].choices)
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in items[0].choices]
    pairs_p = [p for p in prompt_ids for _ in range(K)]
    pairs_c = [c for _ in prompt_ids for c in conts]
    lp = continuation_logprobs(model, pairs_p, pairs_c, edits, eng.pad_id, eng.rows_per_forward, desc)
    return lp.reshape(len(edits), len(items), K)


def compute_records(
    model, tokenizer, task: str, lang: str, items: list, edits: list, eng: EngineSettings
) -> list[list[dict]]:
    """Per-item records of every condition ([C][N]): what was generated or scored, and the item's scores."""
    prompt_ids = [tokenizer(it.prompt)["input_ids"] for it in items]
    C = len(edits)
    records = [[{"id": it.id, "gold": it.gold} for it in items] for _ in range(C)]
    if task in ("qa", "sentiment"):
        gens = greedy_generate(
            model,
            prompt_ids,
            edits,
            stop_token_ids(tokenizer, model),
            eng.pad_id,
            eng.max_new_tokens,
            eng.rows_per_forward,
            f"{task} {lang}: generate",
        )
        for c in range(C):
            for i, it in enumerate(items):
                raw = tokenizer.decode(gens[c][i], skip_special_tokens=True)
                rec = records[c][i]
                rec.update(raw=raw, n_new_tokens=len(gens[c][i]))
                if task == "qa":
                    answer = tasks.answer_text(raw)
                    rec.update(
                        answer=answer,
                        truncated=it.meta.get("truncated", False),
                        **tasks.score_qa(answer, it.gold, lang),
                    )
                else:
                    rec["parsed"] = metrics.parse_rating(raw)
    if task in ("sentiment", "topic"):
        scores = _choice_scores(
            model, tokenizer, prompt_ids, items, edits, eng, f"{task} {lang}: log-likelihood"
        )
        names = [c.strip() for c in items[0].choices]
        for c in range(C):
            for i in range(len(items)):
                rec = records[c][i]
                rec["loglik"] = {n: float(v) for n, v in zip(names, scores[c, i])}
                best = names[int(np.argmax(scores[c, i]))]
                rec["pred_loglik"] = int(best) if task == "sentiment" else best
    return records


def run_units(
    model,
    tokenizer,
    task: str,
    lang: str,
    items: list,
    conditions: list[Condition],
    nu: NuResults,
    mode: str,
    store: UnitStore,
    task_settings: dict,
    eng: EngineSettings,
    force: bool,
) -> tuple[dict[str, list[dict]], int, int]:
    """Per-item records of every condition's unit ({unit: records}), computing only unfinished ones
    (those this process can claim together, stacked; units claimed by another live process are waited
    for, langsae.units); returns (records, n computed, n cached)."""
    by_unit = {c.unit(mode): c for c in conditions}

    def meta(c: Condition) -> dict:
        return {
            "task": task,
            "lang": lang,
            "layer": c.layer,
            "condition": c.name,
            "ablated_lang": c.ablated_lang,
            "draw": c.draw,
            "feature_ids": list(c.feature_ids),
            "mode": None if c.name == BASELINE else mode,
        }

    def compute(todo) -> list[list[dict]]:
        cs = [by_unit[unit] for unit, _, _ in todo]
        edits = [
            None if c.name == BASELINE else make_ablation(nu.layers[c.layer], c.feature_ids, mode, eng.device)
            for c in cs
        ]
        log.info("%s %s: %d units to compute (%d items each)", task, lang, len(todo), len(items))
        return compute_records(model, tokenizer, task, lang, items, edits, eng)

    units = [(c.unit(mode), unit_key(store, task, lang, c, mode, task_settings), meta(c)) for c in conditions]
    out, n_computed = store.run(task, lang, units, compute, len(items), force)
    return out, n_computed, len(conditions) - n_computed


# ----------------------------------------------------------------------------- metrics and the results table


def _labels(task: str) -> list:
    return list(tasks.RATINGS) if task == "sentiment" else list(SIB_CATEGORIES)


def metric_reps(task: str, metric: str, scoring: str, records: list[dict], w: np.ndarray) -> np.ndarray:
    """One metric of one unit under replicate weights w [R, n] (items in record order): [R]."""
    if task == "qa":
        return metrics.weighted_mean(w, [r[metric] for r in records])
    labels = _labels(task)
    code = {lab: k for k, lab in enumerate(labels)}
    gold = np.array([code[r["gold"]] for r in records])
    raw_pred = [r["parsed"] if scoring == "generate" else r["pred_loglik"] for r in records]
    pred = np.array([-1 if p is None else code[p] for p in raw_pred])
    if metric == "unparseable_rate":
        return metrics.weighted_mean(w, (pred < 0).astype(float))
    if metric == "accuracy":
        return metrics.weighted_accuracy(w, gold, pred)
    confusion = metrics.weighted_confusion(w, gold, pred, range(len(labels)))
    if metric == "qwk":
        return metrics.qwk_from_confusion(confusion)
    if metric == "macro_f1":
        return metrics.macro_f1_from_confusion(confusion)
    raise ValueError(metric)


def _resampled(task, metric, scoring, records, w) -> Resampled:
    return Resampled(
        metric_reps(task, metric, scoring, records, np.ones((1, len(records))))[0],
        metric_reps(task, metric, scoring, records, w),
    )


def _row(task, lang, c: Condition | None, metric, scoring, quantity, est: Resampled, n, draw="") -> dict:
    low, high = est.interval()
    cond = c or Condition(RANDOM)
    return {
        "task": task,
        "lang": lang,
        "layer": "" if cond.layer is None else cond.layer,
        "condition": cond.name,
        "ablated_lang": cond.ablated_lang,
        "draw": draw,
        "metric": metric,
        "scoring": scoring,
        "quantity": quantity,
        "value": float(est.point),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": n,
    }


@dataclass
class TaskResults:
    """Everything a task produced: items per language and each language's unit records."""

    task: str
    languages: list[str]
    items: dict[str, list]
    conditions: dict[str, list[Condition]]
    records: dict[str, dict[str, list[dict]]]  # lang -> unit -> records


def bootstrap_weights(res: TaskResults, seed: int, n_boot: int) -> dict[str, np.ndarray]:
    """Per language, [n_boot, n_items] draw counts of its items. Items that share ids across
    languages (XQuAD, SIB-200: parallel) are drawn jointly, so that differences between languages
    are paired; when no two languages share an id (Amazon reviews), each language draws its own
    n items, so each replicate keeps its sample size (a joint draw over the union would not)."""
    ids = {lang: [it.id for it in res.items[lang]] for lang in res.languages}
    every = [i for v in ids.values() for i in set(v)]
    if len(every) == len(set(every)):  # no id in two languages
        return {
            lang: JointBootstrap(ids[lang], np.zeros(len(ids[lang]), int), 1, seed + g, n_boot).weights(0)
            for g, lang in enumerate(res.languages)
        }
    flat = [i for lang in res.languages for i in ids[lang]]
    groups = np.repeat(np.arange(len(res.languages)), [len(ids[lang]) for lang in res.languages])
    plan = JointBootstrap(flat, groups, len(res.languages), seed, n_boot)
    return {lang: plan.weights(g) for g, lang in enumerate(res.languages)}


def results_rows(
    res: TaskResults, layers: Sequence[int], mode: str, seed: int, n_boot: int = N_BOOT
) -> tuple[list[dict], list[dict]]:
    """(results table rows, summary entries) of one task. See RESULTS_COLUMNS and SUMMARY_RULE."""
    weights = bootstrap_weights(res, seed, n_boot)
    rows, summary = [], []
    for lang in res.languages:
        w, n = weights[lang], len(res.items[lang])
        recs, conds = res.records[lang], res.conditions[lang]
        for metric, scoring in METRICS[res.task]:
            est = {c.unit(mode): _resampled(res.task, metric, scoring, recs[c.unit(mode)], w) for c in conds}
            base = est[BASELINE]
            rows.append(_row(res.task, lang, conds[0], metric, scoring, "value", base, n))
            for L in layers:
                at = [c for c in conds if c.layer == L]
                draws = [c for c in at if c.name == RANDOM]
                for c in at:
                    e = est[c.unit(mode)]
                    d = "" if c.draw is None else c.draw
                    rows.append(_row(res.task, lang, c, metric, scoring, "value", e, n, d))
                    rows.append(_row(res.task, lang, c, metric, scoring, "delta", e - base, n, d))
                if draws:
                    stack = Resampled(
                        np.array([est[c.unit(mode)].point for c in draws]),
                        np.stack([est[c.unit(mode)].reps for c in draws], -1),
                    )
                    rand = mean_over_draws(stack, seed)
                    mean_cond = Condition(RANDOM, L, NO_LANGUAGE)
                    rows.append(_row(res.task, lang, mean_cond, metric, scoring, "value", rand, n))
                    rows.append(_row(res.task, lang, mean_cond, metric, scoring, "delta", rand - base, n))
                if metric != "unparseable_rate":
                    summary.append(
                        _summary_entry(
                            res.task, lang, L, metric, scoring, at, est, base, rand if draws else None, mode
                        )
                    )
    return rows, summary


def _interval(e: Resampled) -> list[float]:
    low, high = e.interval()
    return [float(e.point), float(low), float(high)]


def _summary_entry(task, lang, layer, metric, scoring, at, est, base, rand, mode) -> dict:
    own = next(c for c in at if c.name == OWN)
    cross = next(c for c in at if c.name == CROSS)
    own_e = est[own.unit(mode)]
    entry = {
        "task": task,
        "lang": lang,
        "layer": layer,
        "metric": metric,
        "scoring": scoring,
        "baseline": _interval(base),
        "own_delta": _interval(own_e - base),
        "cross_lang": cross.ablated_lang,
        "cross_delta": _interval(est[cross.unit(mode)] - base),
        "random_delta": None,
        "own_minus_random": None,
        "own_drop_exceeds_random": None,
    }
    if rand is not None:
        diff = _interval(own_e - rand)
        entry.update(random_delta=_interval(rand - base), own_minus_random=diff)
        own_delta = entry["own_delta"]
        entry["own_drop_exceeds_random"] = bool(
            math.isfinite(diff[2]) and diff[2] < 0 and math.isfinite(own_delta[2]) and own_delta[2] < 0
        )
    return entry


def format_summary(entries: Sequence[dict]) -> str:
    """The summary as a fixed-width table for the terminal."""

    def ci(v):
        return "n/a" if v is None else format_interval(v[0], v[1], v[2], sep=",")

    head = (
        f"{'task':<10}{'lang':<10}{'layer':>5}  {'metric':<18}{'baseline':>9}  {'own Δ [95% CI]':<27}"
        f"{'random Δ':<27}{'cross Δ (lang)':<38}{'own − random':<27}own drop > random"
    )
    lines = [head, "-" * len(head)]
    for e in entries:
        metric, cross = f"{e['metric']}/{e['scoring']}", f"{ci(e['cross_delta'])} {e['cross_lang']}"
        exceeds = {None: "-", True: "yes", False: "no"}[e["own_drop_exceeds_random"]]
        lines.append(
            f"{e['task']:<10}{e['lang']:<10}{e['layer']:>5}  {metric:<18}{e['baseline'][0]:>9.3f}  "
            f"{ci(e['own_delta']):<27}{ci(e['random_delta']):<27}{cross:<38}"
            f"{ci(e['own_minus_random']):<27}{exceeds}"
        )
    lines.append(
        "own drop > random: the paired 95% CI of own − mean over random draws lies below zero "
        "(items and draws resampled)"
    )
    return "\n".join(lines)
