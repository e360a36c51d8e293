"""Language steering evaluated (the paper's Section 6): conditions, tasks, per-item records, the results
table with bootstrap intervals and the best alpha under a collateral budget.

A condition steers source-language prompts towards a target language at layers L..L+n-1 (see
`langsae.steering`):
  none          no steering (the baseline; alpha 0)
  sv            alpha * v at every position
  gated         alpha * v where any of the source's top-k features (at layer L) is active
  random_dir    a seeded random direction with the norm of v at each layer, at every position (control)
  random_gate   alpha * v gated by k random live features of layer L (control)
Tasks (`TASKS`), per source language, on its evaluation texts (disjoint from the selection texts
that made the vectors and chose the features):
  lid           adversarial language identification: LID_PROMPT, greedy answer (stops at a newline or an EOS);
                success = the first language named in the answer is the target (English or native name, a
                whole word, case- and normalisation-insensitive: `named_language`); also the log-probability
                of the whole " <English name>" after the prompt
  continuation  the text itself as prompt, greedy continuation of --max-new-tokens (stops at an EOS only);
                success = `langsae.langid.identify` assigns it to the target; degenerate = empty, or one
                token makes up more than half of it
  collateral    per-text mean next-token CE, steering active, on the evaluation texts of every language
                but the source (recorded), averaged over every language but the source and the target:
                delta_ce = steered − unsteered, paired per text, mean per language, then mean over languages
Every unit (task, source, condition) is one JSONL file of per-item records, skipped on a rerun when its
config hash matches (the `units.UnitStore`).
"""

from __future__ import annotations

import collections
import math
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from langsae import stats
from langsae.controls import random_draw
from langsae.data import Texts
from langsae.features import NuResults
from langsae.generate import continuation_logprobs, eos_token_ids, greedy_generate, stop_token_ids
from langsae.steering import (
    Gate,
    Steering,
    SteeringVectors,
    make_gate,
    random_direction_like,
    stacked_steering,
)
from langsae.units import UnitStore

TASKS = ("lid", "continuation", "collateral")
NONE, SV, GATED, RANDOM_DIR, RANDOM_GATE = "none", "sv", "gated", "random_dir", "random_gate"
METHODS = (SV, GATED, RANDOM_DIR, RANDOM_GATE)
CONTROLS = (NONE, RANDOM_DIR, RANDOM_GATE)
DRAWN = (RANDOM_DIR, RANDOM_GATE)  # methods with seeded random draws

# The prompt; PROMPT_VERSION is part of every cache key, so editing it invalidates old results.
# 2: answers stop at every EOS id of the model, greedy argmax of the fp32 head, whole-word name parser.
PROMPT_VERSION = 2
LID_PROMPT = (
    "Text: {text}\nQuestion: In which language is the text above written?\nAnswer: The text is written in"
)

# FLORES+ code -> (English name, native names...); whole words after NFC and casefold (`named_language`).
LANGUAGE_NAMES = {
    "eng_Latn": ("English",),
    "spa_Latn": ("Spanish", "español", "espanol", "castellano"),
    "fra_Latn": ("French", "français", "francais"),
    "por_Latn": ("Portuguese", "português", "portugues"),
    "jpn_Jpan": ("Japanese", "日本語"),
    "cmn_Hans": ("Chinese", "Mandarin", "中文", "汉语", "普通话"),
    "kor_Hang": ("Korean", "한국어", "조선어"),
    "tha_Thai": ("Thai", "ภาษาไทย", "ไทย"),
    "vie_Latn": ("Vietnamese", "tiếng việt", "tieng viet"),
    "arb_Arab": ("Arabic", "العربية", "بالعربية", "عربي"),
    "deu_Latn": ("German", "deutsch"),
    "ita_Latn": ("Italian", "italiano"),
    "rus_Cyrl": ("Russian", "русский"),
}

