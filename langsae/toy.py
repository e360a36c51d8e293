"""The offline model organism: a small Qwen3 trained here, with transcoders in the mwhanna layout.

The pieces that write Hugging Face file layouts are also what the tests use to build
their tiny fixtures, so toy runs, test runs and real runs share one loading path.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import yaml

from langsae.config import TOY_ROOT

log = logging.getLogger(__name__)

PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer like Qwen3's: no BOS, pad <|endoftext|>, eos <|im_end|>.

    Returns a `transformers.PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN)


def hub_repo_dir(hub_cache: Path, repo_id: str) -> Path:
    return Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"


def write_mwhanna_release(
    hub_cache: Path,
    repo_id: str,
    layers: dict[int, dict[str, torch.Tensor]],
    model_name: str,
    context_size: int = 1024,
) -> Path:
    """Write transcoders as the mwhanna release lays them out, inside a Hugging Face cache.

    `layers[L]` holds W_enc [d_sae, d_in] (as stored on the hub; sae-lens transposes it),
    W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out]. Returns the snapshot folder.
    sae-lens's `mwhanna_transcoder` loader then reads it with HF_HUB_OFFLINE=1.
    """
    from safetensors.torch import save_file

    d_sae, d_model = next(iter(layers.values()))["W_enc"].shape
    digest = hashlib.sha1(repr(sorted(layers)).encode() + repo_id.encode())
    for L in sorted(layers):
        digest.update(layers[L]["W_dec"].float().numpy().tobytes()[:4096])
    sha = digest.hexdigest()
    repo = hub_repo_dir(hub_cache, repo_id)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    wandb = {"d_model": {"value": int(d_model)}, "d_feature": {"value": int(d_sae)}, "batch_size": {"value": context_size}}
    (snap / "wandb-config.yaml").write_text(yaml.safe_dump(wandb))
    (snap / "config.yaml").write_text(yaml.safe_dump({"model_name": model_name}))
    for L, tensors in layers.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(snap / f"layer_{L}.safetensors"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snap


def ensure_built() -> None:
    """Build the toy model and transcoders under toy_model/ unless a matching build exists."""
    raise NotImplementedError("the toy build is not written yet")
