"""The nu stage against brute force, invariances, resume, and the real sae-lens loading path."""

import json
import shutil
import threading
import weakref

import pytest
import torch
from helpers import N_TEXTS, brute_force_mu, load_layer, mlp_input_hook, run_nu, transcoder_encode

from langsae import nu
from langsae.data import PAPER_LANGUAGES
from langsae.stages import nu as compute_nu_scores


@pytest.fixture(scope="module")
def nu_run(tiny_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("nu_run")
    assert run_nu(tiny_args, out, "--batch-size", "4") == 0
    return out


def test_nu_matches_brute_force(nu_run, tiny_model_dir, tiny_transcoders):
    for layer in (0, 2):
        mu_ref = brute_force_mu(
            tiny_model_dir, mlp_input_hook(layer), transcoder_encode(tiny_transcoders[layer])
        )
        got = load_layer(nu_run, layer)
        torch.testing.assert_close(got["mean_acts"].double(), mu_ref, atol=1e-5, rtol=1e-4)
        # nu by its definition, language by language
        k = len(PAPER_LANGUAGES)
        nu_ref = torch.stack([mu_ref[i] - (mu_ref.sum(0) - mu_ref[i]) / (k - 1) for i in range(k)])
        ranked = torch.gather(nu_ref, 1, got["indices"])
        torch.testing.assert_close(ranked.float(), got["values"], atol=1e-5, rtol=1e-4)
        assert torch.all(got["values"][:, :-1] >= got["values"][:, 1:]), "not sorted descending"
        assert sorted(got["indices"][0].tolist()) == list(range(got["indices"].shape[1])), "not a permutation"


def test_text_weighting_matches_brute_force(tiny_args, tiny_model_dir, tiny_transcoders, tmp_path):
    assert run_nu(tiny_args, tmp_path, "--layers", "1", "--weighting", "text") == 0
    mu_ref = brute_force_mu(tiny_model_dir, mlp_input_hook(1), transcoder_encode(tiny_transcoders[1]), "text")
    torch.testing.assert_close(load_layer(tmp_path, 1)["mean_acts"].double(), mu_ref, atol=1e-5, rtol=1e-4)


def test_padding_and_batch_size_do_not_change_nu(nu_run, tiny_args, tmp_path):
    assert run_nu(tiny_args, tmp_path, "--batch-size", "1", "--layers", "0,2") == 0
    for layer in (0, 2):
        a, b = load_layer(nu_run, layer), load_layer(tmp_path, layer)
        torch.testing.assert_close(a["mean_acts"], b["mean_acts"], atol=1e-6, rtol=1e-5)


def test_position_zero_is_excluded():
    from langsae.forward import make_batches

    (batch,) = make_batches([[5, 6, 7], [8]], batch_size=2, pad_id=0)
    assert batch.statistic_mask().tolist() == [[False, True, True], [False, False, False]]


def test_hook_reads_post_attention_layernorm_output_after_gain(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from langsae.forward import Batch, capture, run_through_layer
    from langsae.model import HookPoint, hook_point

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    layer = model.model.layers[1]
    seen = {}
    h = layer.post_attention_layernorm.register_forward_hook(lambda m, a, out: seen.__setitem__("ln", out))
    h2 = layer.post_attention_layernorm.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("resid", a[0])
    )
    ids = torch.tensor([[3, 40, 41, 42, 7]])
    with capture(model, {"x": hook_point("blocks.1.mlp.hook_in")}) as store:
        run_through_layer(model, Batch(ids, torch.ones_like(ids), [0]), 1)
    h.remove(), h2.remove()
    assert hook_point("blocks.1.mlp.hook_in") == HookPoint(1, "mlp", "input")
    assert torch.equal(store["x"], seen["ln"])
    pre_gain = seen["ln"] / layer.post_attention_layernorm.weight
    assert not torch.allclose(store["x"], pre_gain), "fixture gains must make pre- and post-gain differ"
    assert not torch.allclose(store["x"], seen["resid"])


def test_directions_hold_the_transcoders_rows(nu_run, tiny_transcoders):
    d = load_layer(nu_run, 1)["directions"]
    w = tiny_transcoders[1]
    feats = d["feature_indices"]
    assert set(d["top_indices"].flatten().tolist()) <= set(feats.tolist())
    assert not set(d["control_indices"].tolist()) & set(d["top_indices"].flatten().tolist())
    torch.testing.assert_close(d["W_dec"], w["W_dec"][feats])
    torch.testing.assert_close(d["W_enc"], w["W_enc"][feats])  # hub layout is [d_sae, d_in]: rows
    torch.testing.assert_close(d["b_enc"], w["b_enc"][feats])
    assert d["hook_name"] == "blocks.1.mlp.hook_in" and d["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert torch.equal(d["top_indices"], load_layer(nu_run, 1)["indices"][:, :5])


def test_meta_and_top20(nu_run, tiny_model_dir):
    meta = json.loads((nu_run / nu.META_FILE).read_text())
    assert meta["languages"] == list(PAPER_LANGUAGES) and meta["layers"] == [0, 1, 2]
    depth = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    assert meta["num_hidden_layers"] == depth  # compare_runs.py's depth, without the model's config
    assert meta["stage"] == compute_nu_scores.STAGE.name == "nu"
    assert meta["sae_release"] == "mwhanna-qwen3-0.6b-transcoders-lowl0" and meta["sae_ids"]["2"] == "layer_2"
    assert "excluded" in meta["position_0"] and meta["n_texts"]["eng_Latn"] == N_TEXTS
    assert all(v > 0 for v in meta["token_counts"].values())
    top20 = json.loads((nu_run / "layer_2_top20.json").read_text())
    first = top20["kor_Hang"][0]
    assert first["neuronpedia"] == f"qwen3-0.6b/2-transcoder-hp-lowl0/{first['feature']}"
    assert first["feature"] == int(load_layer(nu_run, 2)["indices"][4, 0])


def test_each_transcoder_loaded_once_and_finished_layers_skipped(tiny_args, tmp_path, monkeypatch):
    calls = []
    real = compute_nu_scores.load_sae
    monkeypatch.setattr(compute_nu_scores, "load_sae", lambda p, L, *a: calls.append(L) or real(p, L, *a))
    assert run_nu(tiny_args, tmp_path) == 0
    assert calls == [0, 1, 2], "each layer once, in order: the prefetch must not load a layer twice"
    assert run_nu(tiny_args, tmp_path) == 0
    assert calls == [0, 1, 2], "a finished layer with a matching config must be skipped"
    assert run_nu(tiny_args, tmp_path, "--layers", "1", "--force") == 0
    assert calls == [0, 1, 2, 1]
    assert run_nu(tiny_args, tmp_path, "--layers", "1", "--languages", "eng_Latn,fra_Latn") == 0
    assert calls == [0, 1, 2, 1, 1], "another config must recompute"
    meta = json.loads((tmp_path / nu.META_FILE).read_text())
    assert meta["layers"] == [1] and meta["languages"] == ["eng_Latn", "fra_Latn"]
    assert not prefetch_threads(), "the prefetch thread must end with the stage"


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("prefetch")]


def test_prefetch_loads_in_the_background_one_ahead_across_passes(tiny_args, nu_run, tmp_path, monkeypatch):
    """One model pass per layer (--cache-gb tiny): the prefetch spans the passes, each SAE is read
    once, off the main thread, and at most one SAE is alive besides the one being read."""
    real = compute_nu_scores.load_sae
    alive, log = [], []

    def tracked(p, L, *a):
        log.append(
            (L, threading.current_thread() is threading.main_thread(), sum(r() is not None for r in alive))
        )
        sae = real(p, L, *a)
        alive.append(weakref.ref(sae))
        return sae

    monkeypatch.setattr(compute_nu_scores, "load_sae", tracked)
    assert run_nu(tiny_args, tmp_path, "--batch-size", "4", "--cache-gb", "1e-9") == 0
    assert [L for L, _, _ in log] == [0, 1, 2]
    assert not any(on_main for _, on_main, _ in log), "SAEs must be read by the prefetch thread"
    assert max(n for _, _, n in log) <= 1, f"more than one SAE alive when a read started: {log}"
    for layer in range(3):  # three passes, same bytes as one pass
        for name, path in nu.layer_files(tmp_path, layer).items():
            assert path.read_bytes() == nu.layer_files(nu_run, layer)[name].read_bytes(), (
                f"layer {layer} {name}"
            )


def test_missing_sae_file_is_the_same_one_line_error(tiny_args, tmp_path, monkeypatch, capsys):
    """A load that fails in the prefetch thread stops the stage at that layer with the one-line
    error a load in the main thread gives; earlier layers are complete, nothing is half-written."""
    from huggingface_hub import constants

    from langsae.config import PRESETS
    from langsae.errors import UserError
    from langsae.model import load_sae

    hub = tmp_path / "hub"
    shutil.copytree(constants.HF_HUB_CACHE, hub)
    (snapshot,) = (hub / "models--mwhanna--qwen3-0.6b-transcoders-lowl0" / "snapshots").iterdir()
    (snapshot / "layer_1.safetensors").unlink()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(UserError) as direct:  # the message of a load in the main thread
        load_sae(PRESETS["qwen3-0.6b"], 1, "cpu", torch.float32)

    calls = []
    real = compute_nu_scores.load_sae
    monkeypatch.setattr(compute_nu_scores, "load_sae", lambda p, L, *a: calls.append(L) or real(p, L, *a))
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_nu(tiny_args, out) == 2
    err = capsys.readouterr().err  # progress bars, then the error
    last_line = err.replace("\r", "\n").rstrip("\n").split("\n")[-1]
    assert last_line == f"error: {direct.value}" and err.count("error:") == 1 and "layer_1" in last_line
    assert calls == [0, 1], "no layer after the failed one is read"
    assert nu.layer_done(out, 0, json.loads(nu.layer_files(out, 0)["done"].read_text())["config_hash"])
    assert not any(p.exists() for p in nu.layer_files(out, 1).values()), "layer 1 must have no file at all"
    assert not any(p.exists() for p in nu.layer_files(out, 2).values())
    assert not list(out.glob(".*tmp")) and not list(out.glob("*tmp*")), "no temporary file may be left behind"
    assert not prefetch_threads()


def bits(t):
    """The tensor's raw bits as integers: equal bits, not merely equal values (0.0 vs -0.0)."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.filterwarnings("ignore:(?s).*model_from_pretrained_kwargs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_sae_equals_sae_lens_bit_for_bit(tiny_transcoders, dtype):
    """load_sae (sae-lens on the CPU, pages read, then moved) gives sae-lens's own weights exactly."""
    from sae_lens import SAE

    from langsae.config import PRESETS
    from langsae.model import load_sae

    for layer in range(3):
        ours = load_sae(PRESETS["qwen3-0.6b"], layer, "cpu", dtype)
        ref = SAE.from_pretrained(
            "mwhanna-qwen3-0.6b-transcoders-lowl0", f"layer_{layer}", device="cpu", dtype=str(dtype)[6:]
        )
        assert ours.state_dict().keys() == ref.state_dict().keys()
        for name, t in ref.state_dict().items():
            got = ours.state_dict()[name]
            assert got.dtype == t.dtype == dtype and got.shape == t.shape, name
            assert torch.equal(bits(got), bits(t)), name
        assert torch.equal(ours.W_enc, tiny_transcoders[layer]["W_enc"].T.to(dtype)), (
            "hub layout is [d_sae, d_in]"
        )


def test_interrupted_run_resumes_to_identical_files(tiny_args, nu_run, tmp_path, monkeypatch):
    real = nu.save_layer

    def dies_on_layer_1(out_dir, layer, *a):
        if layer == 1:
            raise KeyboardInterrupt  # as if killed while writing layer 1
        real(out_dir, layer, *a)

    monkeypatch.setattr(nu, "save_layer", dies_on_layer_1)
    with pytest.raises(KeyboardInterrupt):
        run_nu(tiny_args, tmp_path, "--batch-size", "4")
    assert nu.layer_files(tmp_path, 0)["done"].exists() and not nu.layer_files(tmp_path, 1)["done"].exists()
    assert not list(tmp_path.glob(".*tmp")), "no temporary file may be left behind"
    monkeypatch.setattr(nu, "save_layer", real)
    assert run_nu(tiny_args, tmp_path, "--batch-size", "4") == 0
    for layer in range(3):
        for name, path in nu.layer_files(tmp_path, layer).items():
            assert path.read_bytes() == nu.layer_files(nu_run, layer)[name].read_bytes(), (
                f"layer {layer} {name}"
            )


def custom_sae_args(model_dir, release: str) -> list[str]:
    """Flags for a custom model with a sae-lens-format SAE release (ids layer_L/width_16k/canonical),
    layer 1 only."""
    flags = (
        "--model custom --device cpu --dtype float32 --layers 1"  # then the two that hold a path or a name
    )
    return [
        *flags.split(),
        "--model-id",
        str(model_dir),
        "--sae-release",
        release,
        "--sae-id-template",
        "layer_{layer}/width_16k/canonical",
    ]


def jumprelu_by_hand(sae):
    """JumpReLU encode in float64 by hand, input shifted by b_dec (apply_b_dec_to_input)."""

    def encode(x):
        pre = (x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
        return torch.relu(pre) * (pre > sae.threshold.double())

    return encode


def test_residual_sae_path(tiny_model_dir, tiny_residual_saes, tmp_path):
    assert run_nu(custom_sae_args(tiny_model_dir, "test-org/tiny-res-sae"), tmp_path) == 0
    sae = tiny_residual_saes[1]
    encode = jumprelu_by_hand(sae)

    def block_output_hook(model, seen):
        return model.model.layers[1].register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))

    mu_ref = brute_force_mu(tiny_model_dir, block_output_hook, encode)
    got = load_layer(tmp_path, 1)
    torch.testing.assert_close(got["mean_acts"].double(), mu_ref, atol=1e-5, rtol=1e-4)
    assert got["directions"]["hook_name"] == got["directions"]["hook_name_out"] == "blocks.1.hook_resid_post"
    torch.testing.assert_close(
        got["directions"]["threshold"], sae.threshold.detach()[got["directions"]["feature_indices"]]
    )


