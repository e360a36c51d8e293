"""The per-family model adapter (`langsae.model.Arch`): running from a layer through it equals the
model's own forward on Qwen3 and Gemma 2, it names the modules the HF code uses, and an unknown
family is one error naming where to add it; adding a family is one ARCHITECTURES entry."""

import pytest
import torch
from tiny_models import tiny_gemma2

from langsae import model as model_module
from langsae.errors import UserError
from langsae.forward import hidden_before_layer, make_batches, run_from_layer
from langsae.model import ARCHITECTURES, Arch, HookPoint, architecture, hook_module


@pytest.fixture(scope="module")
def qwen3(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _llama():
    """A tiny Llama: laid out as Qwen3 is, but not a family langsae knows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    return LlamaForCausalLM(cfg).eval()


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (9, 5, 7)]
    return make_batches(ids, 3, 0)[0]


def _assert_runs_like_the_model(model, vocab: int) -> None:
    """For every start layer, run_from_layer on the layer's input gives the model's own final hidden
    state (the HF decoder's last_hidden_state: after the final norm) on every real token."""
    batch = _batch(vocab)
    real = batch.attention_mask.bool()
    assert not real.all(), "the batch must hold padding"
    with torch.no_grad():
        own = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    for L in range(model.config.num_hidden_layers):
        final = run_from_layer(model, hidden_before_layer(model, batch, L), batch.attention_mask, L)
        torch.testing.assert_close(final[real], own[real], atol=1e-5, rtol=1e-5)
    # the comparison can fail: skipping the first layer changes the result
    skipped = run_from_layer(model, hidden_before_layer(model, batch, 0), batch.attention_mask, 1)
    assert (skipped[real] - own[real]).abs().max() > 1e-3


def test_run_from_layer_equals_the_models_final_hidden_state_qwen3(qwen3):
    _assert_runs_like_the_model(qwen3, qwen3.config.vocab_size)


def test_run_from_layer_equals_the_models_final_hidden_state_gemma2():
    _assert_runs_like_the_model(tiny_gemma2(vocab_size=50), 50)


def test_the_adapter_names_the_modules_the_hf_code_uses(qwen3):
    gemma = tiny_gemma2(vocab_size=50)
    for model in (qwen3, gemma):
        arch = architecture(model)
        assert arch.layers(model) is model.model.layers
        assert arch.final_norm(model) is model.model.norm and arch.lm_head(model) is model.lm_head
        layer = model.model.layers[1]
        assert hook_module(model, HookPoint(1, "block", "output")) is layer
        assert hook_module(model, HookPoint(1, "mlp", "input")) is layer.mlp
    # what joins the residual stream: Gemma 2 normalises the MLP's output first, Qwen3 adds it as it is
    assert hook_module(qwen3, HookPoint(1, "mlp", "output")) is qwen3.model.layers[1].mlp
    post = gemma.model.layers[1].post_feedforward_layernorm
    assert hook_module(gemma, HookPoint(1, "mlp", "output")) is post


def test_an_unknown_family_is_one_error_naming_the_type_and_the_place_to_add_it():
    llama = _llama()
    batch = _batch(50)
    with pytest.raises(UserError) as err:
        hidden_before_layer(llama, batch, 1)
    message = str(err.value)
    assert "'llama'" in message and "ARCHITECTURES" in message and "langsae/model.py" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="'llama'"):
        run_from_layer(llama, torch.zeros(3, 9, 16), batch.attention_mask, 1)
    assert not llama.model.layers[1]._forward_pre_hooks  # no hook is left behind by the refusal


def test_a_new_family_is_one_architectures_entry(monkeypatch):
    llama = _llama()
    monkeypatch.setitem(ARCHITECTURES, "llama", Arch())
    assert model_module.architecture(llama) is ARCHITECTURES["llama"]
    _assert_runs_like_the_model(llama, 50)
