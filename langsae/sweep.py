"""Conditions, the ΔCE sweep engine and its on-disk condition store.

A condition is one ablation (layer, mode, feature ids) to measure on every evaluation text.
ΔCE per text is the mean next-token cross-entropy (fp32, padding masked) under the
ablation minus the same without it, paired on the same text. The engine computes each
batch's input of layer L once and runs only layers L..end per condition, several
conditions stacked along the batch (langsae.forward.run_from_layer). Baseline CEs are
computed once per text and cached; per-text ablated CEs are cached per condition, keyed by
a config hash, so an interrupted sweep resumes where it stopped and a later stage that
needs the same condition reads it instead of recomputing it.

A stage is: build its conditions, `run_sweep`, aggregate the SweepResult.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from langsae import distributed
from langsae.ablation import MODES, Ablation, make_ablation
from langsae.artifacts import config_hash, preflight, read_torch, save_torch
from langsae.config import PRESETS, RunConfig, resolve
from langsae.controls import NO_LANGUAGE, random_draw
from langsae.data import Texts, load_texts
from langsae.errors import CorruptArtifact, UserError
from langsae.features import NU_SCRIPT, LayerFeatures, NuResults
from langsae.forward import (
    Batch,
    edit_output,
    hidden_before_layer,
    make_batches,
    next_token_ce,
    run_from_layer,
    stacked,
    tokenize,
)
from langsae.memory import MemoryPlan, sweep_plan
from langsae.model import input_device, layer_device, load_model, placement
from langsae.units import claim_file, claim_units

log = logging.getLogger(__name__)

RANDOM = "random"  # `features` of a random-feature control


# ----------------------------------------------------------------------------- conditions


def feature_set_name(ranks: Sequence[int]) -> str:
    """(1,) -> 'top1'; (1, 2) -> 'top1+2'."""
    return "top" + "+".join(map(str, ranks))


@dataclass(frozen=True)
class Condition:
    """One ablation to measure on every evaluation text."""

    layer: int
    mode: str
    ablated_lang: str  # FLORES+ code, or NO_LANGUAGE for random controls
    features: str  # 'top1', 'top2', 'top1+2', ... or 'random'
    feature_ids: tuple[int, ...]
    draw: int | None = None  # which random draw (controls only)

    def numbers_key(self) -> dict:
        """What determines the numbers (two languages sharing features share one computation)."""
        return {"layer": self.layer, "mode": self.mode, "feature_ids": sorted(self.feature_ids)}


def feature_sets(top_k: int) -> list[tuple[int, ...]]:
    """Each single top feature, then all of them together: top_k=2 -> (1,), (2,), (1, 2)."""
    singles = [(r,) for r in range(1, top_k + 1)]
    return singles + ([tuple(range(1, top_k + 1))] if top_k > 1 else [])


def language_conditions(
    lf: LayerFeatures, languages: Sequence[str], mode: str, ranks: Sequence[int]
) -> list[Condition]:
    """At layer lf.layer, ablate each language's features of these 1-based nu ranks (e.g. (1, 2) = top1+2)."""
    return [
        Condition(lf.layer, mode, lang, feature_set_name(ranks), lf.top(lang, ranks)) for lang in languages
    ]


def random_conditions(lf: LayerFeatures, mode: str, k: int, random_draws: int, seed: int) -> list[Condition]:
    """`random_draws` seeded draws of k random live features of layer lf.layer (the control)."""
    if random_draws and len(lf.control_indices) < k:
        raise UserError(
            f"layer {lf.layer}'s control pool has {len(lf.control_indices)} features, fewer than {k}; "
            f"rerun `python {NU_SCRIPT}` with a larger --control-pool"
        )
    return [
        Condition(
            lf.layer, mode, NO_LANGUAGE, RANDOM, random_draw(lf.control_indices, k, seed, lf.layer, d), d
        )
        for d in range(random_draws)
    ]


