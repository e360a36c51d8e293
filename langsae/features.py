"""The nu stage's saved features, read back for the stages that ablate them.

The nu stage (compute_nu_scores.py) leaves in sae_features/<run>/ a meta.json and, per layer,
`layer_L_directions.pt`: the compact weights (decoder rows, encoder columns, biases,
thresholds) of each language's top-k features and of a pool of random live control
features. `load_nu_results` checks that they match the run and refuses anything missing or
stale with the command that makes them; nothing downstream ever loads a full SAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from langsae.artifacts import read_json, read_torch
from langsae.config import FEATURES_ROOT, RunConfig, figures_dir_for, run_name_for
from langsae.errors import UserError
from langsae.model import HookPoint, hook_point, layer_device, load_sae
from langsae.nu import META_FILE, layer_files

NU_SCRIPT = "compute_nu_scores.py"
# Why a TopK SAE's saved rows cannot give its features' activations: whether a feature is active at a
# position depends on whether it is among the k largest pre-activations of all d_sae features there.
TOPK_WHY = "a TopK SAE's feature is active only where it is among the top k of all its features"


def feature_activations(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    threshold: torch.Tensor | None,
    input_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """a_f(x) = ReLU((x - input_bias) W_enc[f] + b_enc[f]), zeroed below the JumpReLU threshold if
    any: [..., k] fp32.

    x: [..., d_in]; W_enc: [k, d_in] (encoder columns as rows); b_enc, threshold: [k];
    input_bias: [d_in] for SAEs that subtract b_dec from their input (None for transcoders).
    """
    xf = x.float() if input_bias is None else x.float() - input_bias
    pre = xf @ W_enc.T + b_enc
    acts = torch.relu(pre)
    return acts if threshold is None else acts * (pre > threshold)


@dataclass(frozen=True)
class FeatureEncoder:
    """A few saved features' encoders: their activations from the tensor at the SAE's read point
    (`read`: the MLP input for a transcoder), without the full SAE.

    W_enc [k, d_in], b_enc [k], threshold [k] or None, input_bias [d_in] or None, in `features` order.
    sae: the full SAE, whose own `encode` then gives the activations (a TopK SAE needs it, see TOPK_WHY:
    its TopK then decides which features are active); None: the saved rows above.
    """

    features: tuple[int, ...]
    read: HookPoint
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    threshold: torch.Tensor | None
    input_bias: torch.Tensor | None
    sae: object | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] at `read` -> activations [..., k] fp32."""
        if self.sae is not None:
            cols = torch.tensor(self.features, dtype=torch.long, device=x.device)
            return self.sae.encode(x.to(self.sae.dtype)).index_select(-1, cols).float()
        return feature_activations(x, self.W_enc, self.b_enc, self.threshold, self.input_bias)

    def to(self, device: str | torch.device) -> "FeatureEncoder":
        """This encoder on `device` (where its layer runs under --device-map). The full SAE moves in place,
        which costs nothing where `encoder_sae` already loaded it on its layer's device."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        sae = self.sae if self.sae is None else self.sae.to(device)
        return FeatureEncoder(
            self.features,
            self.read,
            *map(move, (self.W_enc, self.b_enc, self.threshold, self.input_bias)),
            sae,
        )


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
    topk: int | None = None  # k of a TopK SAE (its activations need the full SAE: TOPK_WHY), else None

    def top(self, language: str, ranks: Sequence[int]) -> tuple[int, ...]:
        """Feature ids of `language` at 1-based nu ranks."""
        row = self.top_indices[self.languages.index(language)]
        return tuple(int(row[r - 1]) for r in ranks)

    def rows(self, features: Sequence[int]) -> torch.Tensor:
        """Positions of `features` in feature_indices (and so in W_dec, W_enc, ...): LongTensor [k]."""
        bad = [f for f in features if not 0 <= f < self.d_sae]
        if bad:
            raise UserError(
                f"feature index {bad[0]} is out of range at layer {self.layer}: "
                f"the SAE has d_sae = {self.d_sae}"
            )
        pos = torch.searchsorted(self.feature_indices, torch.tensor(list(features), dtype=torch.long))
        pos = pos.clamp(max=len(self.feature_indices) - 1)
        missing = [f for f, p in zip(features, pos.tolist()) if int(self.feature_indices[p]) != f]
        if missing:
            raise UserError(
                f"feature {missing[0]} of layer {self.layer} has no saved weights (only each language's "
                f"top-k and the control pool are saved); rerun `python {NU_SCRIPT}` with a larger --top-k "
                "or --control-pool"
            )
        return pos

    def encoder(
        self, features: Sequence[int], device: str | torch.device = "cpu", sae=None
    ) -> FeatureEncoder:
        """The encoders of `features` (SAE feature ids, each saved: a top-k or control feature), on
        `device`. `sae`: this layer's full SAE (model.load_sae), whose own encode then decides; a TopK
        SAE's layer needs it (TOPK_WHY), so without it that is refused rather than answered wrongly."""
        if self.topk is not None and sae is None:
            raise UserError(
                f"layer {self.layer}'s SAE is TopK (k={self.topk}): {TOPK_WHY}, which its saved rows "
                "cannot tell; pass the layer's SAE (langsae.model.load_sae) to read its features"
            )
        rows = self.rows(features)
        return FeatureEncoder(
            tuple(int(f) for f in features),
            hook_point(self.hook_in),
            self.W_enc[rows].to(device),
            self.b_enc[rows].to(device),
            None if self.threshold is None else self.threshold[rows].to(device),
            None if self.input_bias is None else self.input_bias.to(device),
            sae,
        )


