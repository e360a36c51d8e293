"""--device-map: a tiny Qwen3 sharded by accelerate (layers in memory, on disk, the LM head on disk) gives
exactly the unsharded run's ΔCE and greedy generation, through the engine the stages use (sweep.ablated_ce,
generate.greedy_generate). On CPU every shard computes in fp32 with the same kernels, so equality is exact:
a difference would mean an edit, the residual or the head went somewhere else, or ran twice."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import random_transcoder

from langsae import downstream, features, forward, memory, steering, tasks
from langsae.ablation import Ablation
from langsae.config import build_parser, resolve
from langsae.errors import UserError
from langsae.features import FeatureEncoder
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


# ----------------------------------------------------------------------------- edits and SAEs on their layer


def _spy(monkeypatch, module, name: str) -> list:
    """Record every call of module.name (calls go on to the real function): [(args, result)]."""
    calls, real = [], getattr(module, name)

    def spy(*args):
        calls.append((args, result := real(*args)))
        return result

    monkeypatch.setattr(module, name, spy)
    return calls


def _steering(d: int, gated: bool, seed: int = 5) -> steering.Steering:
    """A one-row steering of LAYER (on disk) and LAYER + 1 (on the CPU), gated at LAYER's MLP input by
    two of three transcoder features."""
    tc, feats = random_transcoder(d, 96, seed), (3, 17, 40)
    rows = torch.tensor(feats)
    enc = FeatureEncoder(
        feats, HookPoint(LAYER, "mlp", "input"), tc["W_enc"][rows], tc["b_enc"][rows], None, None
    )
    gate = steering.Gate(enc, torch.tensor([[True, False, True]])) if gated else None
    vectors = torch.randn(1, 2, d, generator=torch.Generator().manual_seed(seed))
    return steering.Steering(LAYER, vectors, torch.tensor([3.0]), gate)


def test_downstream_scoring_equals_unsharded(models, monkeypatch):
    """The downstream stage's engine call (compute_records: greedy answers and choice log-likelihoods), with
    edits built on --device as run_units builds them: the engine moves each to its layer when installing."""
    plain, sharded, tok = models
    items = [tasks.Item(str(i), t, 3, (" 1", " 2", " 3")) for i, t in enumerate(TEXTS)]
    eng = downstream.EngineSettings(tok.pad_token_id, 5, 6, "cpu")
    edits = [None, _ablation(plain), _ablation(plain, seed=4)]
    calls = _spy(monkeypatch, forward, "layer_device")
    got = [downstream.compute_records(m, tok, "sentiment", "x", items, edits, eng) for m in (plain, sharded)]
    assert got[0] == got[1]
    assert got[0][0] != got[0][1] != got[0][2]  # each edit changes the records: the test can tell
    assert {args[1] for args, _ in calls} == {LAYER}


def test_steering_equals_unsharded(models, monkeypatch):
    """A two-layer steering (one layer on disk, one on the CPU), gated and not, generates and scores exactly
    as unsharded; each layer's share of it is installed on that layer's execution device."""
    plain, sharded, tok = models
    d = plain.config.hidden_size
    conds = [None, _steering(d, gated=False), _steering(d, gated=True)]
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    conts = [tok(" and more")["input_ids"]] * len(prompts)
    stops = stop_token_ids(tok, plain)
    calls = _spy(monkeypatch, steering, "layer_device")
    outs = []
    for model in (plain, sharded):
        kw = {"stack": steering.stacked_steering}
        gen = greedy_generate(model, prompts, conds, stops, tok.pad_token_id, 6, **kw)
        outs.append((gen, continuation_logprobs(model, prompts, conts, conds, tok.pad_token_id, **kw)))
    assert outs[0][0] == outs[1][0]
    assert np.array_equal(outs[0][1], outs[1][1])
    logp = outs[0][1]
    assert not np.array_equal(logp[0], logp[1]) and not np.array_equal(logp[1], logp[2])  # steers; gate acts
    assert {args[1] for args, _ in calls} == {LAYER, LAYER + 1}


@pytest.fixture
def layer_on_meta(models, monkeypatch):
    """The sharded model with LAYER's accelerate hook saying it runs on `meta`: a device other than every
    other layer's (the CPU), as a second GPU would be, that a CPU-only test can check placement on."""
    _, sharded, _ = models
    hook = sharded.model.layers[LAYER]._hf_hook
    monkeypatch.setattr(hook, "execution_device", torch.device("meta"))
    assert layer_device(sharded, LAYER).type == "meta" and layer_device(sharded, LAYER + 1).type == "cpu"
    return sharded


