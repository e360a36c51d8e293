"""The generation engine against brute force: an uncached batch-1 greedy loop that recomputes the
whole forward at every step with the same hook, separate runs per condition, and manual sums of
token log-probabilities."""

import pytest
import torch
from nu_artifacts import load_tiny
from tiny_models import random_transcoder

from langsae.ablation import Ablation, orthonormal_basis
from langsae.forward import stacked_edits
from langsae.generate import continuation_logprobs, cut_at_stop, greedy_generate, left_pad, stop_token_ids
from langsae.model import HookPoint

PROMPTS = ["The river", "Le chat est sur la table et", "東京", "A much longer prompt about the weather in the mountains today"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    return model, tok, [tok(p)["input_ids"] for p in PROMPTS]


def _directional(layer: int, d: int, seed: int, k: int = 2) -> Ablation:
    g = torch.Generator().manual_seed(seed)
    return Ablation(HookPoint(layer, "block", "output"), "directional", basis=orthonormal_basis(torch.randn(k, d, generator=g)))


def _feature(layer: int, d: int, seed: int) -> Ablation:
    tc = random_transcoder(d, 96, seed)
    rows = torch.tensor([3, 17, 40])
    return Ablation(
        HookPoint(layer, "mlp", "output"), "feature", W_dec=tc["W_dec"][rows] * 20, W_enc=tc["W_enc"][rows], b_enc=tc["b_enc"][rows] + 1.0
    )


def _conditions(model):
    d = model.config.hidden_size
    return [None, _directional(1, d, 0), _feature(0, d, 1), _directional(2, d, 2, k=4)]


@torch.no_grad()
def reference_generate(model, prompt: list[int], edit, stop: set[int], max_new: int) -> list[int]:
    """Greedy, batch 1, no cache: the full forward of prompt + tokens so far at every step, edit hooked."""
    ids = list(prompt)
    out = []
    for _ in range(max_new):
        with stacked_edits(model, [edit], 1):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        t = int(logits.argmax())
        out.append(t)
        ids.append(t)
        if t in stop:
            break
    return out


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_stop_tokens_are_newlines_and_eos(tiny):
    _, tok, _ = tiny
    stops = stop_token_ids(tok)
    assert tok.eos_token_id in stops
    newline = tok("\n")["input_ids"]
    assert len(newline) == 1 and newline[0] in stops
    assert all("\n" in tok.decode([i]) for i in stops if i != tok.eos_token_id)
    assert tok("river")["input_ids"][0] not in stops
    assert cut_at_stop([4, 9, 2, 9, 0], {9}) == [4, 9]
    assert cut_at_stop([4, 5], {9}) == [4, 5]


@pytest.mark.parametrize("rows", [64, 3])
def test_cached_batched_generation_equals_uncached_batch1_loop(tiny, rows):
    """Left-padded, KV-cached, conditions stacked (two hook points at once), in chunks of `rows` rows."""
    model, tok, prompts = tiny
    conditions = _conditions(model)
    stops = stop_token_ids(tok)
    got = greedy_generate(model, prompts, conditions, stops, tok.pad_token_id, max_new_tokens=8, rows_per_forward=rows)
    for c, edit in enumerate(conditions):
        for i, p in enumerate(prompts):
            assert got[c][i] == reference_generate(model, p, edit, set(stops), 8), (c, i)
    # the edits do something: some condition's tokens differ from the unedited model's
    assert any(got[c] != got[0] for c in range(1, len(conditions)))


def test_gemma2_generation_equals_uncached_loop(tiny_gemma2_dir):
    """Sliding-window layers, soft-caps and a BOS token: left padding and the cache still agree."""
    model, tok = load_tiny(tiny_gemma2_dir)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    conditions = [None, _directional(1, model.config.hidden_size, 5)]
    stops = stop_token_ids(tok)
    got = greedy_generate(model, prompts, conditions, stops, tok.pad_token_id, max_new_tokens=6)
    for c, edit in enumerate(conditions):
        for i, p in enumerate(prompts):
            assert got[c][i] == reference_generate(model, p, edit, set(stops), 6), (c, i)


def test_stacked_conditions_equal_separate_runs(tiny):
    model, tok, prompts = tiny
    conditions = _conditions(model)
    stops = stop_token_ids(tok)
    together = greedy_generate(model, prompts, conditions, stops, tok.pad_token_id, 8)
    for c, edit in enumerate(conditions):
        assert greedy_generate(model, prompts, [edit], stops, tok.pad_token_id, 8)[0] == together[c]


@pytest.fixture(scope="module")
def untied(tiny_model_dir):
    """The tiny Qwen3's shape with a separate random unembedding: the tied fixture model just repeats
    its last input token, so what it generates cannot depend on an edit made after the prompt."""
    from transformers import Qwen3ForCausalLM

    model, tok = load_tiny(tiny_model_dir)
    cfg = model.config
    cfg.tie_word_embeddings = False
    torch.manual_seed(1)
    return Qwen3ForCausalLM(cfg).eval(), tok


def _unembedding_ablation(model, token: int) -> Ablation:
    """Project the last block's output off the gain-scaled unembedding of `token`: its logit,
    (g * w_t) . h / rms(h), is then exactly 0 wherever the edit acts."""
    direction = model.lm_head.weight[token] * model.model.norm.weight
    last = model.config.num_hidden_layers - 1
    return Ablation(HookPoint(last, "block", "output"), "directional", basis=orthonormal_basis(direction[None]))


def test_hook_is_live_during_decoding(untied):
    """Find a token t that the model still generates when t's ablation acts on the prompt's forward
    only (first token), then never again; with the engine's ablation t must appear in none of the
    generated tokens, which is only possible if the hook acts at every decoding step."""
    model, tok = untied
    stops = sorted(stop_token_ids(tok))
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    base = greedy_generate(model, prompts, [None], stops, tok.pad_token_id, 12)[0]
    for p, gen in zip(prompts, base):
        for target in dict.fromkeys(gen):
            edit = _unembedding_ablation(model, target)
            first = reference_generate(model, p, edit, set(stops), 1)
            prompt_only = first + reference_generate(model, p + first, None, set(stops), 11)
            if target in prompt_only[1:]:
                ablated = greedy_generate(model, [p], [edit], stops, tok.pad_token_id, 12)[0][0]
                assert ablated[0] == first[0] and target not in ablated
                assert ablated == reference_generate(model, p, edit, set(stops), 12)
                return
    pytest.fail("no token of the unedited generations comes back after a prompt-only ablation")


def test_loglik_equals_manual_sum(tiny):
    model, tok, prompts = tiny
    conts = [tok(" sports")["input_ids"], tok(" science/technology")["input_ids"], tok(" a")["input_ids"], tok(" travel")["input_ids"]]
    conditions = _conditions(model)
    got = continuation_logprobs(model, prompts, conts, conditions, tok.pad_token_id, rows_per_forward=5)
    assert got.shape == (len(conditions), len(prompts))
    for c, edit in enumerate(conditions):
        for i, (p, k) in enumerate(zip(prompts, conts)):
            ids = torch.tensor([p + k])
            with torch.no_grad(), stacked_edits(model, [edit], 1):
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            manual = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(k))
            assert got[c, i] == pytest.approx(manual, abs=1e-4), (c, i)
    assert (got[1:] != got[0]).any()


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gemma2_dir"])
@pytest.mark.parametrize("rows", [3, 64])
def test_loglik_with_shared_prompts_equals_manual_sum(fixture, rows, request):
    """Several continuations per prompt (as topic labels are), of one and of several tokens, in any
    order: each prompt runs once per condition and its continuations on copies of its KV cache.
    rows=3 splits a prompt's group of pairs from the next prompt's and conditions into groups."""
    model, tok = load_tiny(request.getfixturevalue(fixture))
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    labels = [tok(x)["input_ids"] for x in (" sports", " science/technology", " a", " travel and entertainment")]
    pairs = [(p, lab) for lab in labels for p in prompts]  # interleaved: pairs of one prompt are not adjacent
    conditions = _conditions(model)
    got = continuation_logprobs(model, [p for p, _ in pairs], [lab for _, lab in pairs], conditions, tok.pad_token_id, rows_per_forward=rows)
    for c, edit in enumerate(conditions):
        for i, (p, k) in enumerate(pairs):
            with torch.no_grad(), stacked_edits(model, [edit], 1):
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + k])).logits[0].double(), -1)
            manual = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(k))
            assert got[c, i] == pytest.approx(manual, abs=1e-4), (c, i)