# ----------------------------------------------------------------------------- Gemma 2 hook points and BOS


def test_gemma2_hook_points_are_transformer_lens_s():
    """On Gemma 2, mlp.hook_in is the MLP module's input (pre_feedforward_layernorm's output, after its
    gain) and hook_mlp_out is post_feedforward_layernorm's output, as in TransformerLens; not the raw MLP
    output."""
    from tiny_models import tiny_gemma2

    from langsae.forward import Batch, capture, run_through_layer
    from langsae.model import hook_point

    model = tiny_gemma2()
    layer = model.model.layers[1]
    seen = {}
    hooks = [
        layer.pre_feedforward_layernorm.register_forward_hook(
            lambda m, a, out: seen.__setitem__("pre_norm", out)
        ),
        layer.mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out)),
        layer.post_feedforward_layernorm.register_forward_hook(
            lambda m, a, out: seen.__setitem__("post_norm", out)
        ),
    ]
    ids = torch.tensor([[3, 40, 41, 42, 7]])
    points = {"in": hook_point("blocks.1.mlp.hook_in"), "out": hook_point("blocks.1.hook_mlp_out")}
    with capture(model, points) as store:
        run_through_layer(model, Batch(ids, torch.ones_like(ids), [0]), 1)
    for h in hooks:
        h.remove()
    assert torch.equal(store["in"], seen["pre_norm"])
    assert torch.equal(store["out"], seen["post_norm"])
    assert not torch.allclose(store["out"], seen["mlp"], atol=1e-3), (
        "random norm gains must make the two differ"
    )


