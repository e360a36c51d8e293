"""A tiny TopK SAE in the Qwen-Scope file layout, for the tiny Qwen3 of conftest.

Qwen Scope's repos (`Qwen/SAE-Res-{model}-W{N}K-L0_{k}`) hold one `layer{L}.sae.pt` per layer: a dict
of W_enc [d_sae, d_in], W_dec [d_in, d_sae], b_enc [d_sae], b_dec [d_in]. sae-lens's own `qwen_scope`
converter reads d_sae and k from the repo name and d_in from its table of base models
(QWEN_SCOPE_MODEL_INFO), and reads and writes `blocks.L.hook_resid_post`. This module writes such a
repo into the tests' temporary HF cache and registers it the way sae-lens knows the real ones: an entry
in that table for the tiny base model and a release in sae-lens's directory (conversion_func
qwen_scope). So `SAE.from_pretrained(TINY_QWEN_SCOPE, "layer1")` runs the real converter and TopKSAE.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

K = 8  # top-k of the tiny SAE: far below d_sae and below the number of positive pre-activations
WIDTH_K = 1  # d_sae = 1024 (the repo name gives the width in units of 1024)
TINY_BASE = "Qwen3-Tiny-Base"
TINY_QWEN_SCOPE = "tiny-qwen-scope-w1k-l8"  # release name, as sae-lens's directory lists the real ones
TINY_QWEN_SCOPE_REPO = f"test-org/SAE-Res-{TINY_BASE}-W{WIDTH_K}K-L0_{K}"


def qwen_scope_weights(d_in: int, d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in Qwen Scope's own orientation. The positive encoder bias leaves many more than k
    pre-activations positive at a position, so TopK (not the ReLU) decides which features are active."""
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.rand(d_sae, generator=g),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }


def register_release(n_layers: int, d_in: int) -> None:
    """Make sae-lens know the tiny base model and the tiny release (both tables are process-wide)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup, get_pretrained_saes_directory

    loaders.QWEN_SCOPE_MODEL_INFO[TINY_BASE] = (f"test-org/{TINY_BASE}", d_in)
    ids = {f"layer{L}": f"layer{L}.sae.pt" for L in range(n_layers)}
    get_pretrained_saes_directory()[TINY_QWEN_SCOPE] = PretrainedSAELookup(
        release=TINY_QWEN_SCOPE,
        repo_id=TINY_QWEN_SCOPE_REPO,
        model=f"test-org/{TINY_BASE}",
        conversion_func="qwen_scope",
        saes_map=ids,
        expected_var_explained={i: 1.0 for i in ids},
        expected_l0={i: float(K) for i in ids},
        neuronpedia_id={i: None for i in ids},
        norm_scaling_factor={},
        config_overrides=None,
    )


def unregister_release() -> None:
    """Undo `register_release`, so that tests reading sae-lens's registry (the presets') never see it."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    loaders.QWEN_SCOPE_MODEL_INFO.pop(TINY_BASE, None)
    get_pretrained_saes_directory().pop(TINY_QWEN_SCOPE, None)


def write_qwen_scope_release(hub_cache: Path, n_layers: int, d_in: int, seed: int = 500) -> dict:
    """Write `layer{L}.sae.pt` for every layer into the HF cache as TINY_QWEN_SCOPE_REPO and register
    the release; returns the raw weights by layer (Qwen Scope's orientation)."""
    repo = Path(hub_cache) / f"models--{TINY_QWEN_SCOPE_REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    layers = {}
    for L in range(n_layers):
        layers[L] = qwen_scope_weights(d_in, WIDTH_K * 1024, seed + L)
        torch.save(layers[L], snapshot / f"layer{L}.sae.pt")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    register_release(n_layers, d_in)
    return layers


def tiny_qwen_scope_for(model_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The tiny TopK SAEs for every layer of a tiny Qwen3 (conftest's tiny_model_dir), written into the
    tests' HF cache as the release TINY_QWEN_SCOPE. A test module wraps it in its own fixture, calling
    `unregister_release` at its end."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    hub = Path(os.environ["HF_HOME"]) / "hub"  # conftest's temporary cache
    return write_qwen_scope_release(hub, cfg.num_hidden_layers, cfg.hidden_size)


def qwen_scope_args(model_dir: Path, *layers: int) -> list[str]:
    """Flags for a custom run of the tiny model with the tiny Qwen Scope release."""
    return [
        "--model",
        "custom",
        "--model-id",
        str(model_dir),
        "--sae-release",
        TINY_QWEN_SCOPE,
        "--sae-id-template",
        "layer{layer}",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        *(["--layers", ",".join(map(str, layers))] if layers else []),
    ]