def test_edits_are_installed_on_their_layers_device(models, layer_on_meta, monkeypatch):
    model, d = layer_on_meta, layer_on_meta.config.hidden_size
    calls = _spy(monkeypatch, forward, "stacked")
    edit = _ablation(models[0])  # built on the CPU
    other = Ablation(HookPoint(LAYER + 1, "block", "output"), "directional", basis=torch.eye(d)[:, :2])
    with forward.stacked_edits(model, [None, edit, other], 2):
        pass
    at_layer, at_next = [args[0] for args, _ in calls]
    moved = at_layer[1]
    assert {moved.W_dec.device.type, moved.W_enc.device.type, moved.b_enc.device.type} == {"meta"}
    assert at_next[2] is other  # already on its layer's device: the same object, nothing copied
    assert edit.W_dec.device.type == "cpu"  # the caller's edit is left as it was

    placed = _spy(monkeypatch, steering, "_on_layer")
    with steering.steer(model, _steering(model.config.hidden_size, gated=True)):
        pass
    first, second = [s for _, s in placed]
    assert {first.vectors.device.type, first.alpha.device.type, first.gate.rows.device.type} == {"meta"}
    assert first.gate.encoder.W_enc.device.type == "meta" and first.gate.encoder.b_enc.device.type == "meta"
    assert (second.vectors.device.type, second.gate) == ("cpu", None)
    assert torch.equal(second.vectors[0, 0], _steering(model.config.hidden_size, gated=True).vectors[0, 1])


def test_saes_load_on_their_layers_device(layer_on_meta, tiny_args, tmp_path, monkeypatch):
    """Under --device-map a layer's SAE (the nu stage's, a TopK gate's) loads on the layer's execution device;
    without one on --device."""
    model = layer_on_meta
    mapped, plain = _cfg(tiny_args, tmp_path, "--device-map", "auto"), _cfg(tiny_args, tmp_path)
    assert features.sae_device(mapped, model, LAYER) == "meta"
    assert features.sae_device(mapped, model, LAYER + 1) == "cpu"
    assert features.sae_device(plain, model, LAYER) == plain.device
    loads = []
    monkeypatch.setattr(features, "load_sae", lambda preset, L, device, dtype: loads.append((L, device)))
    lf = SimpleNamespace(layer=LAYER, topk=4)
    features.encoder_sae(mapped, lf, model)
    features.encoder_sae(plain, lf, model)
    assert loads == [(LAYER, "meta"), (LAYER, plain.device)]


def test_nu_stage_under_a_device_map_puts_each_sae_on_its_layer(tiny_args, tmp_path, monkeypatch):
    """The nu stage asks sae_device for each layer's device with the dispatched model and loads the SAE
    there, and its results equal the unsharded run's (on the CPU, where accelerate's auto map puts all)."""
    from helpers import load_layer, run_nu

    from langsae.stages import nu as stage

    chosen, loads = _spy(monkeypatch, stage, "sae_device"), _spy(monkeypatch, stage, "load_sae")
    assert run_nu(tiny_args, tmp_path / "mapped", "--layers", "1", "--device-map", "auto") == 0
    (cfg, model, layer), device = chosen[0][0], chosen[0][1]
    assert (len(chosen), cfg.device_map, layer) == (1, "auto", 1)
    assert layer == 1 and device == str(layer_device(model, 1))  # the stage's own model, asked for layer 1
    assert [args[1:3] for args, _ in loads] == [(1, device)]
    assert run_nu(tiny_args, tmp_path / "plain", "--layers", "1") == 0
    mapped, plain = load_layer(tmp_path / "mapped", 1), load_layer(tmp_path / "plain", 1)
    for k in ("indices", "values", "mean_acts"):
        assert torch.equal(mapped[k], plain[k])