# The stage's artifacts (sae_features/<run>/; the figures in output/<run>/ as <stem>.{png,pdf}): the stage
# writes them, its claim and report section read them, by these names only.
RESULTS_FILE, SUMMARY_FILE, META_FILE = "steering_results.csv", "steering_summary.json", "steering_meta.json"
FIGURE_TASKS = ("lid", "continuation")  # the tasks with a success rate: one figure of each kind per task
SUCCESS_FIGURE, TRADEOFF_FIGURE = "steering_{task}_success", "steering_{task}_tradeoff"  # figure stems


def figure_names() -> list[str]:
    """Every figure (.png) the stage can write, in name order: the report shows those that exist."""
    return sorted(
        f"{kind.format(task=t)}.png" for t in FIGURE_TASKS for kind in (SUCCESS_FIGURE, TRADEOFF_FIGURE)
    )


RESULTS_COLUMNS = [
    "task",
    "source",
    "target",
    "layer",
    "n_layers",
    "method",
    "alpha",
    "draw",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
]
METRICS = {
    "lid": ("success", "target_logprob"),
    "continuation": ("success", "degenerate_rate"),
    "collateral": ("delta_ce",),
}
BEST_RULE = (
    "per task, source, target, layer, layer count and method: among the alphas whose collateral delta_ce "
    "(mean over the languages other than source and target) is at most the budget on half A of the sentence "
    "ids, the one with the highest success on half A (ties: the smallest |alpha|); its success and "
    "collateral are reported on half B, with 95% bootstrap intervals over half B's sentence ids (jointly "
    "across languages; random draws resampled)"
)


def english_name(code: str) -> str:
    return LANGUAGE_NAMES[code][0]


# Phrases that hold a name as a whole word but name a country or a people, not a language; masked before
# matching. Derived words of spaced scripts need no entry, the whole-word rule keeps them out: "Englishman",
# "Thailand", "Prussian" (never Russian), "Portugal", "Russia", "Deutschland", "Frenchwoman". An adjective
# standing alone ("English", "Thai") is read as the language: in an answer to LID_PROMPT it names one.
NOT_LANGUAGES = (
    "ประเทศไทย",  # Thailand ("country" + Thai): Thai writes words without spaces, so no boundary keeps it out
    "คนไทย",
    "ชาวไทย",  # Thai people
    "العربية السعودية",  # (the Kingdom of) Saudi Arabia
    "الإمارات العربية",  # the United Arab Emirates
    "الدول العربية",  # the Arab states
)

# Scripts that write words without spaces (CJK, Thai and its neighbours), and Hangul, whose particles
# attach to the word before them ("한국어로", in Korean): a name in these scripts needs no boundary on
# that side.
_UNSPACED = tuple("CJK IDEOGRAPHIC HIRAGANA KATAKANA THAI LAO KHMER MYANMAR HANGUL".split()) + (
    "HALFWIDTH KATAKANA",
    "HALFWIDTH HANGUL",
)


