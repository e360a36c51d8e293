"""The ablation engine: projections and feature subtraction against hand computations, the
layers-from-L forward against a full forward, and ΔCE against a slow batch-1 reference."""

from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nu_artifacts import edit_meta, load_tiny, write_fake_nu
from tiny_models import GEMMA, random_transcoder, tiny_gemma2

from langsae import ablation, features, sweep
from langsae.ablation import make_ablation, orthonormal_basis, project_out
from langsae.config import build_parser, resolve
from langsae.data import load_texts
from langsae.errors import UserError
from langsae.features import LayerFeatures
from langsae.forward import (
    capture,
    edit_output,
    hidden_before_layer,
    logits_from_hidden,
    make_batches,
    next_token_ce,
    run_from_layer,
)
from langsae.model import HookPoint
from langsae.sweep import Condition, ConditionStore

LANGS = ["eng_Latn", "fra_Latn", "jpn_Jpan"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_tiny(tiny_model_dir)


@pytest.fixture(scope="module")
def token_ids(tiny):
    _, tok = tiny
    texts, _ = load_texts(tuple(LANGS), "evaluation", 3).flat()
    ids = [tok(t)["input_ids"][: 8 + 4 * i] for i, t in enumerate(texts)]  # 9 texts, 8..40 tokens
    assert len({len(t) for t in ids}) == len(ids)  # different lengths, so batches have padding
    return ids


def _cfg(tiny_args, out_dir, languages=LANGS, extra=()):
    args = build_parser("test").parse_args(
        [*tiny_args, "--out-dir", str(out_dir), "--languages", ",".join(languages), *extra]
    )
    return resolve(args)


@pytest.fixture
def nu_run(tmp_path, tiny_args, tiny_transcoders):
    """A RunConfig and fake nu artifacts for it (top-3 per language, a pool of 6 controls)."""
    cfg = _cfg(tiny_args, tmp_path / "run")
    write_fake_nu(cfg.features_dir, cfg.describe(), tiny_transcoders, LANGS)
    return cfg


def _layer_features(tiny_transcoders, layer=1, threshold=None) -> LayerFeatures:
    w = tiny_transcoders[layer]
    feats = torch.arange(w["W_enc"].shape[0])
    return LayerFeatures(
        layer=layer,
        hook_in=f"blocks.{layer}.mlp.hook_in",
        hook_out=f"blocks.{layer}.hook_mlp_out",
        d_sae=len(feats),
        languages=tuple(LANGS),
        top_indices=feats[:9].view(3, 3),
        control_indices=feats[9:15],
        feature_indices=feats,
        W_dec=w["W_dec"].float(),
        W_enc=w["W_enc"].float(),
        b_enc=w["b_enc"].float(),
        threshold=None if threshold is None else torch.full((len(feats),), threshold),
    )


# ----------------------------------------------------------------------------- directional ablation


def test_directional_removes_chosen_directions_and_keeps_orthogonal_ones():
    g = torch.Generator().manual_seed(0)
    d = 16
    dirs = torch.randn(2, d, generator=g) * torch.tensor([[3.0], [0.2]])  # non-unit, non-orthogonal
    h = torch.randn(4, 5, d, generator=g)
    out = project_out(h, orthonormal_basis(dirs))
    unit = dirs / dirs.norm(dim=1, keepdim=True)
    assert torch.allclose(out @ unit.T, torch.zeros(4, 5, 2), atol=1e-5)
    # vectors orthogonal to both directions keep their component exactly (up to fp32 rounding)
    v = torch.randn(3, d, generator=g)
    q = torch.linalg.qr(dirs.T).Q
    v = v - (v @ q) @ q.T
    assert torch.allclose(out @ v.T, h @ v.T, atol=1e-5)
    # and the removed part lies in the span of the directions
    removed = (h - out).reshape(-1, d)
    assert torch.allclose(removed - (removed @ q) @ q.T, torch.zeros_like(removed), atol=1e-5)


def test_single_direction_is_one_normalisation():
    """h - (h·d̂)d̂ with d̂ = d/|d|: the |d|^4 bug would leave a component along d when |d| != 1."""
    d = torch.tensor([[3.0, 4.0, 0.0]])  # |d| = 5
    h = torch.tensor([[1.0, 2.0, 3.0]])
    expected = torch.tensor([[-0.32, 0.24, 3.0]])  # h - (11/25) d
    out = project_out(h, orthonormal_basis(d))
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, h - (h @ d.T) * d / 5**4, atol=1e-2)


