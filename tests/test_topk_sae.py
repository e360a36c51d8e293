"""A TopK SAE (Qwen Scope's kind) loaded through sae-lens's own `qwen_scope` converter: nu, directional
ablation and the steering gate against hand computations in float64; feature-mode ablation refused."""

import pytest
import torch
import torch.nn.functional as F
from helpers import brute_force_mu, load_layer, run_nu
from nu_artifacts import load_tiny
from qwen_scope_fixture import K, qwen_scope_args, tiny_qwen_scope_for, unregister_release

from langsae import features, sweep
from langsae.ablation import make_ablation
from langsae.config import build_parser, resolve
from langsae.data import load_texts
from langsae.errors import UserError
from langsae.forward import make_batches
from langsae.model import load_sae, sae_config, sae_hook_points
from langsae.steering import Steering, make_gate, steer

LAYER = 1
LANGS = ("eng_Latn", "fra_Latn", "jpn_Jpan")


def topk_by_hand(w):
    """Qwen Scope's encode in float64: TopK of x W_enc^T + b_enc (no b_dec shift), then ReLU."""

    def encode(x):
        pre = x.double() @ w["W_enc"].double().T + w["b_enc"].double()
        top = pre.topk(K, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())

    return encode


def relu_by_hand(w):
    """The same encoder without TopK: what a gate or nu from the saved rows alone would compute."""
    return lambda x: torch.relu(x.double() @ w["W_enc"].double().T + w["b_enc"].double())


def block_output_hook(model, seen):
    return model.model.layers[LAYER].register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))


def _cfg(model_dir, out_dir):
    argv = [*qwen_scope_args(model_dir, LAYER), "--out-dir", str(out_dir), "--languages", ",".join(LANGS)]
    return resolve(build_parser("test").parse_args(argv))


@pytest.fixture(scope="module")
def tiny_qwen_scope(tiny_model_dir):
    """The tiny TopK release, known to sae-lens only while this module runs."""
    yield tiny_qwen_scope_for(tiny_model_dir)
    unregister_release()


@pytest.fixture(scope="module")
def nu_run(tiny_model_dir, tiny_qwen_scope, tmp_path_factory):
    """The nu stage on the tiny model with the tiny TopK SAE at LAYER (every paper language)."""
    out = tmp_path_factory.mktemp("topk_nu") / "run"
    assert run_nu(qwen_scope_args(tiny_model_dir, LAYER), out) == 0
    return out


@pytest.fixture(scope="module")
def layer_features(tiny_model_dir, nu_run):
    cfg = _cfg(tiny_model_dir, nu_run)
    return features.load_nu_results(cfg, [LAYER], 3).layers[LAYER], cfg


def test_sae_lens_converter_gives_a_topk_sae_at_the_block_output(tiny_model_dir, tiny_qwen_scope, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path)
    sae = load_sae(cfg.preset, LAYER, "cpu", torch.float32)
    w = tiny_qwen_scope[LAYER]
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == K
    torch.testing.assert_close(sae.W_enc, w["W_enc"].T)  # the converter transposes Qwen Scope's orientation
    torch.testing.assert_close(sae.W_dec, w["W_dec"].T)
    read, write = sae_hook_points(sae_config(cfg.preset, LAYER))
    assert read == write and (read.layer, read.module, read.io) == (LAYER, "block", "output")


def test_nu_matches_brute_force_topk(tiny_model_dir, tiny_qwen_scope, nu_run):
    w = tiny_qwen_scope[LAYER]
    mu_ref = brute_force_mu(tiny_model_dir, block_output_hook, topk_by_hand(w))
    got = load_layer(nu_run, LAYER)
    torch.testing.assert_close(got["mean_acts"].double(), mu_ref, atol=1e-5, rtol=1e-4)
    relu_mu = brute_force_mu(tiny_model_dir, block_output_hook, relu_by_hand(w))
    assert (relu_mu - mu_ref).abs().max() > 0.1, "TopK must change mu, or this test cannot tell it apart"
    d = got["directions"]
    assert d["topk"] == K and d["threshold"] is None and d["input_bias"] is None
    torch.testing.assert_close(d["W_dec"], w["W_dec"].T[d["feature_indices"]])


def _hand_projection_ce(model, ids, directions):
    """CE of one text (batch 1) with the span of `directions` [r, d] projected out of block LAYER's output
    by a hand-written hook, the basis from a float64 QR of the unit directions."""
    unit = directions.double() / directions.double().norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(unit.T)

    def hook(module, args, out):
        h = out.double()
        return (h - (h @ q) @ q.T).to(out.dtype)

    x = torch.tensor([ids])
    handle = model.model.layers[LAYER].register_forward_hook(hook) if len(directions) else None
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float()
    if handle:
        handle.remove()
    return F.cross_entropy(logits[:-1], x[0, 1:]).item()


def test_directional_ablation_delta_ce_matches_hand_hook(tiny_model_dir, tiny_qwen_scope, layer_features):
    lf, _ = layer_features
    model, tok = load_tiny(tiny_model_dir)
    texts, _ = load_texts(LANGS, "evaluation", 2).flat()
    token_ids = [tok(t)["input_ids"][: 10 + 5 * i] for i, t in enumerate(texts)]
    batches = make_batches(token_ids, 4, tok.pad_token_id)
    sets = [lf.top("fra_Latn", (1,)), lf.top("jpn_Jpan", (1, 2, 3)), tuple(lf.control_indices[:2].tolist())]
    abls = [make_ablation(lf, fs, "directional") for fs in sets]
    base, _ = sweep.baseline_ce(model, batches)
    ce = sweep.ablated_ce(model, batches, LAYER, abls, max_rows=4)
    W_dec = tiny_qwen_scope[LAYER]["W_dec"].T  # [d_sae, d]: the decoder rows, from the raw file
    for c, fs in enumerate(sets):
        for i, ids in enumerate(token_ids):
            ref_base = _hand_projection_ce(model, ids, W_dec[:0])
            ref = _hand_projection_ce(model, ids, W_dec[list(fs)]) - ref_base
            assert abs((ce[c, i] - base[i]).item() - ref) < 2e-5
    assert (ce - base).abs().max() > 1e-4  # the ablations do something