def sweep_conditions(
    nu: NuResults, languages: Sequence[str], mode: str, top_k: int, random_draws: int, seed: int
) -> list[Condition]:
    """Every condition of the Section 5 sweep: per layer, each language's top-1..top-k singly and
    together, plus `random_draws` draws of k random live features for k = 1 and k = top_k."""
    conditions = []
    for _, lf in sorted(nu.layers.items()):
        for lang in languages:
            for ranks in feature_sets(top_k):
                conditions += language_conditions(lf, [lang], mode, ranks)
        for k in sorted({1, top_k}):
            conditions += random_conditions(lf, mode, k, random_draws, seed)
    return conditions


# ----------------------------------------------------------------------------- evaluation texts


@dataclass(frozen=True)
class EvalSet:
    """Tokenised evaluation texts. lang_index[i] indexes `languages` for text i.

    sentence_ids[i] [N] names the sentence text i translates: equal ids in different languages
    are translations of one sentence, which is what lets statistics resample sentences jointly
    across languages. None (hand-built sets) means text k of every language is sentence k.
    """

    languages: tuple[str, ...]
    token_ids: list[list[int]]
    lang_index: np.ndarray
    source: str
    sentence_ids: np.ndarray | None = None

    def __post_init__(self):
        if self.sentence_ids is None:
            position = np.zeros(len(self.lang_index), dtype=np.int64)
            for g in range(len(self.languages)):
                members = self.lang_index == g
                position[members] = np.arange(members.sum())
            object.__setattr__(self, "sentence_ids", np.array([f"pos:{k}" for k in position], dtype=str))
        if len(self.sentence_ids) != len(self.token_ids):
            raise ValueError(f"{len(self.sentence_ids)} sentence ids for {len(self.token_ids)} texts")

    def digest(self) -> str:
        # the cache key of per-text CEs: sentence ids do not change a text's CE, so they stay out
        # and caches written before ids existed stay valid
        return config_hash({"languages": self.languages, "ids": self.token_ids})

    def texts_of(self, language: str) -> np.ndarray:
        return np.flatnonzero(self.lang_index == self.languages.index(language))


def build_eval_set(tokenizer, texts: Texts) -> EvalSet:
    """Tokenise; a text with fewer than 2 tokens predicts nothing and is dropped (logged); its
    sentence id is then simply absent in that language."""
    flat, lang_ids = texts.flat()
    sentence_ids = texts.flat_ids()
    ids = tokenize(tokenizer, flat)
    keep = [i for i, t in enumerate(ids) if len(t) >= 2]
    if len(keep) < len(ids):
        log.warning("dropped %d evaluation texts shorter than 2 tokens", len(ids) - len(keep))
    return EvalSet(
        texts.languages,
        [ids[i] for i in keep],
        np.array([lang_ids[i] for i in keep]),
        texts.source,
        np.array([sentence_ids[i] for i in keep], dtype=str),
    )


# ----------------------------------------------------------------------------- the engine


def _device(model) -> torch.device:
    """Where input ids go: the embedding's device (under a device map, not every parameter's)."""
    return input_device(model)