def test_two_feature_projection_is_idempotent():
    g = torch.Generator().manual_seed(1)
    basis = orthonormal_basis(torch.randn(2, 12, generator=g))
    h = torch.randn(7, 12, generator=g)
    once = project_out(h, basis)
    assert torch.allclose(project_out(once, basis), once, atol=1e-6)
    assert not torch.allclose(once, h)


def test_parallel_directions_span_one_dimension():
    d = torch.tensor([[1.0, 2.0, 2.0], [-2.0, -4.0, -4.0]])
    basis = orthonormal_basis(d)
    assert basis.shape == (3, 1)
    h = torch.tensor([[3.0, 0.0, 1.0]])
    assert torch.allclose(project_out(h, basis), project_out(h, orthonormal_basis(d[:1])), atol=1e-6)


def test_no_features_is_the_identity(tiny_transcoders):
    lf = _layer_features(tiny_transcoders)
    h = torch.randn(2, 3, 32)
    for mode in ablation.MODES:
        a = make_ablation(lf, [], mode)
        assert a.is_identity and torch.equal(a.apply(h, h), h)


# ----------------------------------------------------------------------------- feature ablation


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_feature_mode_matches_hand_computation(tiny, tiny_transcoders, token_ids, threshold):
    model, tok = tiny
    L, feats = 1, [5, 17, 40]
    lf = _layer_features(tiny_transcoders, L, threshold)
    a = make_ablation(lf, feats, "feature")
    assert a.hook == HookPoint(L, "mlp", "output") and not a.reads_output
    batch = make_batches(token_ids[:3], 3, tok.pad_token_id)[0]
    points = {"in": HookPoint(L, "mlp", "input"), "out": HookPoint(L, "mlp", "output")}
    with capture(model, points) as plain:
        model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        x, mlp_out = plain["in"].double(), plain["out"].double()
    w = tiny_transcoders[L]
    expected = mlp_out.clone()
    n_active = 0
    for f in feats:  # one feature and one position at a time, in float64
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                pre = float(x[b, t] @ w["W_enc"][f].double() + w["b_enc"][f])
                act = max(pre, 0.0) if threshold is None or pre > threshold else 0.0
                n_active += act > 0
                expected[b, t] -= act * w["W_dec"][f].double()
    assert n_active > 0
    with edit_output(model, a.hook, a.apply), capture(model, {"out": points["out"]}) as edited:
        model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert torch.allclose(edited["out"].double(), expected, atol=1e-5)


def test_feature_mode_on_a_residual_sae_reads_the_edited_output(tiny_transcoders):
    lf = _layer_features(tiny_transcoders)
    lf = LayerFeatures(
        **{**lf.__dict__, "hook_in": "blocks.1.hook_resid_post", "hook_out": "blocks.1.hook_resid_post"}
    )
    a = make_ablation(lf, [3], "feature")
    assert a.hook == HookPoint(1, "block", "output") and a.reads_output
    h = torch.randn(2, 4, 32)
    acts = torch.relu(h @ lf.W_enc[3] + lf.b_enc[3])
    assert torch.allclose(a.apply(h, torch.zeros_like(h)), h - acts[..., None] * lf.W_dec[3], atol=1e-6)


# ---------------------------------------------------- Gemma 2: hook_mlp_out after post_feedforward_layernorm