def sae_device(cfg: RunConfig, model, layer: int) -> str:
    """Where layer `layer`'s SAE (or its saved rows) belongs: --device, or under --device-map the layer's
    execution device (`model.layer_device`), so it reads the layer's activations where they are computed
    and the SAEs spread over the GPUs with their layers."""
    return cfg.device if cfg.device_map is None else str(layer_device(model, layer))


def encoder_sae(cfg: RunConfig, lf: LayerFeatures, model=None):
    """The layer's full SAE where reading its features needs one (a TopK SAE: TOPK_WHY), else None (the
    saved rows suffice, and nothing downstream loads a full SAE it does not need); on the layer's device
    (`sae_device`) when the model is given, else on --device."""
    if lf.topk is None:
        return None
    device = cfg.device if model is None else sae_device(cfg, model, lf.layer)
    return load_sae(cfg.preset, lf.layer, device, cfg.dtype)


@dataclass(frozen=True)
class NuResults:
    """What the nu stage left in sae_features/<run>/: its metadata and each requested layer's features."""

    meta: dict
    languages: tuple[str, ...]  # the nu run's languages (features were ranked against all of them)
    layers: dict[int, LayerFeatures]
    top_k_saved: int


def stage_command(script: str, cfg: RunConfig, *extra: str) -> str:
    """`python <script>` with the flags that reproduce this run's common settings (model, out dir, figures
    dir, languages, layers, and split, dtype, texts per language and seed where they are not the
    defaults: stored results depend on them), then `extra` (a --layers there replaces the run's)."""
    p = cfg.preset
    if p.name == "custom":
        parts = [
            "--model custom",
            f"--model-id {p.model_id}",
            f"--sae-release {p.sae_release}",
            f"--sae-id-template '{p.sae_id_template}'",
        ]
    else:
        parts = [f"--model {p.name}"]
    if Path(cfg.features_dir).resolve() != (FEATURES_ROOT / run_name_for(p)).resolve():
        parts.append(f"--out-dir {cfg.features_dir}")
    if Path(cfg.output_dir).resolve() != figures_dir_for(cfg.features_dir).resolve():
        parts.append(f"--figures-dir {cfg.output_dir}")
    parts.append(f"--languages {','.join(cfg.languages)}")
    if cfg.layers is not None and not any(e.startswith("--layers") for e in extra):
        parts.append(f"--layers {','.join(map(str, cfg.layers))}")
    if cfg.split != "dev":
        parts.append(f"--split {cfg.split}")
    dtype = str(cfg.dtype).removeprefix("torch.")
    if dtype != p.defaults.get("dtype", "bfloat16"):
        parts.append(f"--dtype {dtype}")
    if cfg.n_texts_per_lang != -1:
        parts.append(f"--n-texts-per-lang {cfg.n_texts_per_lang}")
    if cfg.seed != 0:
        parts.append(f"--seed {cfg.seed}")
    return f"python {script} " + " ".join([*parts, *extra])


NU_DEFAULTS = {"top_k": 5, "control_pool": 64, "weighting": "token"}  # compute_nu_scores.py's own flags


def nu_command(
    cfg: RunConfig, layers: Sequence[int] | None = None, top_k: int = 1, made: dict | None = None
) -> str:
    """The command that (re)makes nu results for this run: its common settings, the nu stage's own
    settings as `made` (the nu run's meta.json config) recorded them, else the stage's defaults, and at
    least `top_k` features per language saved (what the stage asking needs). Flags at their default
    are left out, so the command reproduces what was asked for rather than a narrower run."""
    made = made or {}
    extra = []
    if layers is not None:
        extra.append(f"--layers {','.join(map(str, layers))}")
    own = {key: made.get(key, default) for key, default in NU_DEFAULTS.items()}
    own["top_k"] = max(top_k, own["top_k"])
    extra += [f"--{key.replace('_', '-')} {own[key]}" for key in NU_DEFAULTS if own[key] != NU_DEFAULTS[key]]
    return stage_command(NU_SCRIPT, cfg, *extra)


