"""Steering building blocks: vectors against a brute-force mean difference, the gate against the
features' own activations, the multi-layer gate decided from the unsteered state, alpha = 0 as the
identity, per-row conditions, and a KV-cached decode step."""

import pytest
import torch
from nu_artifacts import load_tiny, write_fake_nu

from langsae import steering
from langsae.config import build_parser, resolve
from langsae.data import load_texts
from langsae.features import load_nu_results
from langsae.forward import capture
from langsae.model import HookPoint
from langsae.steering import Steering, make_gate, steer

LANGS = ["eng_Latn", "fra_Latn", "jpn_Jpan"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_tiny(tiny_model_dir)


@pytest.fixture(scope="module")
def texts():
    return load_texts(tuple(LANGS), "selection", 4)


@pytest.fixture(scope="module")
def nu(tiny_args, tiny_transcoders, tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "run"
    cfg = resolve(
        build_parser("t").parse_args([*tiny_args, "--out-dir", str(out), "--languages", ",".join(LANGS)])
    )
    write_fake_nu(out, cfg.describe(), tiny_transcoders, LANGS, top_k=3, pool=6)
    return load_nu_results(cfg, None, 3)


def _ids(tok, text, n=12):
    return torch.tensor([tok(text)["input_ids"][:n]])


def _block_out(model, ids, layer, ctx=None):
    """Block `layer`'s output [T, d] of one forward, under ctx (entered first, so the capture sees its
    edits)."""
    from contextlib import nullcontext

    with (
        ctx or nullcontext(),
        capture(model, {"h": HookPoint(layer, "block", "output")}) as store,
        torch.no_grad(),
    ):
        model(ids)
        return store["h"][0]


def test_vectors_equal_a_brute_force_mean_difference(tiny, texts, tmp_path):
    model, tok = tiny
    got = steering.mean_residuals(model, tok, texts, [0, 2], batch_size=3)
    for L in (0, 2):
        means = {}
        for lang in LANGS:
            rows = []
            for t in texts.by_language[lang]:  # batch 1, no padding; position 0 left out
                rows.append(_block_out(model, torch.tensor([tok(t)["input_ids"]]), L)[1:])
            means[lang] = torch.cat(rows).double().mean(0)
        torch.testing.assert_close(
            got[L].vector("eng_Latn", "jpn_Jpan").double(),
            means["jpn_Jpan"] - means["eng_Latn"],
            atol=1e-5,
            rtol=1e-4,
        )
        assert int(got[L].n_tokens[0]) == sum(
            len(tok(t)["input_ids"]) - 1 for t in texts.by_language["eng_Latn"]
        )
    # saved per layer and pair, and read back only with the same config hash
    steering.save_vectors(tmp_path, got[2], "h1", {"x": 1})
    back = steering.load_vectors(tmp_path, 2, "h1")
    torch.testing.assert_close(back.vector("fra_Latn", "eng_Latn"), got[2].vector("fra_Latn", "eng_Latn"))
    saved = torch.load(steering.vectors_path(tmp_path, 2), weights_only=True)
    assert len(saved["pairs"]) == 6 and saved["vectors"].shape[0] == 6
    assert steering.load_vectors(tmp_path, 2, "other") is None


def test_steering_vectors_resume(tiny, texts, tmp_path, monkeypatch):
    model, tok = tiny
    first, todo = steering.steering_vectors(model, tok, texts, [0, 1], tmp_path, "h", {}, 4)
    assert todo == [0, 1]
    monkeypatch.setattr(steering, "mean_residuals", lambda *a, **k: pytest.fail("recomputed"))
    again, todo = steering.steering_vectors(model, tok, texts, [0, 1], tmp_path, "h", {}, 4)
    assert todo == [] and torch.equal(again[1].mean, first[1].mean)


def _vec(d, n=1, seed=0):
    return torch.randn(1, n, d, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_leaves_the_forward_unchanged(tiny, nu, texts):
    model, tok = tiny
    ids = _ids(tok, texts.by_language["fra_Latn"][0])
    d = model.config.hidden_size
    with torch.no_grad():
        base = model(ids).logits
        ref_tokens = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    gate = make_gate(nu.layers[1], [nu.layers[1].top("fra_Latn", [1, 2, 3])])
    for g in (None, gate):
        s = Steering(1, _vec(d, 2) * 100, torch.zeros(1), g)
        with steer(model, s), torch.no_grad():
            assert torch.equal(model(ids).logits, base)
            assert torch.equal(
                model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id),
                ref_tokens,
            )


def test_sv_adds_alpha_v_everywhere(tiny, texts):
    model, tok = tiny
    ids = _ids(tok, texts.by_language["eng_Latn"][1])
    v = _vec(model.config.hidden_size)
    diff = _block_out(model, ids, 1, steer(model, Steering(1, v, torch.tensor([2.5])))) - _block_out(
        model, ids, 1
    )
    torch.testing.assert_close(diff, (2.5 * v[0, 0]).expand_as(diff))


def _brute_force_open(model, ids, lf, feats, transcoder):
    """Where any of `feats` is active at layer lf.layer's MLP input, from the full transcoder weights:
    [T] bool."""
    with capture(model, {"x": HookPoint(lf.layer, "mlp", "input")}) as store, torch.no_grad():
        model(ids)
    acts = torch.relu(store["x"][0] @ transcoder["W_enc"][feats].T + transcoder["b_enc"][feats])
    return (acts > 0).any(-1)


def _pick_gate_features(model, ids, lf, transcoder):
    """Saved features (top-k or controls) that open some positions and not others, so the test can fail."""
    saved = lf.feature_indices.tolist()
    for f in saved:
        m = _brute_force_open(model, ids, lf, [f], transcoder)
        if 0 < int(m.sum()) < len(m):
            return [f], m
    pytest.skip("no saved feature is active on part of the text")


def test_gate_fires_exactly_where_the_chosen_features_are_active(tiny, nu, tiny_transcoders, texts):
    model, tok = tiny
    ids = _ids(tok, texts.by_language["jpn_Jpan"][0], 20)
    lf = nu.layers[1]
    feats, expected = _pick_gate_features(model, ids, lf, tiny_transcoders[1])
    v = _vec(model.config.hidden_size)
    s = Steering(1, v, torch.tensor([3.0]), make_gate(lf, [feats]))
    diff = _block_out(model, ids, 1, steer(model, s)) - _block_out(model, ids, 1)
    moved = diff.abs().amax(-1) > 0
    assert torch.equal(moved, expected)
    torch.testing.assert_close(diff[expected], (3.0 * v[0, 0]).expand_as(diff[expected]))


def test_multi_layer_gate_is_decided_once_from_the_unsteered_state(tiny, nu, tiny_transcoders, texts):
    """Steering at layers 1 and 2: layer 2 adds alpha * v_2 exactly where layer 1's gate opened on the
    unsteered state, although the steering at layer 1 changes what the gate's features read."""
    model, tok = tiny
    ids = _ids(tok, texts.by_language["jpn_Jpan"][0], 20)
    lf = nu.layers[1]
    feats, expected = _pick_gate_features(model, ids, lf, tiny_transcoders[1])
    v = _vec(model.config.hidden_size, n=2, seed=3)
    w = tiny_transcoders[1]
    for alpha in (-4.0, -16.0, 16.0, 64.0):  # a strength at which a gate re-read at layer 2 would switch
        s = Steering(1, v, torch.tensor([alpha]), make_gate(lf, [feats]))
        with (
            steer(model, Steering(1, v[:, :1], torch.tensor([alpha]), make_gate(lf, [feats]))),
            capture(model, {"x": HookPoint(2, "mlp", "input")}) as st,
            torch.no_grad(),
        ):
            model(ids)  # layer 2's MLP input after the steering at layer 1: what the earlier port's gate read
        reread = (torch.relu(st["x"][0] @ w["W_enc"][feats].T + w["b_enc"][feats]) > 0).any(-1)
        if not torch.equal(reread, expected):
            break
    else:
        pytest.skip("no strength made a re-read gate differ on this fixture")
    point = {"before": HookPoint(2, "block", "output")}
    with capture(model, point) as raw, steer(model, s), capture(model, point) as edited, torch.no_grad():
        model(ids)  # `raw` is registered before the edit at layer 2, `edited` after it
    diff = edited["before"][0] - raw["before"][0]
    # layer 2 is steered where the unsteered gate opened, not where the re-read one would
    assert torch.equal(diff.abs().amax(-1) > 0, expected)
    torch.testing.assert_close(diff[expected], (alpha * v[0, 1]).expand_as(diff[expected]))


def test_rows_are_steered_independently(tiny, nu, texts):
    """Two conditions stacked along the batch give what each gives alone."""
    model, tok = tiny
    lf = nu.layers[0]
    ids = torch.cat(
        [_ids(tok, texts.by_language["eng_Latn"][0]), _ids(tok, texts.by_language["fra_Latn"][0])]
    )
    d = model.config.hidden_size
    vectors = torch.cat([_vec(d, 1, 1), _vec(d, 1, 2)])
    feats = [lf.top("eng_Latn", [1, 2, 3]), lf.top("fra_Latn", [1])]
    both = Steering(0, vectors, torch.tensor([2.0, -1.5]), make_gate(lf, feats))
    with steer(model, both), torch.no_grad():
        stacked = model(ids).logits
    for r in range(2):
        alone = Steering(0, vectors[r : r + 1], both.alpha[r : r + 1], make_gate(lf, [feats[r]]))
        with steer(model, alone), torch.no_grad():
            torch.testing.assert_close(stacked[r], model(ids[r : r + 1]).logits[0], atol=1e-5, rtol=1e-5)


def test_a_kv_cached_decode_step_is_steered_like_a_full_forward(tiny, nu, texts):
    model, tok = tiny
    lf = nu.layers[1]
    ids = _ids(tok, texts.by_language["jpn_Jpan"][1], 14)
    s = Steering(
        1,
        _vec(model.config.hidden_size, 2, 5),
        torch.tensor([3.0]),
        make_gate(lf, [lf.top("jpn_Jpan", [1, 2, 3])]),
    )
    with steer(model, s), torch.no_grad():
        full = model(ids).logits[0, -1]
        prefill = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits[0, -1], full)  # the steering did change the prediction


def test_random_direction_has_the_norm_of_v_and_is_seeded():
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    r = steering.random_direction_like(v, seed=7)
    assert r.norm().item() == pytest.approx(v.norm().item(), rel=1e-6)
    assert torch.equal(r, steering.random_direction_like(v, seed=7)) and not torch.equal(
        r, steering.random_direction_like(v, seed=8)
    )


def test_a_gate_must_be_decided_at_the_first_steered_layer(tiny, nu):
    model, _ = tiny
    s = Steering(
        0,
        torch.zeros(1, 2, model.config.hidden_size),
        torch.ones(1),
        make_gate(nu.layers[1], [nu.layers[1].top("eng_Latn", [1])]),
    )
    with pytest.raises(ValueError, match="first steered layer"):
        with steer(model, s):
            pass


# ----------------------------------------------------------------------------- through the generation engine


@pytest.fixture(scope="module")
def untied(tiny_model_dir):
    """The tiny Qwen3 with a separate random unembedding (the tied one only repeats its last input token,
    so its generations could not show a steering edit)."""
    from transformers import Qwen3ForCausalLM

    model, tok = load_tiny(tiny_model_dir)
    cfg = model.config
    cfg.tie_word_embeddings = False
    torch.manual_seed(1)
    return Qwen3ForCausalLM(cfg).eval(), tok


def _steer_reference(model, prompt, s, stop, max_new):
    """Greedy, batch 1, no cache: the full forward of prompt + tokens so far at every step, under `steer`."""
    from contextlib import nullcontext

    ids, out = list(prompt), []
    for _ in range(max_new):
        with steer(model, s) if s is not None else nullcontext(), torch.no_grad():
            t = int(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax())
        out.append(t)
        ids.append(t)
        if t in stop:
            break
    return out


def _engine_conditions(model, nu):
    """No steering, alpha = 0 (sv and gated), sv over two layers, and two gated conditions sharing one
    encoder."""
    d = model.config.hidden_size
    lf = nu.layers[1]
    gate = make_gate(lf, [lf.top("fra_Latn", [1, 2, 3]), lf.top("jpn_Jpan", [1, 2, 3])])
    one = lambda g, r: steering.Gate(g.encoder, g.rows[r : r + 1])  # noqa: E731
    return [
        None,
        Steering(1, _vec(d, 2, 1) * 50, torch.zeros(1)),
        Steering(1, _vec(d, 2, 2) * 50, torch.zeros(1), one(gate, 0)),
        Steering(0, _vec(d, 2, 3), torch.tensor([8.0])),
        Steering(1, _vec(d, 2, 4), torch.tensor([20.0]), one(gate, 0)),
        Steering(1, _vec(d, 2, 5), torch.tensor([-20.0]), one(gate, 1)),
    ]


@pytest.mark.parametrize("rows", [64, 5])
def test_steering_through_the_engine_equals_an_uncached_batch1_loop(untied, nu, texts, rows):
    """Stacked steering conditions in the batched, KV-cached engine give the tokens of batch-1 uncached
    generation under each condition alone; alpha = 0 gives exactly the unsteered tokens."""
    from langsae.generate import greedy_generate, stop_token_ids

    model, tok = untied
    prompts = [
        tok(t)["input_ids"][:n]
        for t, n in zip(texts.by_language["jpn_Jpan"][:2] + texts.by_language["fra_Latn"][:1], (9, 14, 6))
    ]
    conditions = _engine_conditions(model, nu)
    stops = [tok.eos_token_id]
    got = greedy_generate(
        model, prompts, conditions, stops, tok.pad_token_id, 6, rows, stack=steering.stacked_steering
    )
    for c, s in enumerate(conditions):
        for i, p in enumerate(prompts):
            assert got[c][i] == _steer_reference(model, p, s, set(stops), 6), (c, i)
    assert got[1] == got[0] and got[2] == got[0]  # alpha = 0
    assert any(got[c] != got[0] for c in range(3, len(conditions)))  # the steering does something
    assert stop_token_ids(tok, model)  # (the engine's usual stops exist; continuation uses EOS only)


def test_steered_loglik_equals_a_manual_sum(untied, nu, texts):
    from langsae.generate import continuation_logprobs

    model, tok = untied
    ids = tok(texts.by_language["eng_Latn"][0])["input_ids"][:12]
    conditions = _engine_conditions(model, nu)
    got = continuation_logprobs(
        model,
        [ids[:1], ids[:5]],
        [ids[1:], ids[5:]],
        conditions,
        tok.pad_token_id,
        stack=steering.stacked_steering,
    )
    for c, s in enumerate(conditions):
        from contextlib import nullcontext

        with steer(model, s) if s is not None else nullcontext(), torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        for i, start in enumerate((1, 5)):
            want = sum(float(logp[t - 1, ids[t]]) for t in range(start, len(ids)))
            assert got[c, i] == pytest.approx(want, abs=1e-4), (c, i)


def test_build_edits_gives_each_method_its_vector_and_gate(nu):
    """`gated` is gated by the source's top-k, `random_gate` by control-pool features, `random_dir`
    steers along a direction of the same norm as each layer's vector, `sv` has no gate."""
    from langsae import steer_eval as se

    d = nu.layers[1].W_enc.shape[1]
    g = torch.Generator().manual_seed(0)
    vectors = {
        L: steering.SteeringVectors(
            L, tuple(LANGS), torch.randn(len(LANGS), d, generator=g), torch.ones(len(LANGS))
        )
        for L in (1, 2)
    }
    src, tgt = "fra_Latn", "eng_Latn"
    conds = [
        se.SteerCondition(se.NONE, src, tgt),
        se.SteerCondition(se.SV, src, tgt, 1, 2, 4.0),
        se.SteerCondition(se.GATED, src, tgt, 1, 2, 4.0),
        se.SteerCondition(se.RANDOM_DIR, src, tgt, 1, 2, 4.0, 0),
        se.SteerCondition(se.RANDOM_GATE, src, tgt, 1, 1, 4.0, 0),
    ]
    none, sv, gated, rdir, rgate = se.build_edits(conds, vectors, nu, gate_k=2, seed=0)
    want = torch.stack([vectors[L].vector(src, tgt) for L in (1, 2)])
    assert none is None and sv.gate is None and rdir.gate is None
    torch.testing.assert_close(sv.vectors[0], want)
    torch.testing.assert_close(gated.vectors[0], want)
    torch.testing.assert_close(rdir.vectors[0].norm(dim=-1), want.norm(dim=-1))
    assert (rdir.vectors[0] - want).abs().max() > 0.1  # another direction
    lf = nu.layers[1]

    def gate_features(s):
        return {f for f, on in zip(s.gate.encoder.features, s.gate.rows[0].tolist()) if on}

    assert gate_features(gated) == set(lf.top(src, [1, 2]))
    assert gate_features(rgate) <= set(lf.control_indices.tolist()) and len(gate_features(rgate)) == 2
