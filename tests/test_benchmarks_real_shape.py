"""benchmarks/real_shape.py: the planted language features are each language's top feature by nu, and
ablating one costs CE on its own language more than on the others (what stages 3 and 4 need)."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import real_shape

from langsae.ablation import project_out
from langsae.data import load_texts
from langsae.forward import capture, edit_output, make_batches, tokenize
from langsae.model import HookPoint

LANGS = ("eng_Latn", "fra_Latn", "spa_Latn")


def tiny_qwen3(tok):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=151_936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return Qwen3ForCausalLM(cfg).eval()


def random_tc(d_sae, d, seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_sae, d, generator=g) / d**0.5,
        "W_dec": torch.randn(d_sae, d, generator=g) / 400,
        "b_enc": torch.randn(d_sae, generator=g) * 0.5 - 0.5,
        "b_dec": torch.zeros(d),
    }


def per_text_ce(model, batch, basis=None, layer=0):
    hook = HookPoint(layer, "block", "output")
    with (
        torch.no_grad(),
        edit_output(model, hook, lambda o, x: o if basis is None else project_out(o, basis)),
    ):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch.input_ids[:, 1:], reduction="none")
    m = batch.attention_mask[:, 1:].float()
    return (ce * m).sum(1) / m.sum(1)


def test_planted_features_top_nu_and_own_language_ablation_costs_most():
    tok = real_shape.qwen3_tokenizer()
    assert len(tok) == 151_669  # Qwen3's real vocabulary, not a stand-in
    model = tiny_qwen3(tok)
    sel = load_texts(LANGS, "selection", 100).by_language
    tcs = {L: random_tc(512, 64, L) for L in (0, 1)}
    planted = real_shape.plant_language_features(model, tok, sel, tcs)
    assert planted == {L: dict(zip(LANGS, real_shape.planted_ids(512, 3))) for L in (0, 1)}

    # nu by brute force: every feature's mean activation per language over statistic tokens, at the MLP input
    for L, tc in tcs.items():
        mu = []
        for lang in LANGS:
            b = make_batches(tokenize(tok, sel[lang][:20]), 20, tok.pad_token_id)[0]
            with torch.no_grad(), capture(model, {"x": HookPoint(L, "mlp", "input")}) as store:
                model(input_ids=b.input_ids, attention_mask=b.attention_mask)
            x = store["x"][b.statistic_mask()]
            mu.append(torch.relu(x @ tc["W_enc"].T + tc["b_enc"]).mean(0))
        mu = torch.stack(mu)
        for i, lang in enumerate(LANGS):
            nu = mu[i] - torch.cat([mu[:i], mu[i + 1 :]]).mean(0)
            assert int(nu.argmax()) == planted[L][lang]

    # own-language ablation: the planted decoder direction projected out of block 0's output,
    # on evaluation texts
    ev = load_texts(LANGS, "evaluation", 8).by_language
    batches = {lang: make_batches(tokenize(tok, ev[lang]), 8, tok.pad_token_id)[0] for lang in LANGS}
    base = {lang: per_text_ce(model, b) for lang, b in batches.items()}
    for lang in LANGS:
        u = tcs[0]["W_dec"][planted[0][lang]]
        basis = (u / u.norm())[:, None]
        delta = {
            other: float((per_text_ce(model, b, basis) - base[other]).mean()) for other, b in batches.items()
        }
        assert delta[lang] > 0.05 and all(delta[lang] > 2 * delta[o] for o in LANGS if o != lang), (
            lang,
            delta,
        )
