"""Activation statistics and nu-scores.

For layer L, feature f and language l among K languages:
    mu_l(f) = mean activation of f over l's selection tokens (padding and position 0 excluded)
    nu_l(f) = mu_l(f) - mean_{l' != l} mu_l'(f)
Features are ranked by nu, descending, per language.

The model runs once over the selection texts and the SAE inputs of the statistic tokens
are cached ([n_tokens, d_in] per layer, small next to the [n_tokens, d_sae] feature
activations, which are never held whole). Each layer's SAE is then loaded once and the
cached inputs stream through it in chunks, adding into per-language sums; the stage reads
the next layer's SAE on a background thread meanwhile (langsae.prefetch).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from langsae.artifacts import package_versions, read_json, read_torch, save_json, save_torch, verify_file
from langsae.data import Texts
from langsae.errors import CorruptArtifact
from langsae.forward import Batch, collect_tokens, make_batches, tokenize
from langsae.model import HookPoint
from langsae.provenance import data_record

log = logging.getLogger(__name__)

ENCODE_CHUNK_ELEMENTS = 2**27  # tokens per encode chunk = this / d_sae (~0.5 GB of fp32 activations)


def position_0_rule(tokenizer) -> str:
    """What position 0, left out of every activation statistic, is for this tokenizer, for the metadata.

    Asked of the tokenizer itself (does tokenising a text, as `forward.tokenize` does, put BOS
    first?) rather than of the preset name, so a custom model gets the right sentence too.
    """
    bos = tokenizer.bos_token_id
    if bos is not None and tokenize(tokenizer, ["a"])[0][:1] == [bos]:
        return "excluded (position 0 is the BOS token the tokenizer adds to every text)"
    return (
        "excluded (the tokenizer adds no BOS: position 0 is each text's first real token, "
        "which acts as the attention sink)"
    )


# ----------------------------------------------------------------------------- SAE inputs


@dataclass
class SaeInputs:
    """The SAE inputs of every statistic token (not padding, not position 0), for several layers.

    by_layer[L]: [n_tokens, d_in] in the model's dtype, on the CPU.
    token_lang, token_text: [n_tokens] language index and text index of each token.
    """

    by_layer: dict[int, torch.Tensor]
    token_lang: torch.Tensor
    token_text: torch.Tensor


def count_statistic_tokens(token_ids: list[list[int]]) -> int:
    return sum(max(len(t) - 1, 0) for t in token_ids)


@torch.no_grad()
def collect_sae_inputs(
    model,
    token_ids: list[list[int]],
    lang_ids: list[int],
    points: dict[int, HookPoint],
    batch_size: int,
    pad_id: int,
) -> SaeInputs:
    """One forward pass over the texts, keeping the statistic tokens' activations at each layer's SAE
    read point."""
    batches = make_batches(token_ids, batch_size, pad_id)
    acts, token_text = collect_tokens(
        model,
        batches,
        {str(L): hp for L, hp in points.items()},
        Batch.statistic_mask,
        "forward (selection texts)",
    )
    return SaeInputs({L: acts[str(L)] for L in points}, torch.tensor(lang_ids)[token_text], token_text)


def token_weights(
    token_lang: torch.Tensor, token_text: torch.Tensor, n_langs: int, weighting: str
) -> torch.Tensor:
    """[n_tokens, K] weights such that weights.T @ activations gives per-language means.

    "token": every token of a language counts equally (the paper).
    "text": every text counts equally; a text's tokens share its weight.
    """
    n = token_lang.shape[0]
    w = torch.zeros(n, n_langs, dtype=torch.float32)
    if weighting == "token":
        per_lang = torch.bincount(token_lang, minlength=n_langs).float()
        w[torch.arange(n), token_lang] = 1.0 / per_lang[token_lang]
    elif weighting == "text":
        tokens_per_text = torch.bincount(token_text)
        lang_of_text = torch.zeros_like(tokens_per_text).scatter_(0, token_text, token_lang)
        texts_per_lang = torch.bincount(lang_of_text[tokens_per_text > 0], minlength=n_langs).float()
        w[torch.arange(n), token_lang] = 1.0 / (
            tokens_per_text[token_text].float() * texts_per_lang[token_lang]
        )
    else:
        raise ValueError(weighting)
    return w


@torch.no_grad()
def mean_activations(sae, inputs: torch.Tensor, weights: torch.Tensor, desc: str = "encode") -> torch.Tensor:
    """[K, d_sae] fp32: weights.T @ sae.encode(inputs), streamed in chunks of tokens.

    inputs: [n_tokens, d_in]; weights: [n_tokens, K] (see token_weights).
    """
    device = sae.W_enc.device
    d_sae = sae.cfg.d_sae
    chunk = max(16, ENCODE_CHUNK_ELEMENTS // d_sae)
    mu = torch.zeros(weights.shape[1], d_sae, dtype=torch.float32, device=device)
    # One fp32 buffer for every chunk: a fresh ~0.5 GB tensor per chunk costs page faults and
    # zeroing each time (as much as the cast itself on a CPU). Same values as .float(), same GEMM.
    acts32 = torch.empty(min(chunk, inputs.shape[0]), d_sae, dtype=torch.float32, device=device)
    for start in tqdm(range(0, inputs.shape[0], chunk), desc=desc, unit="chunk", leave=False):
        acts = sae.encode(inputs[start : start + chunk].to(device, sae.dtype))
        n = acts.shape[0]
        acts32[:n].copy_(acts)
        del acts
        mu += weights[start : start + chunk].to(device).T @ acts32[:n]
    return mu.cpu()


# ----------------------------------------------------------------------------- scores


def nu_scores(mu: torch.Tensor) -> torch.Tensor:
    """[K, d_sae]: each language's mean minus the mean of the other languages' means."""
    k = mu.shape[0]
    if k < 2:
        raise ValueError("nu-scores need at least two languages")
    return mu - (mu.sum(0, keepdim=True) - mu) / (k - 1)


def rank_features(nu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), each [K, d_sae], sorted by nu descending (stable, so ties keep index order)."""
    values, indices = torch.sort(nu, dim=1, descending=True, stable=True)
    return values, indices


