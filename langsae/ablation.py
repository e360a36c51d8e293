"""Ablations of language features, and the ΔCE engine that measures them.

Two ablation modes, both at one layer L and at every position:
  directional (the paper's, after Arditi et al. 2024): on the residual output of block L,
      h <- h - Q Q^T h, Q an orthonormal basis (QR) of the chosen features' *unit* decoder
      directions W_dec[f] / |W_dec[f]|.
  feature (transcoder-native): at the SAE's write point (the MLP output for a transcoder),
      out <- out - sum_f a_f(x) W_dec[f], with a_f recomputed from the SAE's read point
      (the MLP input) with the saved encoder row, bias and JumpReLU threshold if any. The
      reconstruction error stays in place.
Both use the compact per-feature weights the nu stage saved (`layer_L_directions.pt`);
nothing here loads a full SAE.

ΔCE: per text, the mean next-token cross-entropy (fp32, padding masked) with the ablation
minus the same without it, paired on the same text. The engine computes each batch's
input of layer L once and runs only layers L..end per condition, several conditions
stacked along the batch (langsae.forward.run_from_layer). Baseline CEs are computed once per
text and cached; per-text ablated CEs are cached per condition, keyed by a config hash,
so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from langsae.artifacts import config_hash, load_json, save_text, save_torch
from langsae.config import FEATURES_ROOT, RunConfig, run_name_for
from langsae.data import Texts
from langsae.errors import UserError
from langsae.forward import Batch, edit_output, hidden_before_layer, make_batches, next_token_ce, run_from_layer, tokenize
from langsae.model import HookPoint, hook_point
from langsae.stats import mean_ci

log = logging.getLogger(__name__)

MODES = ("directional", "feature")
RANDOM = "random"  # `features` of a random-feature control
NO_LANGUAGE = "none"  # `ablated_lang` of a random-feature control
NU_SCRIPT = "compute_nu_scores.py"
RESULTS_COLUMNS = [
    "layer", "ablated_lang", "features", "mode", "eval_lang", "delta_ce", "ci_low", "ci_high",
    "n_texts", "n_tokens", "draw", "n_features", "feature_ids",
]  # fmt: skip


# ----------------------------------------------------------------------------- nu artifacts


@dataclass(frozen=True)
class LayerFeatures:
    """One layer's saved feature weights (from `layer_L_directions.pt`).

    top_indices: [K, k] each language's top-k features by nu (rows follow `languages`);
    control_indices: [P] random live features, in no language's top-k;
    feature_indices: [F] sorted union of both; W_dec [F, d_out], W_enc [F, d_in],
    b_enc [F], threshold [F] or None are that feature's rows, in feature_indices order.
    """

    layer: int
    hook_in: str
    hook_out: str
    d_sae: int
    languages: tuple[str, ...]
    top_indices: torch.Tensor
    control_indices: torch.Tensor
    feature_indices: torch.Tensor
    W_dec: torch.Tensor
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    threshold: torch.Tensor | None
    input_bias: torch.Tensor | None = None  # [d_in], subtracted before encoding (apply_b_dec_to_input)

    def top(self, language: str, ranks: Sequence[int]) -> tuple[int, ...]:
        """Feature ids of `language` at 1-based nu ranks."""
        row = self.top_indices[self.languages.index(language)]
        return tuple(int(row[r - 1]) for r in ranks)

    def rows(self, features: Sequence[int]) -> torch.Tensor:
        """Positions of `features` in feature_indices (and so in W_dec, W_enc, ...): LongTensor [k]."""
        bad = [f for f in features if not 0 <= f < self.d_sae]
        if bad:
            raise UserError(f"feature index {bad[0]} is out of range at layer {self.layer}: the SAE has d_sae = {self.d_sae}")
        pos = torch.searchsorted(self.feature_indices, torch.tensor(list(features), dtype=torch.long))
        pos = pos.clamp(max=len(self.feature_indices) - 1)
        missing = [f for f, p in zip(features, pos.tolist()) if int(self.feature_indices[p]) != f]
        if missing:
            raise UserError(
                f"feature {missing[0]} of layer {self.layer} has no saved weights (only each language's top-k and the "
                f"control pool are saved); rerun `python {NU_SCRIPT}` with a larger --top-k or --control-pool"
            )
        return pos


@dataclass(frozen=True)
class NuResults:
    """What the nu stage left in sae_features/<run>/: its metadata and each requested layer's features."""

    meta: dict
    languages: tuple[str, ...]  # the nu run's languages (features were ranked against all of them)
    layers: dict[int, LayerFeatures]
    top_k_saved: int