def test_feature_mode_is_refused_in_one_line(layer_features):
    lf, _ = layer_features
    with pytest.raises(UserError) as e:
        make_ablation(lf, lf.top("eng_Latn", (1,)), "feature")
    msg = str(e.value)
    assert "\n" not in msg and "topk" in msg and f"k={K}" in msg and "--mode directional" in msg


def _block_output(model, tok, texts):
    seen = {}
    ids = torch.tensor([tok(t)["input_ids"][:40] for t in texts][:1])
    handle = block_output_hook(model, seen)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    return ids, seen["x"]


def test_gate_opens_where_a_feature_is_in_the_top_k_and_positive(
    tiny_model_dir, tiny_qwen_scope, layer_features
):
    lf, cfg = layer_features
    model, tok = load_tiny(tiny_model_dir)
    sae = load_sae(cfg.preset, LAYER, "cpu", torch.float32)
    w = tiny_qwen_scope[LAYER]
    with pytest.raises(UserError, match="TopK"):
        make_gate(lf, [lf.top("fra_Latn", (1, 2, 3))])  # the saved rows alone cannot tell
    texts, _ = load_texts(("fra_Latn", "jpn_Jpan"), "evaluation", 2).flat()
    rows = [lf.top("fra_Latn", (1, 2, 3)), lf.top("jpn_Jpan", (1, 2, 3))]
    gate = make_gate(lf, rows, sae=sae)
    for text in texts:
        _, x = _block_output(model, tok, [text])
        got = gate.open(x.expand(2, -1, -1))
        acts, relu = topk_by_hand(w)(x[0]), relu_by_hand(w)(x[0])
        want = torch.stack([(acts[:, list(fs)] > 0).any(-1) for fs in rows])
        assert torch.equal(got, want)
        relu_open = torch.stack([(relu[:, list(fs)] > 0).any(-1) for fs in rows])
        assert (relu_open & ~want).any(), "the ReLU gate must differ, or this test cannot tell them apart"
    opened = [bool(gate.open(_block_output(model, tok, [t])[1]).any()) for t in texts]
    assert any(opened), "the top features of a language should open the gate somewhere"


def test_gated_steering_with_topk_gate_matches_hand_hook(tiny_model_dir, tiny_qwen_scope, layer_features):
    lf, cfg = layer_features
    model, tok = load_tiny(tiny_model_dir)
    sae = load_sae(cfg.preset, LAYER, "cpu", torch.float32)
    feats = lf.top("fra_Latn", (1, 2, 3))
    encode = topk_by_hand(tiny_qwen_scope[LAYER])
    texts, _ = load_texts(("fra_Latn",), "evaluation", 1).flat()
    ids, _ = _block_output(model, tok, texts)
    v = torch.randn(1, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(3))

    def hook(module, args, out):
        open_ = (encode(out[0])[:, list(feats)] > 0).any(-1)
        return out + 2.5 * v[0, 0] * open_[None, :, None].to(out.dtype)

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    handle.remove()
    with (
        torch.no_grad(),
        steer(model, Steering(LAYER, v, torch.tensor([2.5]), make_gate(lf, [feats], sae=sae))),
    ):
        got = model(input_ids=ids).logits
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the gate opened somewhere


def test_stages_read_a_topk_layer_through_its_full_sae(tiny_model_dir, tiny_qwen_scope, layer_features):
    """What the steering and code-switching stages call: encoder_sae loads the TopK layer's SAE, whose
    encoder (and build_edits' gate) then match TopK by hand; a layer of another SAE kind needs none."""
    from dataclasses import replace

    from langsae import steer_eval as se

    lf, cfg = layer_features
    sae = features.encoder_sae(cfg, lf)
    assert sae is not None and features.encoder_sae(cfg, replace(lf, topk=None)) is None
    model, tok = load_tiny(tiny_model_dir)
    texts, _ = load_texts(("jpn_Jpan",), "evaluation", 1).flat()
    _, x = _block_output(model, tok, texts)
    feats = lf.top("jpn_Jpan", (1, 2))
    want = topk_by_hand(tiny_qwen_scope[LAYER])(x)[..., list(feats)]
    torch.testing.assert_close(lf.encoder(feats, sae=sae)(x).double(), want, atol=1e-5, rtol=1e-5)
    nu = features.load_nu_results(cfg, [LAYER], 3)
    cond = se.SteerCondition(se.GATED, "jpn_Jpan", "eng_Latn", LAYER, 1, 2.0)
    vectors = {LAYER: se.SteeringVectors(LAYER, LANGS, torch.zeros(3, x.shape[-1]), torch.ones(3))}
    with pytest.raises(UserError, match="TopK"):
        se.build_edits([cond], vectors, nu, 3, 0)
    (edit,) = se.build_edits([cond], vectors, nu, 3, 0, gate_sae=lambda L: sae)
    assert edit.gate.encoder.sae is sae