def _gemma_features(
    layer: int, hook_in: str, hook_out: str, W_enc, b_enc, W_dec, threshold=None, input_bias=None
) -> LayerFeatures:
    """Every feature of one SAE as LayerFeatures (W_enc as rows [d_sae, d_in])."""
    feats = torch.arange(W_enc.shape[0])
    return LayerFeatures(
        layer=layer,
        hook_in=hook_in,
        hook_out=hook_out,
        d_sae=len(feats),
        languages=("a",),
        top_indices=feats[:1].view(1, 1),
        control_indices=feats[1:2],
        feature_indices=feats,
        W_dec=W_dec.float(),
        W_enc=W_enc.float(),
        b_enc=b_enc.float(),
        threshold=threshold,
        input_bias=input_bias,
    )


@contextmanager
def _hand_edit(model, layer: int, edit, at: str = "post_feedforward_layernorm"):
    """Hand-written hooks: the output of model.model.layers[layer].<at> becomes edit(output, mlp_input),
    mlp_input being the MLP module's own input in the same forward."""
    mod = model.model.layers[layer]
    seen = {}
    handles = [
        mod.mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0])),
        getattr(mod, at).register_forward_hook(lambda m, a, out: edit(out, seen["x"]).to(out.dtype)),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def gemma_with_saes(tiny_gemma2_dir, tiny_mlp_out_saes):
    """The tiny Gemma 2, layer 2's MLP-output SAE and a random transcoder (mlp.hook_in -> hook_mlp_out),
    each as (LayerFeatures, hand-written edit(out_norm, mlp_input) of features FEATS in float64)."""
    from transformers import AutoModelForCausalLM

    from langsae import nu

    L, feats = 2, [1, 4, 9, 20]
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir, dtype=torch.float32).eval()
    sae = tiny_mlp_out_saes[L]
    hook = f"blocks.{L}.hook_mlp_out"
    # the compact weights the nu stage saves, here of every feature
    d = nu.feature_directions(
        sae, torch.arange(GEMMA["d_sae"])[None], torch.zeros(0, dtype=torch.long), hook, hook
    )
    sae_lf = _gemma_features(
        L, hook, hook, d["W_enc"], d["b_enc"], d["W_dec"], d["threshold"], d["input_bias"]
    )

    def sae_edit(out, x):  # sae-lens's own encoder, on the normalised MLP output itself
        with torch.no_grad():
            acts = sae.encode(out)[..., feats].double()
        return out.double() - acts @ sae.W_dec[feats].detach().double()

    w = random_transcoder(GEMMA["hidden"], GEMMA["d_sae"], seed=7)
    tc_lf = _gemma_features(L, f"blocks.{L}.mlp.hook_in", hook, w["W_enc"], w["b_enc"], w["W_dec"])

    def transcoder_edit(out, x):  # a_f from the MLP input, subtracted after post_feedforward_layernorm
        acts = torch.relu(x.double() @ w["W_enc"][feats].double().T + w["b_enc"][feats].double())
        return out.double() - acts @ w["W_dec"][feats].double()

    return model, L, feats, {"mlp_out_sae": (sae_lf, sae_edit), "transcoder": (tc_lf, transcoder_edit)}


def _gemma_batch(model):
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in (9, 6, 11)]
    return ids, make_batches(ids, 3, model.config.pad_token_id)[0]