def _fold(text: str) -> str:
    """NFC, casefolded, NFC again (casefold can undo composition): one form for "tiếng việt" typed any way."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def _joins(ch: str) -> bool:
    """Whether `ch` continues a word of a script that separates words by spaces (a letter, mark or digit)."""
    return unicodedata.category(ch)[0] in "LMN" and not unicodedata.name(ch, "").startswith(_UNSPACED)


def _whole_word(text: str, name: str) -> int:
    """Where `name` first occurs in `text` as a whole word; -1 if it does not. A side is a boundary unless
    both the name's character there and its neighbour outside continue a spaced-script word: "Thailand"
    holds no "thai", but "ภาษาไทยครับ" holds "ภาษาไทย" and "Englishです" holds "english"."""
    at = text.find(name)
    while at >= 0:
        end = at + len(name)
        left = at > 0 and _joins(text[at - 1]) and _joins(text[at])
        right = end < len(text) and _joins(text[end - 1]) and _joins(text[end])
        if not (left or right):
            return at
        at = text.find(name, at + 1)
    return -1


def named_language(answer: str, candidates: Sequence[str] = tuple(LANGUAGE_NAMES)) -> str | None:
    """The candidate language whose name (English or native) occurs first in `answer` as a whole word
    (`_whole_word`), after NFC normalisation and casefolding of both and with the NOT_LANGUAGES phrases
    masked; None when none does. "French, not English" names French. Of names starting at the same place
    the longest wins."""
    text = _fold(answer)
    for phrase in NOT_LANGUAGES:
        text = text.replace(_fold(phrase), " ")
    best = None  # (start, -length, code)
    for code in candidates:
        for name in map(_fold, LANGUAGE_NAMES[code]):
            at = _whole_word(text, name)
            if at >= 0 and (best is None or (at, -len(name)) < best[:2]):
                best = (at, -len(name), code)
    return None if best is None else best[2]


def is_degenerate(token_ids: Sequence[int], text: str) -> bool:
    """Empty (nothing but whitespace), or one token makes up more than half of the tokens (of two or more)."""
    if not text.strip():
        return True
    return len(token_ids) >= 2 and collections.Counter(token_ids).most_common(1)[0][1] > len(token_ids) / 2


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class SteerCondition:
    """One condition of one (source, target) pair; `none` has no layer and alpha 0."""

    method: str
    source: str
    target: str
    layer: int | None = None
    n_layers: int = 0
    alpha: float = 0.0
    draw: int | None = None

    def unit(self) -> str:
        """File stem of this condition's unit (the source is the folder)."""
        if self.method == NONE:
            return f"{self.target}_none"
        draw = "" if self.draw is None else self.draw
        return f"{self.target}_L{self.layer}x{self.n_layers}_{self.method}{draw}_a{self.alpha:g}"

    def key(self) -> dict:
        return {
            "method": self.method,
            "source": self.source,
            "target": self.target,
            "layer": self.layer,
            "n_layers": self.n_layers,
            "alpha": self.alpha,
            "draw": self.draw,
        }


def conditions_for(
    source: str,
    targets: Sequence[str],
    layers: Sequence[int],
    n_layers: Sequence[int],
    alphas: Sequence[float],
    methods: Sequence[str],
    random_draws: int,
) -> list[SteerCondition]:
    """Per target: no steering, then per layer, layer count, method, (draw) and alpha one condition."""
    out = []
    for t in targets:
        if t == source:
            continue
        out.append(SteerCondition(NONE, source, t))
        for L in layers:
            for n in n_layers:
                for m in methods:
                    for d in range(random_draws) if m in DRAWN else [None]:
                        out += [SteerCondition(m, source, t, L, n, float(a), d) for a in alphas]
    return out


def _seed(*parts) -> int:
    """A stable integer seed from any parts (Python's hash of a str changes per process)."""
    return zlib.crc32(repr(parts).encode())


def gate_features(c: SteerCondition, nu: NuResults, gate_k: int, seed: int) -> tuple[int, ...]:
    """The features that gate a gated condition: the source's top-gate_k at its first layer, or (random_gate)
    gate_k random live features of that layer."""
    lf = nu.layers[c.layer]
    if c.method == GATED:
        return lf.top(c.source, range(1, gate_k + 1))
    return random_draw(lf.control_indices, gate_k, seed, c.layer, c.draw)