def test_mlp_output_sae_on_gemma2_reads_post_feedforward_layernorm(
    tiny_gemma2_dir, tiny_mlp_out_saes, tmp_path
):
    """The nu stage, end to end from sae-lens's own files, with an SAE reading blocks.1.hook_mlp_out on a
    Gemma 2 whose tokenizer adds BOS: mu equals a brute force hooked on post_feedforward_layernorm."""
    assert run_nu(custom_sae_args(tiny_gemma2_dir, "test-org/tiny-mlp-out-sae"), tmp_path) == 0
    sae = tiny_mlp_out_saes[1]
    encode = jumprelu_by_hand(sae)

    def post_norm_hook(model, seen):
        return model.model.layers[1].post_feedforward_layernorm.register_forward_hook(
            lambda m, a, out: seen.__setitem__("x", out)
        )

    def raw_mlp_hook(model, seen):
        return model.model.layers[1].mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))

    got = load_layer(tmp_path, 1)["mean_acts"].double()
    torch.testing.assert_close(
        got, brute_force_mu(tiny_gemma2_dir, post_norm_hook, encode), atol=1e-5, rtol=1e-4
    )
    assert not torch.allclose(got, brute_force_mu(tiny_gemma2_dir, raw_mlp_hook, encode), atol=1e-3)
    meta = json.loads((tmp_path / nu.META_FILE).read_text())
    assert "BOS token" in meta["position_0"] and meta["config"]["position_0"] == meta["position_0"]