@pytest.mark.parametrize("kind", ["mlp_out_sae", "transcoder"])
def test_feature_mode_on_gemma2_edits_after_post_feedforward_layernorm(gemma_with_saes, kind):
    """Feature mode at blocks.L.hook_mlp_out on Gemma 2 equals a hand edit of post_feedforward_layernorm's
    output: out_norm - sum_f a_f W_dec[f], a_f read from out_norm (MLP-output SAE) or from the MLP input
    (transcoder). The same edit at the raw MLP output, or with a_f from post_feedforward_layernorm's own
    input, gives other logits, so the comparison can fail."""
    model, L, feats, kinds = gemma_with_saes
    lf, edit = kinds[kind]
    a = make_ablation(lf, feats, "feature")
    assert a.hook == HookPoint(L, "mlp", "output") and a.reads_output == (kind == "mlp_out_sae")
    _, batch = _gemma_batch(model)
    real = batch.attention_mask.bool()

    def logits(*contexts):
        with torch.no_grad(), contexts[0] if contexts else nullcontext():
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[real]

    with edit_output(model, a.hook, a.apply):
        ours = logits()
    torch.testing.assert_close(ours, logits(_hand_edit(model, L, edit)), atol=1e-5, rtol=1e-5)
    assert (ours - logits()).abs().max() > 1e-3, "the ablation must change something"
    assert (ours - logits(_hand_edit(model, L, edit, at="mlp"))).abs().max() > 1e-3
    if kind == "transcoder":  # a_f from the raw MLP output (post_feedforward_layernorm's input) instead
        hooked = model.model.layers[L].post_feedforward_layernorm
        wrong = hooked.register_forward_hook(lambda m, args, out: edit(out, args[0]).to(out.dtype))
        try:
            assert (ours - logits()).abs().max() > 1e-3
        finally:
            wrong.remove()


def test_engine_delta_ce_on_gemma2_matches_hand_edits(gemma_with_saes):
    """Both kinds stacked in one forward of the ΔCE engine (padding, several rows per condition)
    against batch-1 full forwards with the hand-written hooks."""
    model, L, feats, kinds = gemma_with_saes
    ids, _ = _gemma_batch(model)
    batches = make_batches(ids, 2, model.config.pad_token_id)
    abls = [make_ablation(lf, feats, "feature") for lf, _ in kinds.values()]
    base, _ = sweep.baseline_ce(model, batches)
    ce = sweep.ablated_ce(model, batches, L, abls, max_rows=4)
    for c, (_, edit) in enumerate(kinds.values()):
        for i, text in enumerate(ids):
            x = torch.tensor([text])
            with torch.no_grad(), _hand_edit(model, L, edit):
                ref = F.cross_entropy(model(input_ids=x).logits[0, :-1].float(), x[0, 1:]).item()
            assert abs(ce[c, i].item() - ref) < 1e-5, (c, i)
    assert (ce - base).abs().min() > 1e-5


def test_edit_output_refuses_a_read_point_computed_later_or_not_at_all(tiny):
    model, _ = tiny
    write = HookPoint(1, "mlp", "output")
    with (
        pytest.raises(ValueError, match="computed after"),
        edit_output(model, write, lambda o, x: o, HookPoint(1, "block", "output")),
    ):
        pass
    batch = make_batches([[3, 4, 5, 6]], 1, 0)[0]
    h = hidden_before_layer(model, batch, 1)
    with (
        pytest.raises(RuntimeError, match="same forward"),
        edit_output(model, write, lambda o, x: o, HookPoint(0, "mlp", "input")),
    ):
        run_from_layer(model, h, batch.attention_mask, 1)  # layer 0 never runs


# ----------------------------------------------------------------------------- forward from layer L


@pytest.mark.parametrize("mode", ["none", *ablation.MODES])
def test_layers_from_cached_state_match_full_forward(tiny, tiny_transcoders, token_ids, mode):
    model, tok = tiny
    batch = make_batches(token_ids[:4], 4, tok.pad_token_id)[0]
    real = batch.attention_mask.bool()
    for L in range(len(model.model.layers)):
        a = None if mode == "none" else make_ablation(_layer_features(tiny_transcoders, L), [2, 9], mode)
        ctx = (lambda: edit_output(model, a.hook, a.apply)) if a else nullcontext
        with torch.no_grad(), ctx():
            full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        h = hidden_before_layer(model, batch, L)
        with ctx():
            logits = logits_from_hidden(model, run_from_layer(model, h, batch.attention_mask, L))
        assert torch.allclose(logits[real], full[real], atol=1e-5), (mode, L)
        if a:  # the ablation changes something, so the comparison can fail
            with torch.no_grad():
                plain = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            assert (plain[real] - full[real]).abs().max() > 1e-3