def build_edits(
    conditions: Sequence[SteerCondition],
    vectors: dict[int, SteeringVectors],
    nu: NuResults,
    gate_k: int,
    seed: int,
    device: str | torch.device = "cpu",
    gate_sae=lambda layer: None,
) -> list[Steering | None]:
    """One-row Steering per condition (None for `none`), for `steering.stacked_steering`. The gated conditions
    of a layer share one encoder (one `make_gate` over all of their feature sets). gate_sae(L): the full SAE
    the gate at layer L reads through (`features.encoder_sae`: a TopK SAE's), or None. `device` is only
    where they are built: `steering.steer` moves each layer's share to that layer's device when it installs
    the edit, so a steering over layers on several GPUs (--device-map) needs nothing here."""
    gated = [c for c in conditions if c.method in (GATED, RANDOM_GATE)]
    gates: dict[SteerCondition, Gate] = {}
    for L in sorted({c.layer for c in gated}):
        mine = [c for c in gated if c.layer == L]
        g = make_gate(nu.layers[L], [gate_features(c, nu, gate_k, seed) for c in mine], device, gate_sae(L))
        gates.update({c: Gate(g.encoder, g.rows[j : j + 1]) for j, c in enumerate(mine)})
    out = []
    for c in conditions:
        if c.method == NONE:
            out.append(None)
            continue
        per_layer = [vectors[L].vector(c.source, c.target) for L in range(c.layer, c.layer + c.n_layers)]
        if c.method == RANDOM_DIR:
            per_layer = [
                random_direction_like(v, _seed(seed, c.source, c.target, L, c.draw))
                for L, v in zip(range(c.layer, c.layer + c.n_layers), per_layer)
            ]
        v = torch.stack(per_layer)[None].to(device)  # [1, n, d]
        out.append(Steering(c.layer, v, torch.tensor([c.alpha], device=device), gates.get(c)))
    return out


# ----------------------------------------------------------------------------- running the tasks


@dataclass(frozen=True)
class TaskSettings:
    pad_id: int
    max_new_tokens: int  # continuation
    lid_max_new_tokens: int
    rows_per_forward: int


LID_MAX_NEW_TOKENS = 8  # the answer's length limit: "The text is written in" + a language's name


def lid_prompt(text: str) -> str:
    return LID_PROMPT.format(text=text)


def lid_records(
    model, tokenizer, texts, ids, conditions, edits, s: TaskSettings, desc: str
) -> list[list[dict]]:
    """[C][N] per-item records of the language-identification task."""
    prompts = [tokenizer(lid_prompt(t))["input_ids"] for t in texts]
    stops = stop_token_ids(tokenizer, model)
    gens = greedy_generate(
        model,
        prompts,
        edits,
        stops,
        s.pad_id,
        s.lid_max_new_tokens,
        s.rows_per_forward,
        f"{desc}: generate",
        stack=stacked_steering,
    )
    logprob = np.full((len(conditions), len(prompts)), np.nan)
    for target in dict.fromkeys(
        c.target for c in conditions
    ):  # one engine call per target name, its conditions stacked
        rows = [c for c, cond in enumerate(conditions) if cond.target == target]
        name = tokenizer(" " + english_name(target), add_special_tokens=False)["input_ids"]
        logprob[rows] = continuation_logprobs(
            model,
            prompts,
            [name] * len(prompts),
            [edits[c] for c in rows],
            s.pad_id,
            s.rows_per_forward,
            f"{desc}: log-prob",
            stack=stacked_steering,
        )
    out = []
    for c, cond in enumerate(conditions):
        recs = []
        for i, sid in enumerate(ids):
            answer = tokenizer.decode(gens[c][i], skip_special_tokens=True)
            pred = named_language(answer)
            recs.append(
                {
                    "id": sid,
                    "answer": answer,
                    "predicted": pred,
                    "success": pred == cond.target,
                    "target_logprob": float(logprob[c, i]),
                }
            )
        out.append(recs)
    return out


