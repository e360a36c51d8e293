"""The memory plan (langsae.memory): each part against hand arithmetic, the refusal as one line through a
stage's main (exit 2, before any model loads), and the estimate recorded in the stage's meta."""

import json

import pytest
import torch
from conftest import TINY
from helpers import N_TEXTS, run_nu
from transformers import Qwen3Config, Qwen3MoeConfig

from langsae import memory
from langsae.forward import LOGIT_CHUNK_ELEMENTS, MAX_TOKENS
from langsae.nu import ENCODE_CHUNK_ELEMENTS

GIB = 2**30
# Qwen3-0.6B's published config (config.json on the hub)
QWEN3_06B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
)


def qwen3_params(V, d, inter, L, heads, kv, hd, tied=True):
    """Qwen3 by hand: embeddings (+ head if untied); per layer q, k, v, o, q/k RMSNorm (head_dim each),
    gate/up/down, two RMSNorms; the final RMSNorm."""
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 2 * hd + 3 * d * inter + 2 * d
    return V * d * (1 if tied else 2) + L * per_layer + d


def test_qwen3_06b_parameters_are_its_known_596m():
    c = QWEN3_06B
    by_hand = qwen3_params(151936, 1024, 3072, 28, 16, 8, 128)
    assert by_hand == 596_049_920  # Qwen3-0.6B: 0.6B in all, 0.44B without the embeddings
    assert memory.parameter_count(Qwen3Config(**c)) == by_hand
    untied = memory.parameter_count(Qwen3Config(**{**c, "tie_word_embeddings": False}))
    assert untied == by_hand + 151936 * 1024
    # the fallback formula leaves out the norms: 28 x (q/k norms 2 x 128 + 2 x 1024) + 1024, 0.01 %
    assert memory.dense_parameter_count(Qwen3Config(**c)) == by_hand - 28 * (2 * 128 + 2 * 1024) - 1024


def test_moe_parameters_count_every_expert():
    d, L, E, moe_inter, V, heads, kv, hd = 16, 2, 4, 8, 50, 2, 1, 8
    cfg = Qwen3MoeConfig(
        vocab_size=V,
        hidden_size=d,
        num_hidden_layers=L,
        num_experts=E,
        moe_intermediate_size=moe_inter,
        num_experts_per_tok=2,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hd,
        tie_word_embeddings=False,
    )
    attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 2 * hd
    experts = E * 3 * d * moe_inter + E * d  # gate/up/down per expert and the router
    by_hand = 2 * V * d + L * (attention + experts + 2 * d) + d
    assert memory.parameter_count(cfg) == by_hand
    assert memory.dense_parameter_count(cfg) == by_hand - L * (2 * hd + 2 * d) - d  # no norms


def test_parts_by_hand_for_a_tiny_config():
    cfg = Qwen3Config(
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=4,
        tie_word_embeddings=True,
    )
    sae = {"d_in": 8, "d_sae": 32}
    sizes = memory.Sizes(rows=3, tokens=5, n_saes=2, kv_cache=True)
    parts, host = memory.estimate(cfg, sae, torch.bfloat16, sizes)
    n = 100 * 8 + 2 * (8 * 8 + 2 * 8 * 4 + 8 * 8 + 2 * 4 + 3 * 8 * 16 + 2 * 8) + 8
    assert parts == {
        "model": n * 2,
        "sae": 2 * (8 * 32 + 32 * 8 + 2 * 32 + 8) * 2,
        "activations": 3 * 5 * 2 * (8 + 16) * 2,
        "kv_cache": 2 * 2 * 1 * 4 * 5 * 3 * 2,
        "logits": 2 * 3 * 5 * 100 * 4,  # far below the chunk: every logit at once
        "fp32_head": 100 * 8 * 4,
        "encode": 0,
    }
    assert host == {}
    fp32, _ = memory.estimate(cfg, None, torch.float32, memory.Sizes(rows=3, tokens=5, logits=False))
    assert (
        fp32["model"] == n * 4 and fp32["sae"] == fp32["logits"] == fp32["fp32_head"] == fp32["kv_cache"] == 0
    )


def test_parts_by_hand_at_qwen3_06b_shape():
    """The downstream engine's defaults (64 rows of a 1,024-token prompt and 32 new tokens) in bf16 with a
    mwhanna transcoder (d_sae 163,840)."""
    sae = {"d_in": 1024, "d_sae": 163840, "d_out": 1024}
    sizes = memory.Sizes(rows=64, tokens=1056, kv_cache=True)
    parts, _ = memory.estimate(Qwen3Config(**QWEN3_06B), sae, torch.bfloat16, sizes)
    assert parts["model"] == 596_049_920 * 2  # 1.11 GiB
    assert parts["sae"] == (2 * 1024 * 163840 + 2 * 163840 + 1024) * 2  # 0.63 GiB
    assert parts["kv_cache"] == 2 * 28 * 8 * 128 * 1056 * 64 * 2  # 7.2 GiB
    assert parts["activations"] == 64 * 1056 * 2 * (1024 + 3072) * 2
    assert parts["logits"] == 2 * LOGIT_CHUNK_ELEMENTS * 4  # chunked: 0.5 GiB whatever the batch
    assert parts["fp32_head"] == 151936 * 1024 * 4  # 0.58 GiB
    assert parts["encode"] == 0 and len(parts) == 7  # 11.07 GiB in all: it fits one 24 GiB GPU, not one 8 GiB