def shared_top_k(indices: torch.Tensor, k: int) -> list[int]:
    """For each language, how many of its top-k features are also in another language's top-k."""
    tops = [set(row[:k].tolist()) for row in indices]
    return [len(t & set().union(*(o for j, o in enumerate(tops) if j != i))) for i, t in enumerate(tops)]


def exclusive_top1(indices: torch.Tensor, k: int = 5) -> list[bool]:
    """For each language, whether its top-1 feature is in no other language's top-k."""
    return [
        all(int(indices[i, 0]) not in indices[j, :k].tolist() for j in range(indices.shape[0]) if j != i)
        for i in range(indices.shape[0])
    ]


def control_pool(mu: torch.Tensor, exclude: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Up to `size` random live features (active somewhere in the selection data), none in `exclude`."""
    live = mu.sum(0) > 0
    live[exclude] = False
    candidates = torch.nonzero(live).flatten()
    g = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(len(candidates), generator=g)[:size]].sort().values


def feature_directions(
    sae, top_indices: torch.Tensor, controls: torch.Tensor, hook_name: str, hook_name_out: str
) -> dict:
    """The compact per-feature weights later stages ablate with, so they never reload a full SAE.

    top_indices: [K, k]; controls: [P]. Rows of W_dec/W_enc/b_enc follow `feature_indices`.
    """
    feats = torch.unique(torch.cat([top_indices.flatten(), controls]))  # sorted
    dev = sae.W_dec.device
    threshold = getattr(sae, "threshold", None)
    return {
        "hook_name": hook_name,
        "hook_name_out": hook_name_out,
        "d_sae": int(sae.cfg.d_sae),
        "top_indices": top_indices.clone(),
        "control_indices": controls.clone(),
        "feature_indices": feats,
        "W_dec": sae.W_dec[feats.to(dev)].float().cpu(),
        "W_enc": sae.W_enc[:, feats.to(dev)].T.float().cpu().contiguous(),
        "b_enc": sae.b_enc[feats.to(dev)].float().cpu(),
        "threshold": None if threshold is None else threshold[feats.to(dev)].float().cpu(),
        # subtracted from the input before encoding (sae-lens's apply_b_dec_to_input); None if not
        "input_bias": sae.b_dec.float().cpu() if getattr(sae.cfg, "apply_b_dec_to_input", False) else None,
        # a TopK SAE's k: its features' activations need every feature's pre-activation (features.TOPK_WHY)
        "topk": int(sae.cfg.k) if sae.cfg.architecture() == "topk" else None,
    }


@dataclass
class LayerScores:
    """One layer's results: `files` (indices, values, mean_acts, directions), the readable
    top-20 table, and a `summary` of top-5 overlap for the done marker and meta.json."""

    files: dict
    top20: dict
    summary: dict


def score_layer(
    sae,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    layer: int,
    languages: tuple[str, ...],
    top_k: int,
    pool_size: int,
    seed: int,
    hook_names: tuple[str, str],
    neuronpedia: str | None,
) -> LayerScores:
    """mu, nu and ranking of every feature of one SAE, plus what later stages need of it.

    inputs: [n_tokens, d_in] SAE inputs; weights: [n_tokens, K] from `token_weights`.
    """
    mu = mean_activations(sae, inputs, weights, desc=f"encode layer {layer}")
    values, indices = rank_features(nu_scores(mu))
    top = indices[:, :top_k]
    controls = control_pool(mu, top.flatten(), pool_size, seed)
    directions = {
        "layer": layer,
        "languages": list(languages),
        **feature_directions(sae, top, controls, *hook_names),
    }
    summary = {
        "d_sae": int(mu.shape[1]),
        "shared_top5": dict(zip(languages, shared_top_k(indices, 5))),
        "exclusive_top1": dict(zip(languages, exclusive_top1(indices, 5))),
    }
    files = {"indices": indices, "values": values, "mean_acts": mu, "directions": directions}
    return LayerScores(files, top_table(values, indices, mu, list(languages), 20, neuronpedia), summary)


# ----------------------------------------------------------------------------- artifacts


META_FILE = "meta.json"  # what made the run's nu-scores (write_meta); later stages check it first
LAYER_FILE = "layer_{layer}_{name}"  # each layer's files, one per name in LAYER_NAMES
LAYER_NAMES = ("indices.pt", "values.pt", "mean_acts.pt", "directions.pt", "top20.json", "done.json")


def layer_files(out_dir: Path, layer: int | str) -> dict[str, Path]:
    """A layer's files by key ("indices", ..., "done": its completion marker); layer "*" gives glob
    patterns."""
    return {n.split(".")[0]: Path(out_dir) / LAYER_FILE.format(layer=layer, name=n) for n in LAYER_NAMES}


OTHER_CONFIG = "made with another configuration"


def layer_problem(out_dir: Path, layer: int, config_hash: str) -> str | None:
    """Why the layer does not count as done, or None when it does: no done marker, another config, or a
    file missing or differing from the size and SHA-256 its done marker recorded (markers written
    before records were kept are checked for existence only). Hashing reads every file of the layer
    (tens of MB a layer for Qwen3, at about 1 GB/s): cheap next to recomputing it."""
    files = layer_files(out_dir, layer)
    if not files["done"].exists():
        return "not computed"
    try:
        done = read_json(files["done"], "compute_nu_scores.py")
        if done.get("config_hash") != config_hash:
            return OTHER_CONFIG
        for key, path in files.items():
            if key != "done":
                verify_file(path, done.get("files", {}).get(key), "compute_nu_scores.py")
    except CorruptArtifact as e:
        return f"{e.path.name} is {e.state}"
    return None


def layer_done(out_dir: Path, layer: int, config_hash: str) -> bool:
    """True when every file of the layer exists, is intact and was made with this config; a layer
    whose files fail verification is logged, with the reason, and counts as not done."""
    problem = layer_problem(out_dir, layer, config_hash)
    if problem not in (None, OTHER_CONFIG, "not computed"):
        log.warning("layer %d in %s does not count as done: %s", layer, out_dir, problem)
    return problem is None


def load_layer_file(out_dir: Path, layer: int, key: str, remake: str):
    """One of a layer's files (a key of layer_files), checked against the record in its done marker;
    a missing or corrupt file is a CorruptArtifact naming it and `remake`."""
    files = layer_files(out_dir, layer)
    record = read_json(files["done"], remake).get("files", {}).get(key)
    if files[key].suffix == ".json":
        verify_file(files[key], record, remake)
        return read_json(files[key], remake)
    return read_torch(files[key], remake, record)


def save_layer(out_dir: Path, layer: int, results: dict, top20: dict, done: dict) -> None:
    """Write a layer's files, each atomically; the done marker goes last, with each file's size and
    SHA-256, so a layer whose writing was interrupted or whose files were damaged later is
    recomputed on the next run."""
    files = layer_files(out_dir, layer)
    tensors = ("indices", "values", "mean_acts", "directions")
    records = {key: save_torch(results[key], files[key]) for key in tensors}
    records["top20"] = save_json(top20, files["top20"])
    save_json({**done, "files": records}, files["done"])


def top_table(
    values: torch.Tensor,
    indices: torch.Tensor,
    mu: torch.Tensor,
    languages: list[str],
    n: int,
    neuronpedia: str | None,
) -> dict:
    """Readable top-n per language: feature, nu, and mu in every language."""
    out = {}
    for i, lang in enumerate(languages):
        rows = []
        for r in range(min(n, indices.shape[1])):
            f = int(indices[i, r])
            row = {"rank": r + 1, "feature": f, "nu": float(values[i, r])}
            row["mu"] = {other: float(mu[j, f]) for j, other in enumerate(languages)}
            if neuronpedia:
                row["neuronpedia"] = f"{neuronpedia}/{f}"
            rows.append(row)
        out[lang] = rows
    return out


def finished_layers(out_dir: Path, config_hash: str) -> list[int]:
    """Layers whose files are complete and were made with this config."""
    markers = Path(out_dir).glob(layer_files(out_dir, "*")["done"].name)
    layers = [int(p.name.split("_")[1]) for p in markers]
    return sorted(L for L in layers if layer_done(out_dir, L, config_hash))


def write_meta(
    out_dir: Path,
    stage: str,
    settings: dict,
    config_hash: str,
    texts: Texts,
    n_model_layers: int | None = None,
    memory_plan: dict | None = None,
) -> dict:
    """META_FILE: what made this run's nu-scores; lists only the layers made with this config. Not
    stages.write_meta: its "config" is the run's describe(), while readers of this one
    (features.nu_command, identity_mismatch, the report's header) need the nu settings there.
    n_model_layers: the model's num_hidden_layers, so compare_runs.py finds depth without its config.
    memory_plan: the stage's memory estimate (memory.MemoryPlan.record)."""
    layers = finished_layers(out_dir, config_hash)
    done = {L: read_json(layer_files(out_dir, L)["done"], "compute_nu_scores.py") for L in layers}
    any_done = next(iter(done.values()), {})
    meta = {
        "stage": stage,
        "config": settings,
        "config_hash": config_hash,
        "languages": list(texts.languages),
        "layers": layers,
        "num_hidden_layers": n_model_layers,
        "model_id": settings["model_id"],
        "sae_release": settings["sae_release"],
        "sae_ids": {str(L): d["sae_id"] for L, d in done.items()},
        "d_sae": any_done.get("d_sae"),
        "top_k_saved": settings["top_k"],
        "dtype": settings["dtype"],
        "position_0": settings["position_0"],
        "weighting": settings["weighting"],
        "data_source": texts.source,
        "n_texts": {lang: len(t) for lang, t in texts.by_language.items()},
        "token_counts": any_done.get("token_counts"),
        "shared_top5": {str(L): d["shared_top5"] for L, d in done.items()},
        "exclusive_top1": {str(L): d["exclusive_top1"] for L, d in done.items()},
        "versions": package_versions(),
        "data": data_record(sets=(texts,)),
        "memory_plan": memory_plan,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_json(meta, Path(out_dir) / META_FILE)
    return meta