def continuation_records(
    model, tokenizer, texts, ids, conditions, edits, s: TaskSettings, desc: str
) -> list[list[dict]]:
    """[C][N] per-item records of the cross-lingual continuation task."""
    from langsae.langid import identify

    prompts = [tokenizer(t)["input_ids"] for t in texts]
    stops = eos_token_ids(model, tokenizer)  # EOS only, newlines do not end a continuation
    gens = greedy_generate(
        model,
        prompts,
        edits,
        stops,
        s.pad_id,
        s.max_new_tokens,
        s.rows_per_forward,
        f"{desc}: generate",
        stack=stacked_steering,
    )
    out = []
    for c, cond in enumerate(conditions):
        conts = [tokenizer.decode(g, skip_special_tokens=True) for g in gens[c]]
        content = [[t for t in g if t not in stops] for g in gens[c]]
        preds = identify(conts)
        out.append(
            [
                {
                    "id": sid,
                    "continuation": text,
                    "n_new_tokens": len(gens[c][i]),
                    "predicted": pred,
                    "success": pred == cond.target,
                    "degenerate": is_degenerate(content[i], text),
                }
                for i, (sid, text, pred) in enumerate(zip(ids, conts, preds))
            ]
        )
    return out


def collateral_records(
    model, tokenizer, evaluation: Texts, source: str, conditions, edits, s: TaskSettings, desc: str
) -> list[list[dict]]:
    """[C][N] per-text mean next-token CE (fp32 head) of the evaluation texts of every language but the
    source under each condition: the engine's continuation log-probability of tokens 1.. after token 0,
    over their count."""
    langs, sids, toks = [], [], []
    for lang in (x for x in evaluation.languages if x != source):
        for sid, t in zip(evaluation.ids[lang], evaluation.by_language[lang]):
            ids = tokenizer(t)["input_ids"]
            if len(ids) >= 2:
                langs.append(lang), sids.append(sid), toks.append(ids)
    lp = continuation_logprobs(
        model,
        [t[:1] for t in toks],
        [t[1:] for t in toks],
        edits,
        s.pad_id,
        s.rows_per_forward,
        f"{desc}: CE",
        stack=stacked_steering,
    )
    return [
        [
            {"lang": lang, "id": sid, "ce": float(-lp[c, i] / (len(toks[i]) - 1))}
            for i, (lang, sid) in enumerate(zip(langs, sids))
        ]
        for c in range(len(conditions))
    ]


def run_units(
    task: str,
    source: str,
    conditions: Sequence[SteerCondition],
    compute,
    store: UnitStore,
    what: dict,
    n_items: int | None,
    force: bool,
) -> tuple[dict[SteerCondition, list[dict]], int, int]:
    """Per-item records of every condition's unit of (task, source), computing only the unfinished ones, all
    together: compute(todo conditions) -> [C][N] records. what: everything else the records depend on
    (task settings, vectors' and nu's hashes, gate k, seed). Units are claimed (langsae.units): those
    another live process holds are waited for. Returns (records, n computed, n cached)."""
    by_unit = {c.unit(): c for c in conditions}
    units = [
        (c.unit(), store.key({**what, "task": task, **c.key()}), {"task": task, **c.key()})
        for c in conditions
    ]
    out, n_computed = store.run(
        task, source, units, lambda todo: compute([by_unit[u] for u, _, _ in todo]), n_items, force
    )
    return {c: out[c.unit()] for c in conditions}, n_computed, len(conditions) - n_computed


# ----------------------------------------------------------------------------- the results table


def _draws(est: list[stats.Resampled], seed: int) -> stats.Resampled:
    """One estimate, or the mean over random draws (their replicates resample draws too)."""
    if len(est) == 1:
        return est[0]
    return stats.mean_over_draws(
        stats.Resampled(np.array([e.point for e in est]), np.stack([e.reps for e in est], -1)), seed
    )


