"""A tiny random Qwen3-MoE (`tiny_models.tiny_qwen3_moe`: sparse MoE blocks at layers 0 and 2, a dense MLP
at layer 1) through the one forward engine, each part against a full forward: the captured hook points
against hand-registered hooks, the model's hidden states and a by-hand MoE; running from a layer against
the model's logits; ΔCE of directional and transcoder ablations against hand-written hooks; greedy
generation against transformers' `generate` at batch 1; ν against brute force."""

import pytest
import torch
import torch.nn.functional as F
from helpers import brute_force_mu, load_layer, mlp_input_hook, run_nu, transcoder_encode
from nu_artifacts import load_tiny
from tiny_models import MOE, MOE_DENSE_LAYERS, random_transcoder, tiny_qwen3_moe

from langsae import sweep
from langsae.ablation import Ablation, orthonormal_basis
from langsae.data import PAPER_LANGUAGES, load_texts
from langsae.forward import (
    collect_tokens,
    hidden_before_layer,
    logits_from_hidden,
    make_batches,
    run_from_layer,
)
from langsae.generate import greedy_generate
from langsae.model import ARCHITECTURES, HookPoint, architecture, hook_module

LAYERS = range(MOE["layers"])


@pytest.fixture(scope="module")
def moe_dir(tiny_model_dir, tmp_path_factory):
    """The tiny MoE saved with save_pretrained beside the tiny Qwen3's tokenizer (so `--model-id` can
    point a preset at it)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny_qwen3_moe")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.save_pretrained(out)
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    tiny_qwen3_moe(len(tok), **ids).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def moe(moe_dir):
    """(model, tokenizer, token ids of 6 texts of different lengths), loaded back as stages load it."""
    model, tok = load_tiny(moe_dir)
    texts, _ = load_texts(("eng_Latn", "fra_Latn", "jpn_Jpan"), "evaluation", 2).flat()
    ids = [tok(t)["input_ids"][: 6 + 5 * i] for i, t in enumerate(texts)]
    assert len({len(t) for t in ids}) == len(ids), "different lengths, so batches have padding"
    return model, tok, ids


def _sparse(layer: int) -> bool:
    return layer not in MOE_DENSE_LAYERS


def _mlp_by_hand(mlp, x: torch.Tensor, sparse: bool) -> torch.Tensor:
    """The MLP's output in float64 from its weights: for a sparse block, softmax router, top-2 experts,
    their weights renormalised to sum to 1, each a SwiGLU; for a dense one, one SwiGLU."""
    x = x.double()
    if not sparse:
        return mlp.down_proj.weight.double() @ (
            F.silu(mlp.gate_proj.weight.double() @ x) * (mlp.up_proj.weight.double() @ x)
        )
    probs = torch.softmax(mlp.gate.weight.double() @ x, -1)
    top = probs.topk(2)
    out = torch.zeros_like(x)
    for w, e in zip(top.values / top.values.sum(), top.indices):
        gate, up = (mlp.experts.gate_up_proj[e].double() @ x).chunk(2)
        out += w * (mlp.experts.down_proj[e].double() @ (F.silu(gate) * up))
    return out


def test_the_adapter_hooks_each_layers_mlp_sparse_or_dense(moe):
    model, _, _ = moe
    assert architecture(model) is ARCHITECTURES["qwen3_moe"]
    for L in LAYERS:
        layer = model.model.layers[L]
        assert hasattr(layer.mlp, "experts") == _sparse(L), "the fixture mixes sparse and dense layers"
        assert hook_module(model, HookPoint(L, "mlp", "input")) is layer.mlp
        assert hook_module(model, HookPoint(L, "mlp", "output")) is layer.mlp
        assert hook_module(model, HookPoint(L, "block", "output")) is layer


def _hand_hooks(model, L: int, seen: dict) -> list:
    """Hooks registered by hand: the post-attention norm's output (MLP input) and input (the residual the
    MLP's output is added to), and the decoder layer's output."""
    layer = model.model.layers[L]
    norm = layer.post_attention_layernorm
    return [
        norm.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp_in", out)),
        norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("resid", a[0])),
        layer.register_forward_hook(lambda m, a, out: seen.__setitem__("block", out)),
    ]


def test_engine_capture_equals_a_full_forward_at_every_hook_point(moe):
    """The engine's capture on padded batches of 4 (as the nu stage runs) against batch-1 full forwards:
    the MLP input is the post-attention norm's output, the block output the model's hidden state and what
    the layer returns, and the MLP output what the layer adds to the residual, equal to the MoE by hand."""
    model, tok, ids = moe
    points = {
        f"{io}{L}": HookPoint(L, m, io) for L in LAYERS for m, io in [("mlp", "input"), ("mlp", "output")]
    }
    points |= {f"block{L}": HookPoint(L, "block", "output") for L in LAYERS}
    batches = make_batches(ids, 4, tok.pad_token_id)
    got, text_of = collect_tokens(model, batches, points, lambda b: b.attention_mask.bool(), "capture")
    for i, t in enumerate(ids):
        seen: dict[int, dict] = {L: {} for L in LAYERS}
        handles = [h for L in LAYERS for h in _hand_hooks(model, L, seen[L])]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([t]), output_hidden_states=True).hidden_states
        for h in handles:
            h.remove()
        mine = text_of == i
        for L in LAYERS:
            ref = seen[L]
            torch.testing.assert_close(got[f"input{L}"][mine], ref["mlp_in"][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got[f"block{L}"][mine], ref["block"][0], atol=1e-5, rtol=1e-5)
            added = ref["block"][0] - ref["resid"][0]
            torch.testing.assert_close(got[f"output{L}"][mine], added, atol=1e-5, rtol=1e-4)
            mlp = model.model.layers[L].mlp
            by_hand = torch.stack([_mlp_by_hand(mlp, x, _sparse(L)) for x in ref["mlp_in"][0]])
            torch.testing.assert_close(got[f"output{L}"][mine].double(), by_hand, atol=1e-5, rtol=1e-4)
            if L + 1 < len(LAYERS):  # the last hidden state is after the final norm
                torch.testing.assert_close(got[f"block{L}"][mine], hidden[L + 1][0], atol=1e-5, rtol=1e-5)
    # the comparison can fail: the MoE's output is a sizeable part of the block's
    assert (got["block0"] - got["output0"]).norm() < 0.9 * got["block0"].norm()
    assert got["output0"].norm() > 0.1 * got["block0"].norm()


def test_run_from_layer_gives_the_full_forward_logits(moe):
    model, tok, ids = moe
    batch = make_batches(ids, len(ids), tok.pad_token_id)[0]
    real = batch.attention_mask.bool()
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for L in LAYERS:
        final = run_from_layer(model, hidden_before_layer(model, batch, L), batch.attention_mask, L)
        torch.testing.assert_close(logits_from_hidden(model, final)[real], full[real], atol=1e-5, rtol=1e-5)
    skipped = run_from_layer(model, hidden_before_layer(model, batch, 0), batch.attention_mask, 1)
    assert (logits_from_hidden(model, skipped)[real] - full[real]).abs().max() > 1e-3


def test_run_from_layer_with_sliding_window_attention(moe):
    """Qwen3-MoE configs may set use_sliding_window (then every layer slides, in the model's forward and in
    transformers' mask builder alike): running from each layer still gives the model's logits."""
    _, tok, ids = moe
    model = tiny_qwen3_moe(len(tok), use_sliding_window=True, sliding_window=3)
    plain = tiny_qwen3_moe(len(tok))
    batch = make_batches(ids, len(ids), tok.pad_token_id)[0]
    real = batch.attention_mask.bool()
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        unslid = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert (unslid[real] - full[real]).abs().max() > 1e-3, "the window must matter on these lengths"
    for L in LAYERS:
        final = run_from_layer(model, hidden_before_layer(model, batch, L), batch.attention_mask, L)
        torch.testing.assert_close(logits_from_hidden(model, final)[real], full[real], atol=1e-5, rtol=1e-5)


def _directional(layer: int, W_dec: torch.Tensor) -> Ablation:
    return Ablation(HookPoint(layer, "block", "output"), "directional", basis=orthonormal_basis(W_dec))


def _transcoder(layer: int, w: dict) -> Ablation:
    return Ablation(
        HookPoint(layer, "mlp", "output"), "feature", W_dec=w["W_dec"], W_enc=w["W_enc"], b_enc=w["b_enc"]
    )


def _hand_hook(model, kind: str, layer: int, w: dict):
    """A hook written by hand for one ablation, on the module a full forward runs: directional removes the
    span of W_dec's rows (an orthonormal basis by QR, float64) from the layer's output; transcoder subtracts
    ReLU(x W_enc^T + b_enc) W_dec from the MLP's output, x the MLP's own input."""
    if kind == "directional":
        Q, _ = torch.linalg.qr(w["W_dec"].double().T)

        def directional(m, a, out):
            h = out.double()
            return (h - (h @ Q) @ Q.T).to(out.dtype)

        return model.model.layers[layer].register_forward_hook(directional)

    def transcoder(m, args, out):
        acts = torch.relu(args[0].double() @ w["W_enc"].double().T + w["b_enc"].double())
        return (out.double() - acts @ w["W_dec"].double()).to(out.dtype)

    return model.model.layers[layer].mlp.register_forward_hook(transcoder)


def _reference_ce(model, ids: list[int], kind: str | None = None, layer: int = 0, w: dict | None = None):
    """One text, batch 1, the full forward (with the hand-written hook), CE from its logits."""
    handle = _hand_hook(model, kind, layer, w) if kind else None
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    finally:
        if handle:
            handle.remove()
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()


def _rows(seed: int, k: int) -> dict:
    """k random transcoder features (rows of W_enc, W_dec, b_enc), decoders scaled up so that removing
    them changes the CE measurably."""
    w = random_transcoder(MOE["hidden"], 96, seed)
    rows = torch.tensor([3, 17, 40, 77][:k])
    return {"W_enc": w["W_enc"][rows], "W_dec": w["W_dec"][rows] * 20, "b_enc": w["b_enc"][rows] + 1.0}


@pytest.mark.parametrize("kind", ["directional", "transcoder"])
def test_delta_ce_through_the_engine_equals_hand_written_hooks(moe, kind):
    """The ΔCE engine (padded batches of 4, layer-L input once, conditions stacked 2 per forward, chunked
    CE) at a sparse and a dense layer, against batch-1 full forwards with hooks written by hand."""
    model, tok, ids = moe
    batches = make_batches(ids, 4, tok.pad_token_id)
    base, _ = sweep.baseline_ce(model, batches, chunk_tokens=7)
    make = _directional if kind == "directional" else _transcoder
    refs_base = torch.tensor([_reference_ce(model, t) for t in ids], dtype=torch.float64)
    torch.testing.assert_close(base.double(), refs_base, atol=1e-5, rtol=1e-5)
    for L in LAYERS:
        ws = [_rows(10 * L + s, k) for s, k in [(1, 1), (2, 2), (3, 4)]]
        abls = [make(L, w["W_dec"]) if kind == "directional" else make(L, w) for w in ws]
        ce = sweep.ablated_ce(model, batches, L, abls, max_rows=8, chunk_tokens=7)
        for c, w in enumerate(ws):
            ref = (
                torch.tensor([_reference_ce(model, t, kind, L, w) for t in ids], dtype=torch.float64)
                - refs_base
            )
            torch.testing.assert_close((ce[c] - base).double(), ref, atol=2e-5, rtol=1e-4)
        assert (ce - base).abs().max() > 1e-3, "the ablations must change the CE"


def _hf_generate(model, prompt: list[int], stops: list[int], pad: int, max_new: int) -> list[int]:
    """transformers' own greedy `generate`, batch 1, no padding, cut after the first stop token."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new, eos_token_id=stops, pad_token_id=pad)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), generation_config=cfg)
    new = out[0, len(prompt) :].tolist()
    return new[: next((j + 1 for j, t in enumerate(new) if t in stops), len(new))]


def test_greedy_generation_equals_hf_generate_batch1(moe):
    """The project's engine (left-padded, KV-cached, conditions stacked) against HF `generate` at batch 1:
    unedited, a transcoder ablation at the first MoE block (so every later router sees edited input) and a
    directional one at the last, each applied during HF's generate by a hand-written hook."""
    model, tok, ids = moe
    prompts = [t[: 3 + 2 * i] for i, t in enumerate(ids)]
    assert len({len(p) for p in prompts}) == len(prompts), "chunks of 4 prompts must hold left padding"
    stops = [tok.eos_token_id]
    hand = [(None, 0, None), ("transcoder", 0, _rows(4, 3)), ("directional", 2, _rows(5, 2))]
    conditions = [None, _transcoder(0, hand[1][2]), _directional(2, hand[2][2]["W_dec"])]
    got = greedy_generate(model, prompts, conditions, stops, tok.pad_token_id, 10, rows_per_forward=12)
    for c, (kind, layer, w) in enumerate(hand):
        for i, p in enumerate(prompts):
            handle = _hand_hook(model, kind, layer, w) if kind else None
            try:
                want = _hf_generate(model, p, stops, tok.pad_token_id, 10)
            finally:
                if handle:
                    handle.remove()
            assert got[c][i] == want, (c, i)
    assert got[1] != got[0] and got[2] != got[0], "each ablation must change some continuation"
    assert len({tuple(g) for g in got[0]}) > 1, "continuations must depend on the prompt"


def test_nu_on_the_moe_matches_brute_force(moe_dir, tiny_transcoders, tmp_path):
    """The nu stage, pointed at the MoE by --model-id with the tiny mwhanna transcoders, against per-text
    batch-1 forwards with a hand hook on each layer's MLP (a sparse block at 0 and 2, dense at 1)."""
    assert tiny_transcoders[0]["W_enc"].shape[1] == MOE["hidden"]
    args = ["--model", "qwen3-0.6b", "--model-id", str(moe_dir), "--device", "cpu", "--dtype", "float32"]
    assert run_nu(args, tmp_path, "--batch-size", "4") == 0
    k = len(PAPER_LANGUAGES)
    for L in LAYERS:
        mu = brute_force_mu(moe_dir, mlp_input_hook(L), transcoder_encode(tiny_transcoders[L]))
        got = load_layer(tmp_path, L)
        torch.testing.assert_close(got["mean_acts"].double(), mu, atol=1e-5, rtol=1e-4)
        nu_ref = torch.stack([mu[i] - (mu.sum(0) - mu[i]) / (k - 1) for i in range(k)])
        torch.testing.assert_close(
            torch.gather(nu_ref, 1, got["indices"]).float(), got["values"], atol=1e-5, rtol=1e-4
        )
