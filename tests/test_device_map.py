"""--device-map: a tiny Qwen3 sharded by accelerate (layers in memory, on disk, the LM head on disk) gives
exactly the unsharded run's ΔCE and greedy generation, through the engine the stages use (sweep.ablated_ce,
generate.greedy_generate). On CPU every shard computes in fp32 with the same kernels, so equality is exact:
a difference would mean an edit, the residual or the head went somewhere else, or ran twice."""

import numpy as np
import pytest
import torch
from tiny_models import random_transcoder

from langsae import memory
from langsae.ablation import Ablation
from langsae.config import build_parser, resolve
from langsae.errors import UserError
from langsae.forward import make_batches, tokenize
from langsae.generate import continuation_logprobs, greedy_generate, stop_token_ids
from langsae.model import HookPoint, input_device, layer_device, load_model, placement
from langsae.sweep import ablated_ce, baseline_ce

TEXTS = ["The river runs to the sea", "Le chat est sur la table", "東京は大きい", "A longer text about hills"]
LAYER = 1  # the ablated layer: the one offloaded to disk below
SHARDED = {  # the fixture model ties its head to the embedding: both go to disk
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "lm_head": "disk",
}


def _cfg(tiny_args, tmp_path, *extra):
    return resolve(build_parser("x").parse_args([*tiny_args, "--out-dir", str(tmp_path / "run"), *extra]))


@pytest.fixture(scope="module")
def models(tiny_args, tiny_model_dir, tmp_path_factory):
    """(unsharded, sharded through the same load_model call the flag makes, with an explicit map)."""
    tmp = tmp_path_factory.mktemp("device_map")
    cfg = _cfg(tiny_args, tmp)
    plain, tok = load_model(cfg.preset, cfg.device, cfg.dtype)
    kw = {**placement(cfg), "device_map": SHARDED, "offload_folder": tmp / "offload"}
    sharded, _ = load_model(cfg.preset, cfg.device, cfg.dtype, tok, **kw)
    return plain, sharded, tok


def _ablation(model, seed: int = 3) -> Ablation:
    """Three transcoder features removed at LAYER's MLP output, on the layer's own device."""
    tc = random_transcoder(model.config.hidden_size, 96, seed)
    rows, dev = torch.tensor([3, 17, 40]), layer_device(model, LAYER)
    return Ablation(
        HookPoint(LAYER, "mlp", "output"),
        "feature",
        W_dec=(tc["W_dec"][rows] * 20).to(dev),
        W_enc=tc["W_enc"][rows].to(dev),
        b_enc=(tc["b_enc"][rows] + 1.0).to(dev),
    )


def test_the_map_offloads_what_it_says(models):
    _, sharded, _ = models
    assert sharded.model.layers[LAYER].mlp.down_proj.weight.device.type == "meta"  # on disk
    assert sharded.lm_head.weight.device.type == "meta"
    assert sharded.model.embed_tokens.weight.device.type == "meta"
    assert layer_device(sharded, LAYER) == torch.device("cpu")  # where accelerate runs it, not "meta"
    assert input_device(sharded) == torch.device("cpu")


def test_delta_ce_equals_unsharded(models):
    plain, sharded, tok = models
    batches = make_batches(tokenize(tok, TEXTS), 3, tok.pad_token_id)
    got = {}
    for name, model in (("plain", plain), ("sharded", sharded)):
        base, count = baseline_ce(model, batches)
        abl = ablated_ce(model, batches, LAYER, [_ablation(model), _ablation(model, seed=4)], max_rows=4)
        got[name] = base, count, abl
    for a, b in zip(got["plain"], got["sharded"]):
        assert torch.equal(a, b)
    base, _, abl = got["plain"]
    assert (abl - base).abs().max() > 1e-4  # the ablation changes the CE: the test can tell


def test_generation_with_an_edit_equals_unsharded(models, tiny_model_dir):
    plain, sharded, tok = models
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    stops = stop_token_ids(tok, plain)
    conts = [tok(" and more")["input_ids"]] * len(prompts)
    outs = []
    for model in (plain, sharded):
        edits = [None, _ablation(model)]
        gen = greedy_generate(model, prompts, edits, stops, tok.pad_token_id, max_new_tokens=6)
        logp = continuation_logprobs(model, prompts, conts, edits, tok.pad_token_id)
        outs.append((gen, logp))
    assert outs[0][0] == outs[1][0]
    assert np.array_equal(outs[0][1], outs[1][1])
    assert not np.array_equal(outs[0][1][0], outs[0][1][1])  # the edit acts


def test_flag_reaches_from_pretrained(tiny_args, tmp_path, models, monkeypatch):
    """--device-map auto on a CPU-only machine loads (accelerate puts everything on the CPU) and runs to the
    same CE; from_pretrained gets the map, the memory limits and an offload folder below the run folder."""
    from transformers import AutoModelForCausalLM

    plain, _, tok = models
    cfg = _cfg(tiny_args, tmp_path, "--device-map", "auto", "--max-memory", "cpu=2GiB")
    assert (cfg.device_map, cfg.max_memory) == ("auto", {"cpu": "2GiB"})
    assert cfg.describe()["device_map"] == "auto" and "device_map" not in cfg.key()
    seen, real = {}, AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.update({**k, "max_memory": dict(k["max_memory"])})  # from_pretrained rewrites it in place
        return real(*a, **k)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model(cfg.preset, cfg.device, cfg.dtype, tok, **placement(cfg))
    assert (seen["device_map"], seen["max_memory"]) == ("auto", {"cpu": "2GiB"})
    assert seen["offload_folder"] == tmp_path / "run" / "offload"
    assert cfg.max_memory == {"cpu": "2GiB"}  # the run's own setting is left as given
    batches = make_batches(tokenize(tok, TEXTS), 4, tok.pad_token_id)
    assert torch.equal(baseline_ce(model, batches)[0], baseline_ce(plain, batches)[0])


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--max-memory", "0=4GiB"], "--max-memory only applies with --device-map"),
        (["--device-map", "auto", "--max-memory", "0=lots"], "is not DEVICE=SIZE"),
        (["--device-map", "auto", "--max-memory", "gpu=4GiB"], "is not DEVICE=SIZE"),
    ],
)
def test_bad_max_memory_is_one_line(tiny_args, tmp_path, extra, words):
    with pytest.raises(UserError, match=words):
        _cfg(tiny_args, tmp_path, *extra)


def test_torchrun_and_device_map_refused(tiny_args, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="torchrun gives each rank a whole model"):
        _cfg(tiny_args, tmp_path, "--device-map", "auto")


def test_memory_plan_sums_visible_gpus_with_a_device_map(monkeypatch):
    free = {0: 3 * 2**30, 1: 5 * 2**30}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i if isinstance(i, int) else i.index], 0))
    assert memory.device_available("cuda:0") == free[0]
    for device_map in ("auto", "balanced", "sequential"):
        assert memory.device_available("cuda:0", device_map) == free[0] + free[1]