def nu_command(cfg: RunConfig, layers: Sequence[int] | None = None, top_k: int | None = None) -> str:
    """The command that makes nu results matching this run."""
    p = cfg.preset
    if p.name == "custom":
        parts = ["--model custom", f"--model-id {p.model_id}", f"--sae-release {p.sae_release}", f"--sae-id-template '{p.sae_id_template}'"]
    else:
        parts = [f"--model {p.name}"]
    if Path(cfg.features_dir).resolve() != (FEATURES_ROOT / run_name_for(p)).resolve():
        parts.append(f"--out-dir {cfg.features_dir}")
    parts.append(f"--languages {','.join(cfg.languages)}")
    if layers is not None:
        parts.append(f"--layers {','.join(map(str, layers))}")
    if top_k is not None:
        parts.append(f"--top-k {top_k}")
    return f"python {NU_SCRIPT} " + " ".join(parts)


def _layer_is_current(features_dir: Path, layer: int, nu_hash: str) -> bool:
    done = Path(features_dir) / f"layer_{layer}_done.json"
    return done.exists() and load_json(done).get("config_hash") == nu_hash


def load_nu_results(cfg: RunConfig, layers: Sequence[int] | None, top_k: int) -> NuResults:
    """Load and check the nu stage's output for these layers; refuse anything missing or stale.

    layers: None = every layer the nu stage computed. `cfg.languages` must all be among the
    nu run's languages, and the nu run must have used this model and SAE release.
    """
    fdir = Path(cfg.features_dir)
    meta_path = fdir / "meta.json"
    if not meta_path.exists():
        raise UserError(f"no nu-score results in {fdir}; run `{nu_command(cfg, layers, max(top_k, 2))}` first")
    meta = load_json(meta_path)
    made, want = meta.get("config", {}), cfg.describe()
    for key in ("model_id", "sae_release", "sae_id_template"):
        if made.get(key) != want[key]:
            raise UserError(
                f"nu results in {fdir} were made with {key} {made.get(key)!r}, not {want[key]!r}; "
                f"run `{nu_command(cfg, layers, max(top_k, 2))}` (or point --out-dir elsewhere)"
            )
    nu_langs = tuple(meta["languages"])
    missing = [lang for lang in cfg.languages if lang not in nu_langs]
    if missing:
        raise UserError(
            f"nu results in {fdir} cover {','.join(nu_langs)}, not {','.join(missing)}; "
            f"run `{nu_command(cfg, layers, max(top_k, 2))}`"
        )
    computed = [int(L) for L in meta["layers"]]
    if layers is None:
        layers = computed
    absent = [L for L in layers if L not in computed]
    if not layers or absent:
        raise UserError(
            f"layer(s) {absent or 'any'} have no nu results in {fdir} (computed: {computed or 'none'}); "
            f"run `{nu_command(cfg, sorted(set(computed) | set(absent)) or None, max(top_k, 2))}`"
        )
    top_k_saved = int(meta["top_k_saved"])
    if top_k < 1 or top_k > top_k_saved:
        raise UserError(
            f"--top-k {top_k} is out of range: the nu stage saved the top {top_k_saved} features per language; "
            f"use 1..{top_k_saved} or run `{nu_command(cfg, layers, top_k)}`"
        )
    loaded = {}
    for L in layers:
        path = fdir / f"layer_{L}_directions.pt"
        if not path.exists() or not _layer_is_current(fdir, L, meta["config_hash"]):
            raise UserError(f"nu results for layer {L} in {fdir} are missing or stale; run `{nu_command(cfg, layers, top_k_saved)}`")
        d = torch.load(path, map_location="cpu", weights_only=True)
        lf = LayerFeatures(
            layer=L, hook_in=d["hook_name"], hook_out=d.get("hook_name_out") or d["hook_name"], d_sae=int(d["d_sae"]),
            languages=tuple(d["languages"]), top_indices=d["top_indices"].long(), control_indices=d["control_indices"].long(),
            feature_indices=d["feature_indices"].long(), W_dec=d["W_dec"].float(), W_enc=d["W_enc"].float(),
            b_enc=d["b_enc"].float(), threshold=None if d.get("threshold") is None else d["threshold"].float(),
            input_bias=None if d.get("input_bias") is None else d["input_bias"].float(),
        )  # fmt: skip
        if lf.languages != nu_langs or lf.top_indices.shape[1] < top_k:
            raise UserError(f"{path} does not match meta.json (languages or top-k); run `{nu_command(cfg, layers, top_k_saved)}`")
        loaded[L] = lf
    return NuResults(meta, nu_langs, loaded, top_k_saved)