def test_position_0_rule_follows_the_tokenizer(tiny_model_dir, tiny_gemma2_dir, nu_run):
    from transformers import AutoTokenizer

    no_bos = nu.position_0_rule(AutoTokenizer.from_pretrained(tiny_model_dir))
    with_bos = nu.position_0_rule(AutoTokenizer.from_pretrained(tiny_gemma2_dir))
    assert "adds no BOS" in no_bos and "attention sink" in no_bos
    assert "BOS token" in with_bos and "attention sink" not in with_bos
    assert json.loads((nu_run / nu.META_FILE).read_text())["position_0"] == no_bos


def test_prefetcher_reads_one_ahead_in_the_background_and_stops_at_a_failure():
    from langsae.errors import UserError
    from langsae.prefetch import Prefetcher

    started, release = [], threading.Event()

    def load(key):
        started.append(key)
        if key == 1:
            assert release.wait(10), "load 1 must run while the caller works on 0"
        if key == 2:
            raise UserError("no file for 2")
        return key * 10

    with Prefetcher([0, 1, 2, 3], load, "item") as items:
        assert items.take(0) == 0  # returns while load(1) is blocked: it runs on another thread
        with pytest.raises(ValueError, match="out of order"):
            items.take(2)
        release.set()
        assert items.take(1) == 10
        with pytest.raises(UserError, match="no file for 2"):
            items.take(2)
    assert started == [0, 1, 2], "one ahead at most, and nothing after a failed load"
    assert not prefetch_threads()