def test_run_from_layer_is_model_agnostic_gemma2():
    """Gemma 2: scaled embeddings, alternating sliding-window layers, logit soft-capping."""
    model = tiny_gemma2(vocab_size=50)
    ids = [torch.randint(0, 50, (n,)).tolist() for n in (9, 6, 8)]
    batch = make_batches(ids, 3, 0)[0]
    real = batch.attention_mask.bool()
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for L in range(4):
        h = hidden_before_layer(model, batch, L)
        logits = logits_from_hidden(model, run_from_layer(model, h, batch.attention_mask, L))
        assert torch.allclose(logits[real], full[real], atol=1e-5)


def test_chunked_ce_matches_unchunked(tiny, token_ids):
    model, tok = tiny
    batch = make_batches(token_ids[:5], 5, tok.pad_token_id)[0]
    final = run_from_layer(model, hidden_before_layer(model, batch, 0), batch.attention_mask, 0)
    whole, n = next_token_ce(model, final, batch.input_ids, batch.attention_mask, chunk_tokens=10**6)
    chunked, _ = next_token_ce(model, final, batch.input_ids, batch.attention_mask, chunk_tokens=7)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert n.tolist() == [len(token_ids[i]) - 1 for i in batch.indices]


def test_next_token_ce_of_a_bf16_model_runs_the_lm_head_in_fp32():
    """From the same bf16 hidden states, CE equals a float64 head to ~1e-5; the old way (a bf16
    head, logits upcast afterwards) is off by far more, so the test can tell them apart."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 1.0)  # logits of a few units, as in a trained model
    model = model.to(torch.bfloat16)
    ids = [torch.randint(0, 300, (n,)).tolist() for n in (12, 7, 10)]
    batch = make_batches(ids, 3, 0)[0]
    final = run_from_layer(model, hidden_before_layer(model, batch, 0), batch.attention_mask, 0)
    assert final.dtype == torch.bfloat16
    ce, n = next_token_ce(
        model, final, batch.input_ids, batch.attention_mask, chunk_tokens=4
    )  # several chunks
    W = model.lm_head.weight.double()
    for row, i in enumerate(batch.indices):
        k = len(ids[i])
        targets = batch.input_ids[row, 1:k]
        exact = F.cross_entropy(final[row, : k - 1].double() @ W.T, targets).item()
        rounded = F.cross_entropy(model.lm_head(final[row, : k - 1]).double(), targets).item()
        assert abs(ce[row].item() - exact) < 1e-5
        assert abs(rounded - exact) > 1e-3, (
            "bf16 logits must be measurably off for this test to mean anything"
        )


# ----------------------------------------------------------------------------- ΔCE engine


def _reference_ce(model, ids: list[int], a=None) -> float:
    """Slow and obvious: one text, batch 1, full forward with the hook, CE from the full logits."""
    x = torch.tensor([ids])
    with torch.no_grad(), edit_output(model, a.hook, a.apply) if a else nullcontext():
        logits = model(input_ids=x).logits[0].float()
    return F.cross_entropy(logits[:-1], x[0, 1:]).item()


@pytest.mark.parametrize("mode", ablation.MODES)
def test_engine_delta_ce_matches_batch1_reference(tiny, tiny_transcoders, token_ids, mode):
    model, tok = tiny
    feature_sets = [(4,), (4, 30), (61,)]
    batches = make_batches(token_ids, 4, tok.pad_token_id)
    base, _ = sweep.baseline_ce(model, batches)
    for L in (0, 2):
        lf = _layer_features(tiny_transcoders, L)
        abls = [make_ablation(lf, fs, mode) for fs in feature_sets]
        ce = sweep.ablated_ce(model, batches, L, abls, max_rows=8)  # 2 conditions per forward
        for c, a in enumerate(abls):
            for i, ids in enumerate(token_ids):
                ref_base, ref_abl = _reference_ce(model, ids), _reference_ce(model, ids, a)
                assert abs(base[i].item() - ref_base) < 1e-5
                assert abs((ce[c, i] - base[i]).item() - (ref_abl - ref_base)) < 2e-5
        assert (ce - base).abs().max() > 1e-4  # the ablations do something


def test_batch_size_padding_and_stacking_do_not_change_delta_ce(tiny, tiny_transcoders, token_ids):
    model, tok = tiny
    lf = _layer_features(tiny_transcoders, 1)
    abls = [make_ablation(lf, fs, "directional") for fs in [(1,), (1, 2), (7,)]]
    results = []
    for bs, sort, rows in [(1, True, 1), (3, False, 100), (9, True, 9), (4, False, 4)]:
        batches = make_batches(token_ids, bs, tok.pad_token_id, sort_by_length=sort)
        base, _ = sweep.baseline_ce(model, batches)
        results.append(sweep.ablated_ce(model, batches, 1, abls, max_rows=rows) - base)
    for r in results[1:]:
        assert torch.allclose(r, results[0], atol=1e-5)


def _sweep(cfg, tiny, token_ids, conditions, force=False):
    model, tok = tiny
    nu = features.load_nu_results(cfg, None, 2)
    evalset = sweep.EvalSet(tuple(LANGS), token_ids, np.repeat(np.arange(3), 3), "test")
    store = ConditionStore(cfg.features_dir / "ablation", {"eval": evalset.digest()})
    return sweep.run_sweep(model, evalset, nu, conditions, store, 4, tok.pad_token_id, force=force)


def test_zero_features_give_zero_delta_exactly(nu_run, tiny, token_ids):
    conds = [
        Condition(1, "directional", "eng_Latn", "none", ()),
        Condition(1, "feature", "eng_Latn", "none", ()),
    ]
    result = _sweep(nu_run, tiny, token_ids, conds)
    assert np.array_equal(result.ablated, np.stack([result.baseline] * 2))


def test_sweep_resumes_from_cache_and_shares_identical_feature_sets(nu_run, tiny, token_ids, monkeypatch):
    nu = features.load_nu_results(nu_run, None, 2)
    conds = sweep.sweep_conditions(nu, LANGS, "directional", 2, random_draws=2, seed=0)
    assert len(conds) == 3 * (
        3 * 3 + 2 * 2
    )  # layers x (languages x {top1, top2, top1+2} + {k=1, k=2} x draws)
    first = _sweep(nu_run, tiny, token_ids, conds)
    assert np.isfinite(first.ablated).all()

    def fail(*a, **k):
        raise AssertionError("a cached condition was recomputed")

    monkeypatch.setattr(sweep, "ablated_ce", fail)
    monkeypatch.setattr(sweep, "baseline_ce", fail)
    again = _sweep(nu_run, tiny, token_ids, conds)
    assert np.array_equal(again.ablated, first.ablated) and np.array_equal(again.baseline, first.baseline)
    with pytest.raises(AssertionError, match="recomputed"):
        _sweep(nu_run, tiny, token_ids, conds, force=True)


def test_random_draws_are_seeded_and_from_the_pool(nu_run):
    nu = features.load_nu_results(nu_run, None, 2)
    a = sweep.sweep_conditions(nu, LANGS, "directional", 2, random_draws=3, seed=5)
    b = sweep.sweep_conditions(nu, LANGS, "directional", 2, random_draws=3, seed=5)
    assert a == b
    rand = [c for c in a if c.features == sweep.RANDOM]
    assert {len(c.feature_ids) for c in rand} == {1, 2}
    for c in rand:
        assert set(c.feature_ids) <= set(nu.layers[c.layer].control_indices.tolist())
    assert len({c.feature_ids for c in rand if c.layer == 0 and len(c.feature_ids) == 2}) > 1


# ----------------------------------------------------------------------------- bad input


def test_feature_past_d_sae_and_unsaved_feature_are_one_line_errors(tiny_transcoders):
    lf = _layer_features(tiny_transcoders)
    with pytest.raises(UserError, match="out of range.*d_sae = 96"):
        make_ablation(lf, [96], "directional")
    lf = LayerFeatures(**{**lf.__dict__, "feature_indices": lf.feature_indices[:50]})
    with pytest.raises(UserError, match="no saved weights"):
        make_ablation(lf, [70], "feature")


def test_missing_or_foreign_nu_results_are_refused(tmp_path, tiny_args, nu_run):
    with pytest.raises(UserError, match=r"no nu-score results.*python compute_nu_scores\.py"):
        features.load_nu_results(_cfg(tiny_args, tmp_path / "empty"), None, 2)
    # the model is compared by content: a nu run keyed by another model is refused, whatever its name
    edit_meta(
        nu_run.features_dir,
        config={**nu_run.describe(), "model_id": "Qwen/Qwen3-0.6B", "model": "Qwen/Qwen3-0.6B@c0"},
    )
    with pytest.raises(
        UserError, match=r"made with model 'Qwen/Qwen3-0.6B' \(Qwen/Qwen3-0.6B@c0\).*compute_nu_scores\.py"
    ):
        features.load_nu_results(nu_run, None, 2)


def test_languages_layers_and_top_k_are_checked(tmp_path, tiny_args, nu_run):
    cfg = _cfg(tiny_args, nu_run.features_dir, [*LANGS, "kor_Hang"])
    with pytest.raises(UserError, match=r"not kor_Hang.*compute_nu_scores\.py.*--languages"):
        features.load_nu_results(cfg, None, 2)
    with pytest.raises(UserError, match=r"layer\(s\) \[5\].*computed: \[0, 1, 2\].*--layers 0,1,2,5"):
        features.load_nu_results(nu_run, (1, 5), 2)
    with pytest.raises(UserError, match=r"--top-k 4 is out of range.*top 3"):
        features.load_nu_results(nu_run, None, 4)
    assert sorted(
        features.load_nu_results(_cfg(tiny_args, nu_run.features_dir, LANGS[:2]), (0, 2), 3).layers
    ) == [0, 2]
    (nu_run.features_dir / "layer_2_done.json").write_text('{"config_hash": "other"}')
    with pytest.raises(UserError, match="layer 2 .* stale"):
        features.load_nu_results(nu_run, None, 2)


def test_feature_mode_on_a_residual_jumprelu_sae_matches_its_own_encoder(tiny_residual_saes):
    """Feature mode with the compact weights the nu stage saves equals sae-lens's own encode
    (input shifted by b_dec, JumpReLU threshold) for an SAE that reads the block output."""
    from langsae import nu

    sae = tiny_residual_saes[1]
    top = torch.tensor([[3, 7], [11, 3]])
    d = nu.feature_directions(
        sae, top, torch.tensor([20, 30]), "blocks.1.hook_resid_post", "blocks.1.hook_resid_post"
    )
    lf = LayerFeatures(
        layer=1,
        hook_in=d["hook_name"],
        hook_out=d["hook_name_out"],
        d_sae=d["d_sae"],
        languages=("a", "b"),
        top_indices=d["top_indices"],
        control_indices=d["control_indices"],
        feature_indices=d["feature_indices"],
        W_dec=d["W_dec"],
        W_enc=d["W_enc"],
        b_enc=d["b_enc"],
        threshold=d["threshold"],
        input_bias=d["input_bias"],
    )
    ab = make_ablation(lf, [3, 7, 30], "feature")
    h = torch.randn(2, 5, sae.cfg.d_in) * 2
    with torch.no_grad():
        acts = sae.encode(h)[..., [3, 7, 30]]
        expected = h - acts @ sae.W_dec[[3, 7, 30]]
    assert (acts > 0).any() and (acts == 0).any(), "the check needs both active and inactive features"
    torch.testing.assert_close(ab.apply(h, torch.zeros_like(h)), expected, atol=1e-5, rtol=1e-5)