NU_IDENTITY = ("model", "sae_release", "sae_id_template")  # content identities (RunConfig.key), never a path


def identity_mismatch(made: dict, cfg: RunConfig) -> str | None:
    """What differs between the model and SAE a nu run recorded (its meta.json config) and this run's,
    in words, or None. Compared by content identity, so a moved run folder or toy still matches."""
    want = cfg.describe()
    for key in NU_IDENTITY:
        if made.get(key) != want[key]:
            if key == "model":
                was = f"{made.get('model_id')!r} ({made.get('model') or 'no content identity'})"
                return f"model {was}, not {want['model_id']!r} ({want['model']})"
            return f"{key} {made.get(key)!r}, not {want[key]!r}"
    return None


def _current_marker(features_dir: Path, layer: int, nu_hash: str, remake: str) -> dict | None:
    """The layer's done marker when it was made with the nu run's config, else None; a marker that
    cannot be parsed is a CorruptArtifact naming it and `remake`."""
    done = layer_files(features_dir, layer)["done"]
    if not done.exists():
        return None
    marker = read_json(done, remake)
    return marker if marker.get("config_hash") == nu_hash else None


def load_nu_results(cfg: RunConfig, layers: Sequence[int] | None, top_k: int) -> NuResults:
    """Load and check the nu stage's output for these layers; refuse anything missing or stale.

    layers: None = every layer the nu stage computed. `cfg.languages` must all be among the
    nu run's languages, and the nu run must have used this model and SAE release.
    """
    fdir = Path(cfg.features_dir)
    meta_path = fdir / META_FILE
    if not meta_path.exists():
        raise UserError(f"no nu-score results in {fdir}; run `{nu_command(cfg, layers, top_k)}` first")
    meta = read_json(meta_path, nu_command(cfg, layers, top_k))
    made = meta.get("config", {})
    stale = identity_mismatch(made, cfg)
    if stale:
        raise UserError(
            f"nu results in {fdir} were made with {stale}; "
            f"run `{nu_command(cfg, layers, top_k, made)}` (or point --out-dir elsewhere)"
        )
    nu_langs = tuple(meta["languages"])
    missing = [lang for lang in cfg.languages if lang not in nu_langs]
    if missing:
        raise UserError(
            f"nu results in {fdir} cover {','.join(nu_langs)}, not {','.join(missing)}; "
            f"run `{nu_command(cfg, layers, top_k, made)}`"
        )
    computed = [int(L) for L in meta["layers"]]
    if layers is None:
        layers = computed
    absent = [L for L in layers if L not in computed]
    if not layers or absent:
        raise UserError(
            f"layer(s) {absent or 'any'} have no nu results in {fdir} (computed: {computed or 'none'}); "
            f"run `{nu_command(cfg, sorted(set(computed) | set(absent)) or None, top_k, made)}`"
        )
    top_k_saved = int(meta["top_k_saved"])
    if top_k < 1 or top_k > top_k_saved:
        raise UserError(
            f"--top-k {top_k} is out of range: the nu stage saved the top {top_k_saved} features per "
            f"language; use 1..{top_k_saved} or run `{nu_command(cfg, layers, top_k, made)}`"
        )
    loaded = {}
    for L in layers:
        path = layer_files(fdir, L)["directions"]
        remake = nu_command(cfg, layers, top_k_saved, made)
        marker = _current_marker(fdir, L, meta["config_hash"], remake)
        if not path.exists() or marker is None:
            raise UserError(f"nu results for layer {L} in {fdir} are missing or stale; run `{remake}`")
        d = read_torch(path, remake, marker.get("files", {}).get("directions"))  # checked against its record
        lf = LayerFeatures(
            layer=L,
            hook_in=d["hook_name"],
            hook_out=d.get("hook_name_out") or d["hook_name"],
            d_sae=int(d["d_sae"]),
            languages=tuple(d["languages"]),
            top_indices=d["top_indices"].long(),
            control_indices=d["control_indices"].long(),
            feature_indices=d["feature_indices"].long(),
            W_dec=d["W_dec"].float(),
            W_enc=d["W_enc"].float(),
            b_enc=d["b_enc"].float(),
            threshold=None if d.get("threshold") is None else d["threshold"].float(),
            input_bias=None if d.get("input_bias") is None else d["input_bias"].float(),
            topk=None if d.get("topk") is None else int(d["topk"]),
        )
        if lf.languages != nu_langs or lf.top_indices.shape[1] < top_k:
            remake = nu_command(cfg, layers, top_k_saved, made)
            raise UserError(f"{path} does not match {META_FILE} (languages or top-k); run `{remake}`")
        loaded[L] = lf
    return NuResults(meta, nu_langs, loaded, top_k_saved)