def test_nu_cache_is_its_flag_bounded_by_one_and_every_layer():
    cfg = Qwen3Config(**QWEN3_06B)
    one_layer = 1000 * MAX_TOKENS * 1024 * 2  # 1,000 texts of up to 512 tokens: 1 GiB per layer

    def cache(gb, layers, texts=1000):
        s = memory.Sizes(rows=8, tokens=MAX_TOKENS, cache_gb=gb, cache_texts=texts, cache_layers=layers)
        return memory.estimate(cfg, None, torch.bfloat16, s)[1]["cache"]

    assert cache(8.0, 28) == 8 * GIB  # the flag
    assert cache(8.0, 4) == 4 * one_layer  # every layer fits under it
    assert cache(0.25, 28) == one_layer  # a pass holds at least one layer
    assert cache(8.0, 28, texts=None) == 8 * GIB  # texts not known: the flag
    s = memory.Sizes(rows=8, tokens=MAX_TOKENS, encode=True, cache_texts=1000)
    parts, _ = memory.estimate(cfg, {"d_in": 1024, "d_sae": 163840}, torch.bfloat16, s)
    assert parts["encode"] == 2 * ENCODE_CHUNK_ELEMENTS * 4


def test_refusal_names_both_pools_numbers_and_what_to_change(monkeypatch):
    p = memory.MemoryPlan(
        "nu", "cuda:0", {"model": 3 * GIB, "sae": GIB}, {"cache": 8 * GIB}, 2 * GIB, 4 * GIB, ("--cache-gb",)
    )
    with pytest.raises(memory.UserError) as e:
        p.check()
    msg = str(e.value)
    assert "\n" not in msg
    assert "cuda:0 needs 4.00 GiB (model 3.00, sae 1.00), 2.00 GiB free" in msg
    assert "host memory needs 8.00 GiB (cache 8.00), 4.00 GiB available" in msg
    assert "--cache-gb / more GPUs / --device-map auto" in msg
    fits = memory.MemoryPlan("nu", "cuda:0", {"model": GIB}, {"cache": GIB}, 2 * GIB, 2 * GIB)
    assert fits.check() is fits
    cpu = memory.MemoryPlan(
        "nu", "cpu", {"model": GIB}, {"cache": GIB}, int(1.5 * GIB), None, ("--cache-gb",)
    )
    with pytest.raises(
        memory.UserError, match=r"cpu needs 2.00 GiB \(model 1.00, cache 1.00\), 1.50 GiB free"
    ):
        cpu.check()  # one pool on a CPU: the host's parts count against the same RAM
    assert "more GPUs" not in cpu.advice(True)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    assert cpu.check() is cpu


def test_stage_refuses_before_loading_and_records_its_plan(tiny_args, tmp_path, monkeypatch, capsys):
    """Through the nu stage's main: too little memory is one line, exit 2, before the model loads;
    enough, and its meta holds the estimate, whose parts match the tiny model's numbers by hand."""
    from langsae.stages import nu as stage

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the memory plan refused")

    monkeypatch.setattr(memory, "host_available", lambda: 2**20)
    monkeypatch.setattr(stage, "load_model", no_load)
    out = tmp_path / "out"
    assert run_nu(tiny_args, out, "--batch-size", "4", "--cache-gb", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: memory plan for nu: cpu needs ") and "0.00 GiB free" in err
    assert "lower --cache-gb / --batch-size" in err and "more GPUs" not in err
    monkeypatch.undo()

    assert run_nu(tiny_args, out, "--batch-size", "4", "--cache-gb", "1") == 0
    rec = json.loads((out / "meta.json").read_text())["memory_plan"]
    vocab = json.loads((tiny_args_model_dir(tiny_args) / "config.json").read_text())["vocab_size"]
    d, inter, L, h, kv, hd, d_sae = (
        TINY[k] for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "d_sae")
    )
    n_texts = N_TEXTS * len(json.loads((out / "meta.json").read_text())["languages"])
    by_hand = {
        "model": qwen3_params(vocab, d, inter, L, h, kv, hd) * 4,
        "sae": 2 * (2 * d * d_sae + 2 * d_sae + d) * 4,  # two transcoders in fp32
        "activations": 4 * MAX_TOKENS * 2 * (d + inter) * 4,
        "encode": 2 * min(ENCODE_CHUNK_ELEMENTS, n_texts * MAX_TOKENS * d_sae) * 4,
    }
    for part, n in by_hand.items():
        assert rec["parts_gib"][part] == pytest.approx(n / GIB, rel=1e-3), part
    assert rec["parts_gib"]["logits"] == rec["parts_gib"]["kv_cache"] == 0  # nu stops before the head
    one_layer = n_texts * MAX_TOKENS * d * 4  # every layer's inputs fit in 1 GiB
    assert rec["host_parts_gib"]["cache"] == pytest.approx(L * one_layer / GIB, rel=1e-3)
    assert rec["host_gib"] == 0 and rec["device_gib"] == pytest.approx(
        (sum(by_hand.values()) + L * one_layer) / GIB, rel=1e-3
    )


def tiny_args_model_dir(args):
    from pathlib import Path

    return Path(args[args.index("--model-id") + 1])


def test_host_memory_is_shared_by_the_ranks_of_a_node(monkeypatch, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
    )
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    assert memory.host_available() == 8_000_000 * 1024
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four ranks on this node
    assert memory.host_available() == 2_000_000 * 1024
    assert memory.device_available("cpu") == 2_000_000 * 1024