class Evaluator:
    """Per-unit estimates on one bootstrap plan over the sentence ids of the evaluation texts (jointly across
    languages). only: restrict to these sentence ids (one half of a split)."""

    def __init__(self, eval_ids: dict[str, list[str]], seed: int, n_boot: int = stats.N_BOOT, only=None):
        self.langs = list(eval_ids)
        self.ids = eval_ids
        flat = [i for lang in self.langs for i in eval_ids[lang]]
        groups = np.repeat(np.arange(len(self.langs)), [len(eval_ids[lang]) for lang in self.langs])
        self.plan = stats.JointBootstrap(flat, groups, len(self.langs), seed, n_boot, only)
        # each language's kept sentence ids, in the order of the plan's weights
        self.kept = {lang: [flat[j] for j in self.plan.members[g]] for g, lang in enumerate(self.langs)}

    def _mean(self, lang: str, values: dict[str, float]) -> stats.Resampled:
        """Mean over `lang`'s kept items that have a value (values: sentence id -> value), per replicate."""
        pos = [j for j, i in enumerate(self.kept[lang]) if i in values]
        x = np.array([values[self.kept[lang][j]] for j in pos], dtype=float)
        w = self.plan.weights(self.langs.index(lang))[:, pos]
        with np.errstate(invalid="ignore", divide="ignore"):
            return stats.Resampled(np.array(x.mean() if len(x) else math.nan), (w @ x) / w.sum(axis=1))

    def item_mean(self, records: list[dict], key: str, lang: str) -> stats.Resampled:
        """Mean of a per-item value over `lang`'s items (records carry the sentence `id`)."""
        return self._mean(lang, {r["id"]: float(r[key]) for r in records})

    def collateral(self, records: list[dict], base: list[dict], target: str) -> stats.Resampled:
        """Mean over the recorded languages but `target` of their mean per-text ΔCE (steered − unsteered,
        paired by text)."""
        ref = {(r["lang"], r["id"]): r["ce"] for r in base}
        per_lang: dict[str, dict[str, float]] = {}
        for r in records:
            if r["lang"] == target:
                continue
            per_lang.setdefault(r["lang"], {})[r["id"]] = r["ce"] - ref[(r["lang"], r["id"])]
        per = [self._mean(lang, d) for lang, d in sorted(per_lang.items())]
        if not per:
            return stats.Resampled(np.array(math.nan), np.full(self.plan.n_boot, math.nan))
        return stats.Resampled(np.mean([p.point for p in per]), np.mean([p.reps for p in per], axis=0))

    def metric(
        self, task: str, metric: str, records: list[dict], base: list[dict] | None, c: SteerCondition
    ) -> stats.Resampled:
        if task == "collateral":
            return self.collateral(records, base, c.target)
        key = {"success": "success", "target_logprob": "target_logprob", "degenerate_rate": "degenerate"}[
            metric
        ]
        return self.item_mean(records, key, c.source)


def _cells(conditions: Sequence[SteerCondition]) -> dict[tuple, list[SteerCondition]]:
    """Conditions grouped by everything but the draw."""
    cells: dict[tuple, list[SteerCondition]] = {}
    for c in conditions:
        cells.setdefault((c.method, c.source, c.target, c.layer, c.n_layers, c.alpha), []).append(c)
    return cells


def results_rows(
    records: dict[str, dict[SteerCondition, list[dict]]],
    conditions: Sequence[SteerCondition],
    ev: Evaluator,
    seed: int,
) -> list[dict]:
    """The tidy table (RESULTS_COLUMNS): per task, condition (and mean over draws) and metric, the value and
    its CI. records: task -> condition -> per-item records."""
    rows = []
    for task, by_cond in records.items():
        for (method, source, target, layer, n, alpha), members in _cells(conditions).items():
            base = by_cond.get(SteerCondition(NONE, source, target))
            for metric in METRICS[task]:
                est = [ev.metric(task, metric, by_cond[c], base, c) for c in members]
                n_items = (
                    len(ev.kept[source])
                    if task != "collateral"
                    else sum(len(ev.kept[x]) for x in {r["lang"] for r in base} - {target})
                )
                entries = [(c.draw, e) for c, e in zip(members, est)] if members[0].draw is not None else []
                entries.append((None, _draws(est, seed)))
                for draw, e in entries:
                    low, high = e.interval()
                    rows.append(
                        {
                            "task": task,
                            "source": source,
                            "target": target,
                            "layer": "" if layer is None else layer,
                            "n_layers": n or "",
                            "method": method,
                            "alpha": alpha,
                            "draw": "" if draw is None else draw,
                            "metric": metric,
                            "value": float(e.point),
                            "ci_low": float(low),
                            "ci_high": float(high),
                            "n": n_items,
                        }
                    )
    return rows