@torch.no_grad()
def baseline_ce(
    model, batches: list[Batch], chunk_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text mean CE without any ablation: ([N] fp32, n_predicted [N]), N = texts in `batches`."""
    n = sum(len(b.indices) for b in batches)
    ce, count = torch.full((n,), float("nan")), torch.zeros(n, dtype=torch.long)
    dev = _device(model)
    for batch in tqdm(batches, desc="baseline CE", unit="batch", leave=False):
        b = batch.to(dev)
        final = run_from_layer(model, hidden_before_layer(model, b, 0), b.attention_mask, 0)
        c, k = next_token_ce(model, final, b.input_ids, b.attention_mask, chunk_tokens)
        ce[batch.indices], count[batch.indices] = c.cpu(), k.cpu()
    return ce, count


@torch.no_grad()
def ablated_ce(
    model,
    batches: list[Batch],
    layer: int,
    ablations: Sequence[Ablation],
    max_rows: int = 64,
    chunk_tokens: int | None = None,
    desc: str | None = None,
    inputs: dict | None = None,
) -> torch.Tensor:
    """Per-text mean CE under each ablation at `layer`: [C, N] fp32.

    Per batch, layer L's input is computed once; then up to max_rows // B conditions at a
    time run layers L..end as one stacked forward. All ablations must act at one hook point.
    Identity ablations are not run here (the caller fills them with the baseline).
    inputs: a dict kept by the caller across calls at one layer, caching each batch's layer-L
    input on the CPU (so computing a layer's conditions group by group runs layers 0..L-1 once).
    """
    if len({a.hook for a in ablations}) > 1:
        raise ValueError("ablations in one call must share a hook point")
    n = sum(len(b.indices) for b in batches)
    out = torch.full((len(ablations), n), float("nan"))
    if not ablations:
        return out
    dev = _device(model)
    hook = ablations[0].hook
    for bi, batch in enumerate(tqdm(batches, desc=desc or f"layer {layer}", unit="batch", leave=False)):
        b = batch.to(dev)
        if inputs is None:
            h = hidden_before_layer(model, b, layer)
        else:
            if (layer, bi) not in inputs:
                inputs[(layer, bi)] = hidden_before_layer(model, b, layer).cpu()
            h = inputs[(layer, bi)].to(dev)
        rows = h.shape[0]
        per_forward = max(1, max_rows // rows)
        for s in range(0, len(ablations), per_forward):
            group = ablations[s : s + per_forward]
            g = len(group)
            mask = b.attention_mask.repeat(g, 1)
            with edit_output(model, hook, stacked(group, rows)):
                final = run_from_layer(model, h.repeat(g, 1, 1), mask, layer)
            ce, _ = next_token_ce(model, final, b.input_ids.repeat(g, 1), mask, chunk_tokens)
            out[s : s + g][:, batch.indices] = ce.view(g, rows).cpu()
    return out


# ----------------------------------------------------------------------------- the sweep, cached


@dataclass
class SweepResult:
    """Per-text CEs of every condition, paired with the baseline on the same texts.

    baseline: [N]; n_tokens: [N] predicted tokens per text; ablated: [C, N] (row c = conditions[c]).
    computed / cached: how many distinct conditions the sweep computed / read from the store
    (conditions with the same numbers_key count once; the baseline and empty sets not at all).
    """

    evalset: EvalSet
    conditions: list[Condition]
    baseline: np.ndarray
    n_tokens: np.ndarray
    ablated: np.ndarray
    _index: dict = field(default_factory=dict, repr=False)
    computed: int = 0  # distinct conditions (by numbers_key) this sweep computed
    cached: int = 0  # distinct conditions it read from the store

    def __post_init__(self):
        self._index = {
            self._key(c.layer, c.ablated_lang, c.features, c.draw, len(c.feature_ids)): i
            for i, c in enumerate(self.conditions)
        }

    @staticmethod
    def _key(layer, ablated_lang, features, draw, n_features):
        # random controls of different sizes share the name "random": their size tells them apart
        return (layer, ablated_lang, features, draw, n_features if features == RANDOM else None)

    def index(
        self,
        layer: int,
        ablated_lang: str,
        features: str,
        draw: int | None = None,
        n_features: int | None = None,
    ) -> int:
        """Row of `ablated` (and of `conditions`) holding one condition.

        Random controls: ablated_lang=NO_LANGUAGE, features=RANDOM, with `draw` and `n_features`.
        """
        i = self._index.get(self._key(layer, ablated_lang, features, draw, n_features))
        if i is None:
            raise KeyError(
                f"no condition layer={layer} ablated_lang={ablated_lang} features={features} draw={draw} "
                f"k={n_features}"
            )
        return i

    def delta(
        self,
        layer: int,
        ablated_lang: str,
        features: str,
        draw: int | None = None,
        n_features: int | None = None,
    ) -> np.ndarray:
        """Per-text ΔCE [N] (ablated − baseline) of one condition on every evaluation text."""
        return self.ablated[self.index(layer, ablated_lang, features, draw, n_features)] - self.baseline

    def random_draws(self, layer: int, n_features: int) -> list[int]:
        """The draws of random k-feature controls measured at `layer`."""
        return sorted(
            c.draw
            for c in self.conditions
            if c.layer == layer and c.features == RANDOM and len(c.feature_ids) == n_features
        )

    def feature_ids(self, layer: int, ablated_lang: str, features: str) -> tuple[int, ...]:
        return self.conditions[self.index(layer, ablated_lang, features)].feature_ids


class ConditionStore:
    """Per-text CEs on disk under sae_features/<run>/ablation/: one file per entry, <name>/<key>.pt,
    name being "baseline" or "layer_L" (condition files of one layer share a folder).

    Entries are keyed by config_hash(run settings + what determines the numbers), so a
    changed model, evaluation set or nu run never reuses old numbers, and a finished
    condition is never recomputed. Every entry is its own atomic file, so concurrent runs never
    lose each other's entries (no file is read, modified and rewritten) and a killed run keeps
    every condition it finished. (Stores of the earlier one-file-per-layer layout, <name>.pt, are not
    read: every run made with it was a CPU toy run, cheaper to recompute than a second read path.)
    """

    def __init__(self, root: Path, settings: dict):
        self.root = Path(root)
        self.settings = settings

    def key(self, what: dict) -> str:
        return config_hash({**self.settings, **what})

    def path(self, name: str, key: str) -> Path:
        return self.root / name / f"{key}.pt"

    def claim_of(self, name: str, unit: str) -> Path:
        """The claim file of a unit of work (a key, or a group of keys named by their hash) under `name`."""
        return claim_file(self.root / name, unit)

    def has(self, name: str, key: str) -> bool:
        return self.path(name, key).exists()

    def get(self, name: str, key: str):
        """The entry, or None when it is absent or its file is corrupt (then removed, so that it is
        recomputed)."""
        path = self.path(name, key)
        if path.exists():
            entry = _load_entry(path)
            if entry is not None:
                return entry
            log.warning("%s is corrupt: removed, its condition is computed again", path)
            path.unlink(missing_ok=True)
        return None

    def put(self, name: str, entries: dict) -> None:
        """Write each entry to its own file."""
        for key, entry in entries.items():
            save_torch(entry, self.path(name, key))


def _load_entry(path: Path):
    """The entry, None for a file that is gone or cannot be read whole (torn by a disk fault or a foreign
    copy): the caller recomputes it, so the remake command in the error is never shown."""
    try:
        return read_torch(path, "reproduce_figures_section5.py", weights_only=False)
    except CorruptArtifact:
        return None


def condition_groups(keys: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """The layer's distinct condition keys in order, in groups of `size`: one claim and one stacked
    forward per batch each. Fixed by the full list (not by what is left to do), so that a resumed or
    a concurrent run stacks the same conditions together as an uninterrupted one."""
    distinct = list(dict.fromkeys(keys))
    return [tuple(distinct[s : s + size]) for s in range(0, len(distinct), size)]


def run_sweep(
    model,
    evalset: EvalSet,
    nu: NuResults,
    conditions: Sequence[Condition],
    store: ConditionStore,
    batch_size: int,
    pad_id: int,
    max_rows: int = 64,
    force: bool = False,
) -> SweepResult:
    """Measure every condition on every evaluation text, reusing whatever the store already holds.

    Work is claimed (langsae.units) in groups of max_rows // batch_size conditions of one layer and
    mode, and each group's conditions are saved as soon as they are computed: concurrent runs share
    the groups, and a killed run loses at most the group it was computing. force: recompute
    everything in this process (claims still keep concurrent runs from computing one group at once).
    """
    batches = make_batches(evalset.token_ids, batch_size, pad_id)
    keys = [store.key(c.numbers_key()) for c in conditions]
    # ablating nothing is the baseline itself
    by_key = {k: c for k, c in zip(keys, conditions) if c.feature_ids}
    base_key = store.key({"baseline": True})
    mine: set[tuple[str, str]] = set()  # (name, key) computed by this process

    def done(name: str, keys: Sequence[str]) -> bool:
        return all((name, k) in mine if force else store.has(name, k) for k in keys)

    for _ in range(3):  # a file found corrupt when read back is removed and computed again
        claimed = claim_units(
            [base_key],
            lambda k: store.claim_of("baseline", k),
            lambda k: done("baseline", [k]),
            share=distributed.rank_share,
        )
        for _ in claimed:
            log.info("baseline CE on %d evaluation texts", len(evalset.token_ids))
            ce, count = baseline_ce(model, batches)
            store.put("baseline", {base_key: {"ce": ce, "n_tokens": count}})
            mine.add(("baseline", base_key))
        per_group = max(1, max_rows // batch_size)
        _compute_groups(model, batches, nu, by_key, store, per_group, max_rows, done, mine)
        distributed.barrier()  # under torchrun every rank reads back the others' shares
        entries = {("baseline", base_key): store.get("baseline", base_key)}
        entries.update({(f"layer_{c.layer}", k): store.get(f"layer_{c.layer}", k) for k, c in by_key.items()})
        missing = {nk for nk, e in entries.items() if e is None}
        if not distributed.any_rank(bool(missing)):  # every rank retries, or none
            break
        mine -= missing
    else:
        raise RuntimeError(f"{len(missing)} files under {store.root} stayed unreadable, computed again")
    base = entries["baseline", base_key]
    baseline = base["ce"].numpy()
    ablated = np.full((len(conditions), len(baseline)), np.nan, dtype=np.float32)
    for i, (c, k) in enumerate(zip(conditions, keys)):
        ablated[i] = entries[f"layer_{c.layer}", k]["ce"].numpy() if c.feature_ids else baseline
    n_computed = distributed.total(len({k for _, k in mine} & set(by_key)))  # by every rank
    log.info("%d conditions computed, %d from cache", n_computed, len(by_key) - n_computed)
    n_tokens, n_cached = base["n_tokens"].numpy(), len(by_key) - n_computed
    return SweepResult(
        evalset, list(conditions), baseline, n_tokens, ablated, computed=n_computed, cached=n_cached
    )


def _compute_groups(
    model, batches, nu, by_key: dict, store: ConditionStore, size: int, max_rows: int, done, mine: set
) -> None:
    """Compute the conditions not done yet, claimed and saved group by group (see run_sweep)."""
    units = [
        (f"layer_{L}", group)
        for L in sorted({c.layer for c in by_key.values()})
        for mode in dict.fromkeys(c.mode for c in by_key.values())
        for group in condition_groups([k for k, c in by_key.items() if (c.layer, c.mode) == (L, mode)], size)
    ]
    inputs: dict = {}  # each batch's input of the layer being computed, shared by its groups

    def claim_of(unit):
        return store.claim_of(unit[0], config_hash({"group": unit[1]}))

    progress = tqdm(total=len(units), desc="condition groups", unit="group")
    for name, group in claim_units(units, claim_of, lambda u: done(*u), share=distributed.rank_share):
        todo = [k for k in group if not done(name, [k])]
        L = by_key[todo[0]].layer
        if any(key[0] != L for key in inputs):
            inputs.clear()
        at = layer_device(model, L)  # the edit runs on its layer's device (--device-map)
        abls = [make_ablation(nu.layers[L], by_key[k].feature_ids, by_key[k].mode, at) for k in todo]
        desc = f"layer {L} ({len(todo)} conditions)"
        ce = ablated_ce(model, batches, L, abls, max_rows, desc=desc, inputs=inputs)
        store.put(name, {k: {"condition": by_key[k].numbers_key(), "ce": ce[j]} for j, k in enumerate(todo)})
        mine.update((name, k) for k in todo)
        progress.update()
    progress.close()


# ----------------------------------------------------------------------------- what every ΔCE stage shares

DEFAULT_N_TEXTS = 500  # the paper's; a preset may set its own ("n_eval_texts")


def add_sweep_args(
    parser: argparse.ArgumentParser, top_k: bool = True, random_draws: bool = True
) -> argparse._ArgumentGroup:
    """The flags that fix a ΔCE sweep's numbers, defined once for every stage that reads the
    condition store (same defaults everywhere, so the same flags read the same cache).
    top_k / random_draws: whether this stage has those two flags."""
    g = parser.add_argument_group(
        "ΔCE sweep (as in reproduce_figures_section5.py: equal values share its cache)"
    )
    g.add_argument(
        "--n-texts",
        type=int,
        default=None,
        help=f"evaluation texts per language (the first N of the evaluation set); default {DEFAULT_N_TEXTS} "
        f"(paper), toy preset {PRESETS['toy'].defaults['n_eval_texts']}",
    )
    g.add_argument(
        "--mode",
        choices=MODES,
        default="directional",
        help="directional: project the block's residual output off the features' unit decoder directions "
        "(paper); feature: subtract each feature's own contribution a_f(x)·W_dec[f] at the SAE's write "
        "point (transcoder-native)",
    )
    if top_k:
        g.add_argument(
            "--top-k",
            type=int,
            default=2,
            help="ablate each language's top-1..k features alone and all together (2: top1, top2, top1+2)",
        )
    if random_draws:
        g.add_argument(
            "--random-draws",
            type=int,
            default=5,
            help="seeded draws of k random live features per layer, k = each ablation's number of features "
            "(control); the control's CI resamples draws as well as texts, so it needs at least 2 (1 gives a "
            "texts-only band); 0 = none",
        )
    g.add_argument(
        "--rows-per-forward",
        type=int,
        default=64,
        help="texts x conditions stacked into one forward from the ablated layer (memory vs speed)",
    )
    return g


def check_sweep_args(args: argparse.Namespace, cfg: RunConfig) -> int:
    """Validate the flags of `add_sweep_args` (one-line errors); returns N, the evaluation texts per
    language."""
    n_texts = (
        args.n_texts if args.n_texts is not None else cfg.preset.defaults.get("n_eval_texts", DEFAULT_N_TEXTS)
    )
    draws = getattr(args, "random_draws", 0)
    for flag, value, low in (
        ("--n-texts", n_texts, 1),
        ("--random-draws", draws, 0),
        ("--rows-per-forward", args.rows_per_forward, 1),
    ):
        if value < low:
            raise UserError(f"{flag} must be at least {low}")
    if draws == 1:
        log.warning(
            "one random draw: the random control's interval cannot include the spread between draws "
            "(use --random-draws 2 or more)"
        )
    return n_texts


def start(args: argparse.Namespace, stage: str) -> tuple[RunConfig, int, MemoryPlan]:
    """The first steps of every ΔCE stage: resolve the run, check its folders (cached conditions, CSVs
    and figures) and its memory plan before any model loads, validate the sweep flags; returns the run,
    N (texts per language) and the plan (for the stage's meta)."""
    cfg = resolve(args)
    preflight(cfg, min_free_mb=200)
    n_texts = check_sweep_args(args, cfg)
    return cfg, n_texts, sweep_plan(cfg, stage, args.rows_per_forward)  # refused in one line if it cannot fit


@dataclass
class SweepSetup:
    """The model, its evaluation set and the condition store of one run: every ΔCE stage opens
    them with `open_sweep`, so equal settings address the same cached conditions."""

    model: object
    tokenizer: object
    evalset: EvalSet
    store: ConditionStore

    @property
    def settings(self) -> dict:
        return self.store.settings

    def run(
        self, nu: NuResults, conditions: Sequence[Condition], cfg: RunConfig, max_rows: int
    ) -> SweepResult:
        """`run_sweep` with the run's settings; says on the terminal how much was computed and cached."""
        result = run_sweep(
            self.model,
            self.evalset,
            nu,
            conditions,
            self.store,
            cfg.batch_size,
            self.tokenizer.pad_token_id,
            max_rows,
            cfg.force,
        )
        print(f"{result.computed} conditions computed, {result.cached} read from the cache")
        return result


def open_sweep(cfg: RunConfig, nu: NuResults, n_texts: int) -> SweepSetup:
    """Load the first `n_texts` evaluation texts per language and the model, and open the run's
    condition store, keyed by the model, SAE, dtype, split, nu run and the tokenised texts."""
    texts = load_texts(cfg.languages, "evaluation", n_texts, cfg.split)
    model, tokenizer = load_model(cfg.preset, cfg.device, cfg.dtype, **placement(cfg))
    evalset = build_eval_set(tokenizer, texts)
    settings = {
        **cfg.model_settings(),
        "split": cfg.split,
        "nu_config_hash": nu.meta["config_hash"],
        "eval_texts": evalset.digest(),
    }
    return SweepSetup(model, tokenizer, evalset, ConditionStore(cfg.features_dir / "ablation", settings))