# ----------------------------------------------------------------------------- ablations


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [d, r] of the span of the rows of `directions` [k, d], each first scaled to unit norm.

    QR of the unit directions; a (numerically) rank-deficient set falls back to an SVD so
    that no spurious direction enters the basis.
    """
    if directions.shape[0] == 0:
        return directions.new_zeros(directions.shape[1], 0)
    norms = directions.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise UserError("a chosen feature has an all-zero decoder direction; it cannot be ablated directionally")
    unit = (directions / norms).T  # [d, k]
    q, r = torch.linalg.qr(unit)
    diag = r.diagonal().abs()
    if bool((diag > 1e-5).all()):
        return q
    u, s, _ = torch.linalg.svd(unit, full_matrices=False)
    return u[:, s > 1e-5 * s.max()]


def project_out(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """h - Q Q^T h along the last dimension, computed in fp32: h [..., d], basis Q [d, r]."""
    hf = h.float()
    return (hf - (hf @ basis) @ basis.T).to(h.dtype)


def feature_activations(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    threshold: torch.Tensor | None,
    input_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_f(x) = ReLU((x - input_bias) W_enc[f] + b_enc[f]), zeroed below the JumpReLU threshold if any: [..., k] fp32.

    x: [..., d_in]; W_enc: [k, d_in] (encoder columns as rows); b_enc, threshold: [k];
    input_bias: [d_in] for SAEs that subtract b_dec from their input (None for transcoders).
    """
    xf = x.float() if input_bias is None else x.float() - input_bias
    pre = xf @ W_enc.T + b_enc
    acts = torch.relu(pre)
    return acts if threshold is None else acts * (pre > threshold)