def _interval(e: stats.Resampled) -> list[float]:
    low, high = e.interval()
    return [float(e.point), float(low), float(high)]


def best_alpha(
    records: dict[str, dict[SteerCondition, list[dict]]],
    conditions: Sequence[SteerCondition],
    eval_ids: dict[str, list[str]],
    budget: float,
    seed: int,
    n_boot: int = stats.N_BOOT,
) -> list[dict]:
    """BEST_RULE's entries: per task (lid, continuation), pair, layer, layer count and method."""
    sources = {c.source for c in conditions}
    all_ids = sorted({i for s in sources for i in eval_ids[s]})
    half_a, half_b = stats.split_halves(all_ids, seed)
    sel, rep = Evaluator(eval_ids, seed, n_boot, half_a), Evaluator(eval_ids, seed, n_boot, half_b)
    coll = records["collateral"]
    cells = _cells(conditions)
    out = []
    for task in ("lid", "continuation"):
        if task not in records:
            continue
        groups: dict[tuple, list[tuple]] = {}
        for cell in cells:
            if cell[0] != NONE:
                groups.setdefault((cell[0],) + cell[1:5], []).append(cell)
        for (method, source, target, layer, n), members in groups.items():
            base_key = SteerCondition(NONE, source, target)

            def pick(ev, cell, what):  # noqa: E306
                conds = cells[cell]
                if what == "success":
                    return _draws(
                        [ev.metric(task, "success", records[task][c], None, c) for c in conds], seed
                    )
                return _draws([ev.collateral(coll[c], coll[base_key], target) for c in conds], seed)

            scored = [
                (cell, float(pick(sel, cell, "success").point), float(pick(sel, cell, "collateral").point))
                for cell in members
            ]
            ok = [x for x in scored if math.isfinite(x[2]) and x[2] <= budget]
            entry = {
                "task": task,
                "source": source,
                "target": target,
                "layer": layer,
                "n_layers": n,
                "method": method,
                "budget": budget,
                "n_alphas_within_budget": len(ok),
                "best_alpha": None,
                "selection_success": None,
                "success": None,
                "collateral_delta_ce": None,
                "baseline_success": _interval(
                    rep.metric(task, "success", records[task][base_key], None, base_key)
                ),
            }
            if ok:
                cell, s_sel, _ = max(ok, key=lambda x: (x[1], -abs(x[0][5])))
                entry.update(
                    best_alpha=cell[5],
                    selection_success=s_sel,
                    success=_interval(pick(rep, cell, "success")),
                    collateral_delta_ce=_interval(pick(rep, cell, "collateral")),
                )
            out.append(entry)
    return out


def format_summary(entries: Sequence[dict]) -> str:
    """The best-alpha summary as a fixed-width table."""

    def ci(v):
        return "n/a" if v is None else stats.format_interval(v[0], v[1], v[2], signed=False, sep=",")

    head = (
        f"{'task':<13}{'source→target':<22}{'layers':<8}{'method':<13}{'best α':>8}  "
        f"{'success (half B)':<24}{'collateral ΔCE':<26}baseline success"
    )
    lines = [head, "-" * len(head)]
    for e in entries:
        layers = f"{e['layer']}..{e['layer'] + e['n_layers'] - 1}"
        alpha = "-" if e["best_alpha"] is None else f"{e['best_alpha']:g}"
        lines.append(
            f"{e['task']:<13}{e['source'] + '→' + e['target']:<22}{layers:<8}{e['method']:<13}{alpha:>8}  "
            f"{ci(e['success']):<24}{ci(e['collateral_delta_ce']):<26}{ci(e['baseline_success'])}"
        )
    return "\n".join(lines)
