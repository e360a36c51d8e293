"""Helpers for the ablation tests: nu-stage artifacts written directly from transcoder weights
(the files compute_nu_scores.py writes, without running it), and a tiny model loader."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from langsae.artifacts import save_json, save_torch
from langsae.nu import META_FILE as NU_META

FAKE_NU_HASH = "fakenuhash000000"


def write_fake_nu(
    features_dir: Path,
    config: dict,
    transcoders: dict[int, dict[str, torch.Tensor]],
    languages: list[str],
    top_k: int = 3,
    pool: int = 6,
    seed: int = 0,
    threshold: float | None = None,
) -> dict[int, dict]:
    """meta.json and, per layer, layer_L_directions.pt + layer_L_done.json, as the nu stage's contract says.

    Each language's top-k and the control pool are distinct random features. `config` is
    RunConfig.describe() of the run the files claim to come from. Returns the directions dicts.
    """
    features_dir = Path(features_dir)
    out = {}
    g = torch.Generator().manual_seed(seed)
    d_sae = next(iter(transcoders.values()))["W_enc"].shape[0]
    for L, w in transcoders.items():
        perm = torch.randperm(d_sae, generator=g)
        top = perm[: len(languages) * top_k].view(len(languages), top_k)
        controls = perm[len(languages) * top_k : len(languages) * top_k + pool].sort().values
        feats = torch.unique(torch.cat([top.flatten(), controls]))
        d = {
            "layer": L,
            "hook_name": f"blocks.{L}.mlp.hook_in",
            "hook_name_out": f"blocks.{L}.hook_mlp_out",
            "d_sae": d_sae,
            "languages": list(languages),
            "top_indices": top,
            "control_indices": controls,
            "feature_indices": feats,
            "W_dec": w["W_dec"][feats].float(),
            "W_enc": w["W_enc"][feats].float(),
            "b_enc": w["b_enc"][feats].float(),
            "threshold": None if threshold is None else torch.full((len(feats),), threshold),
        }
        save_torch(d, features_dir / f"layer_{L}_directions.pt")
        save_json(
            {"config_hash": FAKE_NU_HASH, "layer": L, "d_sae": d_sae}, features_dir / f"layer_{L}_done.json"
        )
        out[L] = d
    meta = {
        "config": config,
        "config_hash": FAKE_NU_HASH,
        "languages": list(languages),
        "layers": sorted(transcoders),
        "top_k_saved": top_k,
        "d_sae": d_sae,
    }
    save_json(meta, features_dir / NU_META)
    return out


def edit_meta(features_dir: Path, **changes) -> None:
    path = Path(features_dir) / NU_META
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def load_tiny(model_dir: Path):
    """The tiny fixture model (fp32, eval) and its right-padded tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, tok