@dataclass
class Ablation:
    """One condition's edit at its hook point; `apply(out, sublayer_input)` returns the edited output.

    out: [B, T, d_out] at `hook`; sublayer_input: [B, T, d_in] at `hook.sublayer_input()` (the MLP
    input when `hook` is an MLP output), as `forward.edit_output` passes it by default.
    directional: `basis` Q [d, r]; feature: W_dec [k, d_out], W_enc [k, d_in], b_enc, threshold [k],
    and whether the encoder reads the hook point itself (an SAE that reads where it writes: residual
    or MLP-output) or its sublayer's input (transcoder).
    An ablation of no features is the identity (`is_identity`).
    """

    hook: HookPoint
    mode: str
    basis: torch.Tensor | None = None
    W_dec: torch.Tensor | None = None
    W_enc: torch.Tensor | None = None
    b_enc: torch.Tensor | None = None
    threshold: torch.Tensor | None = None
    input_bias: torch.Tensor | None = None
    reads_output: bool = False

    @property
    def is_identity(self) -> bool:
        n = self.basis.shape[1] if self.mode == "directional" else self.W_dec.shape[0]
        return n == 0

    def apply(self, out: torch.Tensor, sublayer_input: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return out
        if self.mode == "directional":
            return project_out(out, self.basis)
        x = out if self.reads_output else sublayer_input
        acts = feature_activations(x, self.W_enc, self.b_enc, self.threshold, self.input_bias)
        return (out.float() - acts @ self.W_dec).to(out.dtype)


def make_ablation(lf: LayerFeatures, features: Sequence[int], mode: str, device: str | torch.device = "cpu") -> Ablation:
    """Build the ablation of `features` (SAE feature ids) at layer lf.layer."""
    if mode not in MODES:
        raise UserError(f"unknown ablation mode {mode!r}; choose {' or '.join(MODES)}")
    features = list(dict.fromkeys(int(f) for f in features))
    rows = lf.rows(features) if features else torch.zeros(0, dtype=torch.long)
    if mode == "directional":
        basis = orthonormal_basis(lf.W_dec[rows]).to(device)
        return Ablation(HookPoint(lf.layer, "block", "output"), mode, basis=basis)
    read, write = hook_point(lf.hook_in), hook_point(lf.hook_out)
    if read == write:
        reads_output = True
    elif read == write.sublayer_input():  # what edit_output hands to `apply` beside the output
        reads_output = False
    else:
        raise UserError(f"feature ablation needs the SAE to read the input or output of the module it writes; got {lf.hook_in} -> {lf.hook_out}")
    threshold = None if lf.threshold is None else lf.threshold[rows].to(device)
    return Ablation(
        write, mode, W_dec=lf.W_dec[rows].to(device), W_enc=lf.W_enc[rows].to(device),
        b_enc=lf.b_enc[rows].to(device), threshold=threshold, reads_output=reads_output,
        input_bias=None if lf.input_bias is None else lf.input_bias.to(device),
    )  # fmt: skip


def stacked(ablations: Sequence[Ablation], rows_each: int):
    """An `edit_output` function for conditions stacked along the batch: rows [i*B, (i+1)*B) get ablation i."""

    def fn(out: torch.Tensor, module_input: torch.Tensor) -> torch.Tensor:
        parts = [
            a.apply(out[i * rows_each : (i + 1) * rows_each], module_input[i * rows_each : (i + 1) * rows_each])
            for i, a in enumerate(ablations)
        ]
        return torch.cat(parts)

    return fn


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


def random_draw(pool: torch.Tensor, k: int, seed: int, layer: int, draw: int) -> tuple[int, ...]:
    """k features from the control pool, seeded by (seed, layer, k, draw) so each draw is reproducible on its own."""
    rng = np.random.default_rng([seed, layer, k, draw])
    return tuple(sorted(int(pool[i]) for i in rng.choice(len(pool), size=k, replace=False)))


def sweep_conditions(
    nu: NuResults, languages: Sequence[str], mode: str, top_k: int, random_draws: int, seed: int
) -> list[Condition]:
    """Every condition of the Section 5 sweep: per layer, each language's top-1..top-k singly and
    together, plus `random_draws` draws of k random live features for k = 1 and k = top_k."""
    conditions = []
    for L, lf in sorted(nu.layers.items()):
        for lang in languages:
            for ranks in feature_sets(top_k):
                conditions.append(Condition(L, mode, lang, feature_set_name(ranks), lf.top(lang, ranks)))
        for k in sorted({1, top_k}):
            if random_draws and len(lf.control_indices) < k:
                raise UserError(f"layer {L}'s control pool has {len(lf.control_indices)} features, fewer than {k}; rerun `python {NU_SCRIPT}` with a larger --control-pool")
            for d in range(random_draws):
                conditions.append(Condition(L, mode, NO_LANGUAGE, RANDOM, random_draw(lf.control_indices, k, seed, L, d), d))
    return conditions


# ----------------------------------------------------------------------------- evaluation texts


@dataclass(frozen=True)
class EvalSet:
    """Tokenised evaluation texts. lang_index[i] indexes `languages` for text i."""

    languages: tuple[str, ...]
    token_ids: list[list[int]]
    lang_index: np.ndarray
    source: str

    def digest(self) -> str:
        return config_hash({"languages": self.languages, "ids": self.token_ids})

    def texts_of(self, language: str) -> np.ndarray:
        return np.flatnonzero(self.lang_index == self.languages.index(language))


def build_eval_set(tokenizer, texts: Texts) -> EvalSet:
    """Tokenise; a text with fewer than 2 tokens predicts nothing and is dropped (logged)."""
    flat, lang_ids = texts.flat()
    ids = tokenize(tokenizer, flat)
    keep = [i for i, t in enumerate(ids) if len(t) >= 2]
    if len(keep) < len(ids):
        log.warning("dropped %d evaluation texts shorter than 2 tokens", len(ids) - len(keep))
    return EvalSet(texts.languages, [ids[i] for i in keep], np.array([lang_ids[i] for i in keep]), texts.source)


# ----------------------------------------------------------------------------- the engine


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def baseline_ce(model, batches: list[Batch], chunk_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
) -> torch.Tensor:
    """Per-text mean CE under each ablation at `layer`: [C, N] fp32.

    Per batch, layer L's input is computed once; then up to max_rows // B conditions at a
    time run layers L..end as one stacked forward. All ablations must act at one hook point.
    Identity ablations are not run here (the caller fills them with the baseline).
    """
    if len({a.hook for a in ablations}) > 1:
        raise ValueError("ablations in one call must share a hook point")
    n = sum(len(b.indices) for b in batches)
    out = torch.full((len(ablations), n), float("nan"))
    if not ablations:
        return out
    dev = _device(model)
    hook = ablations[0].hook
    for batch in tqdm(batches, desc=desc or f"layer {layer}", unit="batch", leave=False):
        b = batch.to(dev)
        h = hidden_before_layer(model, b, layer)
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
    """

    evalset: EvalSet
    conditions: list[Condition]
    baseline: np.ndarray
    n_tokens: np.ndarray
    ablated: np.ndarray
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {self._key(c.layer, c.ablated_lang, c.features, c.draw, len(c.feature_ids)): i for i, c in enumerate(self.conditions)}

    @staticmethod
    def _key(layer, ablated_lang, features, draw, n_features):
        # random controls of different sizes share the name "random": their size tells them apart
        return (layer, ablated_lang, features, draw, n_features if features == RANDOM else None)

    def delta(self, layer: int, ablated_lang: str, features: str, draw: int | None = None, n_features: int | None = None) -> np.ndarray:
        """Per-text ΔCE [N] (ablated − baseline) of one condition on every evaluation text.

        Random controls: ablated_lang=NO_LANGUAGE, features=RANDOM, with `draw` and `n_features`.
        """
        i = self._index.get(self._key(layer, ablated_lang, features, draw, n_features))
        if i is None:
            raise KeyError(f"no condition layer={layer} ablated_lang={ablated_lang} features={features} draw={draw} k={n_features}")
        return self.ablated[i] - self.baseline

    def random_draws(self, layer: int, n_features: int) -> list[int]:
        """The draws of random k-feature controls measured at `layer`."""
        return sorted(
            c.draw for c in self.conditions if c.layer == layer and c.features == RANDOM and len(c.feature_ids) == n_features
        )

    def random_delta(self, layer: int, n_features: int) -> np.ndarray | None:
        """Per-text ΔCE [N] of n_features random live features, averaged over draws; None without draws."""
        draws = self.random_draws(layer, n_features)
        if not draws:
            return None
        return np.mean([self.delta(layer, NO_LANGUAGE, RANDOM, d, n_features) for d in draws], axis=0)

    def feature_ids(self, layer: int, ablated_lang: str, features: str) -> tuple[int, ...]:
        return self.conditions[self._index[self._key(layer, ablated_lang, features, None, None)]].feature_ids


class ConditionStore:
    """Per-text CEs on disk under sae_features/<run>/ablation/: the baseline and one file per layer.

    Entries are keyed by config_hash(run settings + what determines the numbers), so a
    changed model, evaluation set or nu run never reuses old numbers, and a finished
    condition is never recomputed. Every write is atomic.
    """

    def __init__(self, root: Path, settings: dict):
        self.root = Path(root)
        self.settings = settings

    def key(self, what: dict) -> str:
        return config_hash({**self.settings, **what})

    def _file(self, name: str) -> Path:
        return self.root / f"{name}.pt"

    def read(self, name: str) -> dict:
        path = self._file(name)
        return torch.load(path, weights_only=False) if path.exists() else {}

    def get(self, name: str, key: str):
        return self.read(name).get(key)

    def put(self, name: str, entries: dict) -> None:
        data = self.read(name)
        data.update(entries)
        save_torch(data, self._file(name))


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
    """Measure every condition on every evaluation text, reusing whatever the store already holds."""
    batches = make_batches(evalset.token_ids, batch_size, pad_id)
    base_key = store.key({"baseline": True})
    cached = None if force else store.get("baseline", base_key)
    if cached is None:
        log.info("baseline CE on %d evaluation texts", len(evalset.token_ids))
        ce, count = baseline_ce(model, batches)
        cached = {"ce": ce, "n_tokens": count}
        store.put("baseline", {base_key: cached})
    baseline, n_tokens = cached["ce"].numpy(), cached["n_tokens"].numpy()

    keys = [store.key(c.numbers_key()) for c in conditions]
    by_layer: dict[int, list[int]] = {}
    for i, c in enumerate(conditions):
        by_layer.setdefault(c.layer, []).append(i)
    ablated = np.full((len(conditions), len(baseline)), np.nan, dtype=np.float32)
    dev = _device(model)
    for L in tqdm(sorted(by_layer), desc="layers", unit="layer"):
        name = f"layer_{L}"
        have = {} if force else store.read(name)
        todo: dict[str, Condition] = {}
        for i in by_layer[L]:
            c, k = conditions[i], keys[i]
            if not c.feature_ids:  # ablating nothing is the baseline itself
                ablated[i] = baseline
            elif k in have:
                ablated[i] = have[k]["ce"].numpy()
            else:
                todo.setdefault(k, c)
        if todo:
            by_mode: dict[str, list[str]] = {}
            for k, c in todo.items():
                by_mode.setdefault(c.mode, []).append(k)
            new = {}
            for mode, ks in by_mode.items():
                abls = [make_ablation(nu.layers[L], todo[k].feature_ids, mode, dev) for k in ks]
                ce = ablated_ce(model, batches, L, abls, max_rows, desc=f"layer {L} ({len(ks)} conditions)")
                new.update({k: {"condition": todo[k].numbers_key(), "ce": ce[j]} for j, k in enumerate(ks)})
            store.put(name, new)
            for i in by_layer[L]:
                if keys[i] in new:
                    ablated[i] = new[keys[i]]["ce"].numpy()
        log.info("layer %d: %d conditions computed, %d from cache", L, len(todo), len(by_layer[L]) - len(todo))
    return SweepResult(evalset, list(conditions), baseline, n_tokens, ablated)


# ----------------------------------------------------------------------------- the results table


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


def write_csv(rows: list[dict], path: Path, columns: Sequence[str] | None = None) -> None:
    """Rows of dicts as CSV, written atomically; floats with 6 significant digits."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    save_text(buf.getvalue(), path)


def write_results(rows: list[dict], path: Path, mode: str) -> None:
    """Write the results table; rows of the other ablation mode already in it are kept, so one
    table holds both modes when both were run."""
    kept = []
    if Path(path).exists():
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("mode") != mode]
    write_csv(kept + rows, path, RESULTS_COLUMNS)
