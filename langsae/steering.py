"""Steering building blocks (the paper's Section 6): steering vectors and the steering edit.

Steering vector at layer L from source language s to target t: the mean residual stream (the
output of block L) over t's selection tokens minus the same over s's, token-weighted, with
position 0 and padding left out as in nu (`Batch.statistic_mask`). One vector per layer and
ordered language pair, saved under sae_features/<run>/steering/ (`save_vectors`).

The edit adds alpha * v to the output of block L, inside any forward (a full pass, a prefill or a
KV-cached decode step of one token), through `forward.edit_output`:
  sv      at every position;
  gated   only where any of the source language's top-k features is active, read at the SAE's own
          read point (the MLP input for a transcoder; the block output itself for a residual SAE)
          from the nu stage's saved encoder rows, or through the full SAE's own encode where one is
          given (a TopK SAE needs it: "active" there means among the top k and > 0).
Multi-layer variants steer layers L..L+n-1 (each with its own layer's vector). Their gate is decided
once, at layer L, from the unsteered state, and reused at L+1..L+n-1. This fixes the self-switching
gate: a gate re-read at each layer sees the state already steered at the layers below, and steering
towards the target language switches off the very source-language features that open the gate, so
the later layers stop steering. At layer L the read point precedes every edit of the forward
(the MLP input of layer L comes before the block's output; a residual SAE's gate reads the block
output before alpha * v is added), so the gate there is computed from the unsteered state of the
current tokens. (In a decode step, earlier positions enter only through attention at layer L,
whose keys and values come from the unsteered input of layer L.)

Every condition's settings are per batch row (alpha [R], vectors [R, n, d], gate features per row),
so that conditions can be stacked along the batch of one forward.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from langsae.artifacts import read_torch, save_json, save_torch
from langsae.data import Texts
from langsae.errors import CorruptArtifact, UserError
from langsae.features import FeatureEncoder, LayerFeatures
from langsae.forward import Batch, collect_tokens, edit_output, make_batches, tokenize
from langsae.model import HookPoint, layer_device

log = logging.getLogger(__name__)
METHODS = ("sv", "gated")
# Where the vectors are saved: sae_features/<run>/STEERING_DIR/ holds each layer's VECTORS_FILE and the
# settings that made them (VECTOR_SETTINGS_FILE); the stage keeps its per-unit records in the same folder.
STEERING_DIR, VECTORS_FILE, VECTOR_SETTINGS_FILE = "steering", "layer_{layer}_vectors.pt", "settings.json"


def residual_point(layer: int) -> HookPoint:
    """Where steering vectors are measured and added: the residual stream after block `layer`."""
    return HookPoint(layer, "block", "output")


# ----------------------------------------------------------------------------- vectors


@dataclass(frozen=True)
class SteeringVectors:
    """One layer's per-language mean residuals and the vectors between them.

    mean: [K, d] fp32 mean residual of each language (rows follow `languages`); n_tokens: [K] tokens
    averaged. vector(s, t) = mean[t] - mean[s].
    """

    layer: int
    languages: tuple[str, ...]
    mean: torch.Tensor
    n_tokens: torch.Tensor

    def vector(self, source: str, target: str) -> torch.Tensor:
        """[d] fp32: target's mean residual minus source's."""
        for lang in (source, target):
            if lang not in self.languages:
                raise UserError(
                    f"no steering vectors for {lang} at layer {self.layer} (have {', '.join(self.languages)})"
                )
        return self.mean[self.languages.index(target)] - self.mean[self.languages.index(source)]

    def pairs(self) -> dict[tuple[str, str], torch.Tensor]:
        """Every ordered pair (source, target), source != target -> its vector [d]."""
        return {(s, t): self.vector(s, t) for s in self.languages for t in self.languages if s != t}


@torch.no_grad()
def mean_residuals(
    model, tokenizer, texts: Texts, layers: Sequence[int], batch_size: int
) -> dict[int, SteeringVectors]:
    """Each language's token-weighted mean residual at each layer over its texts (padding and position 0 out).

    One pass per language through the shared engine (`forward.collect_tokens`, which stops after the
    deepest layer asked for); only one language's tokens are held at a time.
    """
    points = {str(L): residual_point(L) for L in layers}
    sums = {L: [] for L in layers}
    counts = []
    for lang in texts.languages:
        batches = make_batches(
            tokenize(tokenizer, texts.by_language[lang]), batch_size, tokenizer.pad_token_id
        )
        acts, _ = collect_tokens(
            model, batches, points, Batch.statistic_mask, f"forward ({lang} selection texts)"
        )
        n = next(iter(acts.values())).shape[0]
        if n == 0:
            raise UserError(f"{lang} has no tokens past position 0 to average")
        counts.append(n)
        for L in layers:
            sums[L].append(acts[str(L)].float().sum(0))
    n_tokens = torch.tensor(counts)
    return {
        L: SteeringVectors(
            L, tuple(texts.languages), torch.stack(sums[L]) / n_tokens[:, None].float(), n_tokens
        )
        for L in layers
    }


def vectors_path(steering_dir: Path, layer: int) -> Path:
    return Path(steering_dir) / VECTORS_FILE.format(layer=layer)


def save_vectors(steering_dir: Path, sv: SteeringVectors, config_hash: str, settings: dict) -> None:
    """layer_L_vectors.pt: {layer, languages, mean [K, d], n_tokens [K], pairs [(source, target)],
    vectors [P, d] (pairs' vectors, target mean - source mean), config_hash}; and the settings
    that made it in steering/settings.json."""
    pairs = sv.pairs()
    save_torch(
        {
            "layer": sv.layer,
            "languages": list(sv.languages),
            "mean": sv.mean,
            "n_tokens": sv.n_tokens,
            "pairs": [list(p) for p in pairs],
            "vectors": torch.stack(list(pairs.values())),
            "config_hash": config_hash,
        },
        vectors_path(steering_dir, sv.layer),
    )
    save_json({"config_hash": config_hash, "settings": settings}, Path(steering_dir) / VECTOR_SETTINGS_FILE)


def load_vectors(steering_dir: Path, layer: int, config_hash: str) -> SteeringVectors | None:
    """The saved vectors of one layer if they were made with `config_hash`, else None; also None (they are
    computed again, with a warning) when the file cannot be read whole, e.g. torn by a disk fault."""
    path = vectors_path(steering_dir, layer)
    if not path.exists():
        return None
    try:
        d = read_torch(path, "steer_language.py")
    except CorruptArtifact as e:
        log.warning("%s is %s: its steering vectors are computed again", path, e.state)
        return None
    if d.get("config_hash") != config_hash:
        return None
    return SteeringVectors(int(d["layer"]), tuple(d["languages"]), d["mean"], d["n_tokens"])


def steering_vectors(
    model,
    tokenizer,
    texts: Texts,
    layers: Sequence[int],
    steering_dir: Path,
    config_hash: str,
    settings: dict,
    batch_size: int,
    force: bool = False,
) -> tuple[dict[int, SteeringVectors], list[int]]:
    """Each layer's vectors, from steering_dir where made with `config_hash`, else computed and saved.
    Returns (vectors by layer, the layers computed now)."""
    have = (
        {}
        if force
        else {L: v for L in layers if (v := load_vectors(steering_dir, L, config_hash)) is not None}
    )
    todo = [L for L in layers if L not in have]
    if todo:
        for L, sv in mean_residuals(model, tokenizer, texts, todo, batch_size).items():
            save_vectors(steering_dir, sv, config_hash, settings)
            have[L] = sv
    return have, todo


def random_direction_like(v: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random direction with the norm of v (the random-direction control): [d]."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(v.shape[-1], generator=g, dtype=torch.float64)
    return (r / r.norm() * v.double().norm()).to(v.dtype)


# ----------------------------------------------------------------------------- the edit


@dataclass(frozen=True)
class Gate:
    """Which positions a gated steering edit touches, per batch row.

    encoder: the union of every row's gate features at the first steered layer, read at its SAE's
    read point; rows: [R, k] bool, rows[r, j] = feature j of the encoder gates row r (row r's source
    language's top-k, or random live features for the control). A position is open when any of its
    row's features is active (> 0).
    """

    encoder: FeatureEncoder
    rows: torch.Tensor

    def open(self, x: torch.Tensor) -> torch.Tensor:
        """x [R, T, d_in] at `encoder.read` -> [R, T] bool."""
        return ((self.encoder(x) > 0) & self.rows[:, None, :]).any(-1)


def make_gate(
    lf: LayerFeatures,
    features_per_row: Sequence[Sequence[int]],
    device: str | torch.device = "cpu",
    sae=None,
) -> Gate:
    """A gate whose row r opens where any of features_per_row[r] (SAE feature ids of layer lf.layer) is
    active. `sae`: the layer's full SAE, read through its own encode (required for a TopK SAE, see
    `LayerFeatures.encoder`); None: the saved encoder rows."""
    union = sorted({int(f) for fs in features_per_row for f in fs})
    if not union:
        raise UserError("a gated steering edit needs at least one gate feature")
    col = {f: j for j, f in enumerate(union)}
    rows = torch.zeros(len(features_per_row), len(union), dtype=torch.bool)
    for r, fs in enumerate(features_per_row):
        rows[r, [col[int(f)] for f in fs]] = True
    return Gate(lf.encoder(union, device, sae), rows.to(device))


@dataclass(frozen=True)
class Steering:
    """Add alpha[r] * vectors[r, i] to row r of block (first_layer + i)'s output, i < n_layers, at the
    positions `gate` opens (decided at first_layer; every position when gate is None: `sv`).

    vectors: [R, n_layers, d] (R = 1 broadcasts over the batch); alpha: [R] (or [1]). Rows are batch rows,
    so stacked conditions each get their own alpha, vectors and gate features.
    """

    first_layer: int
    vectors: torch.Tensor
    alpha: torch.Tensor
    gate: Gate | None = None

    @property
    def layers(self) -> list[int]:
        return list(range(self.first_layer, self.first_layer + self.vectors.shape[1]))

    def delta(self, i: int, dtype: torch.dtype) -> torch.Tensor:
        """[R, 1, d]: what layer first_layer + i adds, before gating."""
        return (self.alpha.float()[:, None, None] * self.vectors[:, i : i + 1].float()).to(dtype)


def _check(s: Steering) -> None:
    if s.vectors.dim() != 3 or s.alpha.dim() != 1:
        raise ValueError(
            "vectors must be [R, n_layers, d] and alpha [R]; got "
            f"{tuple(s.vectors.shape)}, {tuple(s.alpha.shape)}"
        )
    if s.gate is not None and s.gate.encoder.read.layer != s.first_layer:
        raise ValueError(
            f"the gate reads layer {s.gate.encoder.read.layer}; it must be decided at the first steered "
            f"layer {s.first_layer}"
        )


def _on_layer(s: Steering, i: int, device: torch.device) -> Steering:
    """Layer first_layer + i's share of `s` on `device`: its vectors (as the only layer) and alpha, and the
    gate where it is decided (i == 0)."""
    gate = None
    if s.gate is not None and i == 0:
        gate = Gate(s.gate.encoder.to(device), s.gate.rows.to(device))
    return Steering(s.first_layer + i, s.vectors[:, i : i + 1].to(device), s.alpha.to(device), gate)


@contextmanager
def steer(model, s: Steering) -> Iterator[None]:
    """While active, every forward of `model` (full, prefill or one-token decode step) is steered by `s`.

    The gate is computed at the first layer of each forward from the unsteered state of that forward's
    tokens and reused at the later layers (see the module docstring).
    """
    _check(s)
    state: dict[str, torch.Tensor] = {}
    last = s.layers[-1]

    def edit(i: int, L: int):
        # once per install, each layer's share of `s` goes to where the layer runs (--device-map may spread
        # the steered layers over GPUs); only the per-forward gate follows the residual from layer to layer
        here = _on_layer(s, i, layer_device(model, L))

        def fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            if s.gate is None:
                return out + here.delta(0, out.dtype)
            if i == 0:
                state["open"] = here.gate.open(x)
            # popped at the last layer, so a forward that skipped the first layer cannot reuse a stale gate
            gate = state.pop("open") if L == last else state.get("open")
            if gate is None:
                raise RuntimeError(
                    f"layer {s.first_layer} must run before layer {L} in the same forward to decide the gate"
                )
            return out + here.delta(0, out.dtype) * gate[..., None].to(out.device, out.dtype)

        return fn

    with ExitStack() as stack:
        for i, L in enumerate(s.layers):
            hp = residual_point(L)
            read = s.gate.encoder.read if (s.gate is not None and i == 0) else hp
            stack.enter_context(edit_output(model, hp, edit(i, L), read=read))
        yield


@contextmanager
def stacked_steering(model, conditions: Sequence[Steering | None], rows_each: int) -> Iterator[None]:
    """While active, rows [c*B, (c+1)*B) of every forward are steered by conditions[c] (B = rows_each;
    None: unsteered): the `stack` of `langsae.generate`'s engine for steering conditions.

    Each condition is a one-row Steering (vectors [1, n, d], alpha [1], gate rows [1, k]). Conditions that
    share first layer, layer count and gate encoder (or have no gate) become one Steering over the whole
    batch, with alpha = 0 on the other rows; since no computation mixes batch rows and out + 0 * v == out
    exactly, each row sees only its own condition. Building every gated condition of a layer from one
    `make_gate` call (one encoder, a gate row each) keeps this at one hook per layer.
    """
    groups: dict[tuple, list[int]] = {}
    for c, s in enumerate(conditions):
        if s is not None:
            if (
                s.vectors.shape[0] != 1
                or s.alpha.shape[0] != 1
                or (s.gate is not None and s.gate.rows.shape[0] != 1)
            ):
                raise ValueError("stacked_steering takes one-row conditions")
            key = (s.first_layer, s.vectors.shape[1], None if s.gate is None else id(s.gate.encoder))
            groups.setdefault(key, []).append(c)
    R = len(conditions) * rows_each
    with ExitStack() as stack:
        for members in groups.values():
            first = conditions[members[0]]
            vectors = torch.zeros(
                (R, *first.vectors.shape[1:]), dtype=first.vectors.dtype, device=first.vectors.device
            )
            alpha = torch.zeros(R, dtype=first.alpha.dtype, device=first.alpha.device)
            rows = (
                None
                if first.gate is None
                else torch.zeros(
                    (R, first.gate.rows.shape[1]), dtype=torch.bool, device=first.gate.rows.device
                )
            )
            for c in members:
                block = slice(c * rows_each, (c + 1) * rows_each)
                vectors[block], alpha[block] = conditions[c].vectors, conditions[c].alpha
                if rows is not None:
                    rows[block] = conditions[c].gate.rows
            gate = None if first.gate is None else Gate(first.gate.encoder, rows)
            stack.enter_context(steer(model, Steering(first.first_layer, vectors, alpha, gate)))
        yield
