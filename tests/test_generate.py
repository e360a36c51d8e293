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

PROMPTS = [
    "The river",
    "Le chat est sur la table et",
    "東京",
    "A much longer prompt about the weather in the mountains today",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok = load_tiny(tiny_model_dir)
    return model, tok, [tok(p)["input_ids"] for p in PROMPTS]


def _directional(layer: int, d: int, seed: int, k: int = 2) -> Ablation:
    g = torch.Generator().manual_seed(seed)
    return Ablation(
        HookPoint(layer, "block", "output"),
        "directional",
        basis=orthonormal_basis(torch.randn(k, d, generator=g)),
    )


def _feature(layer: int, d: int, seed: int) -> Ablation:
    tc = random_transcoder(d, 96, seed)
    rows = torch.tensor([3, 17, 40])
    return Ablation(
        HookPoint(layer, "mlp", "output"),
        "feature",
        W_dec=tc["W_dec"][rows] * 20,
        W_enc=tc["W_enc"][rows],
        b_enc=tc["b_enc"][rows] + 1.0,
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
    model, tok, _ = tiny
    stops = stop_token_ids(tok, model)
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
    stops = stop_token_ids(tok, model)
    got = greedy_generate(
        model, prompts, conditions, stops, tok.pad_token_id, max_new_tokens=8, rows_per_forward=rows
    )
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
    stops = stop_token_ids(tok, model)
    got = greedy_generate(model, prompts, conditions, stops, tok.pad_token_id, max_new_tokens=6)
    for c, edit in enumerate(conditions):
        for i, p in enumerate(prompts):
            assert got[c][i] == reference_generate(model, p, edit, set(stops), 6), (c, i)


def test_stacked_conditions_equal_separate_runs(tiny):
    model, tok, prompts = tiny
    conditions = _conditions(model)
    stops = stop_token_ids(tok, model)
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
    return Ablation(
        HookPoint(last, "block", "output"), "directional", basis=orthonormal_basis(direction[None])
    )


def test_hook_is_live_during_decoding(untied):
    """Find a token t that the model still generates when t's ablation acts on the prompt's forward
    only (first token), then never again; with the engine's ablation t must appear in none of the
    generated tokens, which is only possible if the hook acts at every decoding step."""
    model, tok = untied
    stops = sorted(stop_token_ids(tok, model))
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
    conts = [
        tok(" sports")["input_ids"],
        tok(" science/technology")["input_ids"],
        tok(" a")["input_ids"],
        tok(" travel")["input_ids"],
    ]
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
    labels = [
        tok(x)["input_ids"] for x in (" sports", " science/technology", " a", " travel and entertainment")
    ]
    pairs = [(p, lab) for lab in labels for p in prompts]  # interleaved: pairs of one prompt are not adjacent
    conditions = _conditions(model)
    got = continuation_logprobs(
        model,
        [p for p, _ in pairs],
        [lab for _, lab in pairs],
        conditions,
        tok.pad_token_id,
        rows_per_forward=rows,
    )
    for c, edit in enumerate(conditions):
        for i, (p, k) in enumerate(pairs):
            with torch.no_grad(), stacked_edits(model, [edit], 1):
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + k])).logits[0].double(), -1)
            manual = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(k))
            assert got[c, i] == pytest.approx(manual, abs=1e-4), (c, i)


# ------------------------------------------------------------- every EOS id stops (Qwen3's <|endoftext|>)

ENDOFTEXT, IM_END = 151643, 151645  # Qwen3's generation config lists both; its tokenizer's EOS is <|im_end|>


def forced_qwen3(tok, next_of: dict[int, int]):
    """A tiny Qwen3 (Qwen3's real vocabulary) whose greedy next token is next_of[last token]: the layers
    write nothing (o_proj and down_proj are zero), so the final hidden state is the normalised embedding of
    the last token, a basis vector for each key of next_of, and the head maps it to its value (logit 40,
    every other logit 0). Generation config as Qwen3-0.6B's: eos [<|im_end|>, <|endoftext|>]."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d = 16
    assert len(next_of) <= d
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=d,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=False,
        pad_token_id=ENDOFTEXT,
        eos_token_id=IM_END,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (src, dst) in enumerate(next_of.items()):
            model.model.embed_tokens.weight[src, k] = 1.0
            model.lm_head.weight[dst, k] = 10.0  # the norm scales e_k by sqrt(d) = 4
    model.generation_config.eos_token_id = [IM_END, ENDOFTEXT]
    return model


def _chain(tok, prompt: str, after: str) -> tuple[list[int], dict[int, int], list[int]]:
    """(prompt ids, next_of making the model answer `after` as written, the answer's ids)."""
    ids = tok(prompt)["input_ids"]
    answer = tok(after, add_special_tokens=False)["input_ids"]
    steps = [ids[-1]] + answer
    return ids, dict(zip(steps[:-1], steps[1:])), answer


def test_eos_ids_are_the_union_of_model_config_and_tokenizer(qwen3_tok):
    from langsae.generate import eos_token_ids

    model = forced_qwen3(qwen3_tok, {})
    assert (qwen3_tok.eos_token_id, qwen3_tok.pad_token_id) == (IM_END, ENDOFTEXT)
    assert eos_token_ids(model, qwen3_tok) == [ENDOFTEXT, IM_END]
    model.generation_config.eos_token_id = 7  # an int, not a list
    assert eos_token_ids(model, qwen3_tok) == [7, IM_END]
    model.generation_config.eos_token_id, model.config.eos_token_id = None, 9
    assert eos_token_ids(model, qwen3_tok) == [9, IM_END]
    stops = stop_token_ids(qwen3_tok, model)
    assert {9, IM_END} <= set(stops) and all("\n" in qwen3_tok.decode([i]) for i in set(stops) - {9, IM_END})


def test_generation_stops_at_the_models_endoftext(qwen3_tok):
    """The model answers " Denver Broncos<|endoftext|> The 2016 season was": the engine stops at
    <|endoftext|> and the decoded answer is " Denver Broncos"; with only the tokenizer's EOS (the old
    stop list) the same model runs on into the next text."""
    tok = qwen3_tok
    prompt, next_of, answer = _chain(
        tok, "Question: Who won Super Bowl 50?\nAnswer:", " Denver Broncos<|endoftext|> The 2016 season was"
    )
    assert ENDOFTEXT in answer
    stop_at = answer.index(ENDOFTEXT)
    model = forced_qwen3(tok, next_of)
    old_stops = sorted(set(stop_token_ids(tok, model)) - {ENDOFTEXT})
    ran_on = greedy_generate(model, [prompt], [None], old_stops, tok.pad_token_id, len(answer))[0][0]
    assert ran_on == answer  # the forced model does write past <|endoftext|>
    got = greedy_generate(
        model,
        [prompt, prompt[:-1] + prompt[-1:]],
        [None, None],
        stop_token_ids(tok, model),
        tok.pad_token_id,
        20,
    )
    assert all(g == answer[: stop_at + 1] for c in got for g in c)
    assert tok.decode(got[0][0], skip_special_tokens=True) == " Denver Broncos"


def test_steer_eval_tasks_stop_at_the_models_endoftext(qwen3_tok):
    """The lid answer and the continuation (which stops at EOS only, not at newlines) end at <|endoftext|>."""
    from types import SimpleNamespace

    from langsae import steer_eval as se

    tok = qwen3_tok
    text = "The committee approved the new budget for the schools"
    lid_prompt, lid_next, lid_answer = _chain(tok, se.lid_prompt(text), " French<|endoftext|> Das ist")
    cont_prompt, cont_next, cont_answer = _chain(tok, text, " yesterday.\nIt<|endoftext|> Das ist")
    assert all(lid_next[k] == cont_next[k] for k in set(lid_next) & set(cont_next))  # one model answers both
    model = forced_qwen3(tok, {**lid_next, **cont_next})
    s = se.TaskSettings(pad_id=tok.pad_token_id, max_new_tokens=10, lid_max_new_tokens=10, rows_per_forward=8)
    cond = [SimpleNamespace(target="fra_Latn")]
    (lid,) = se.lid_records(model, tok, [text], ["s0"], cond, [None], s, "lid")
    assert (lid[0]["answer"], lid[0]["predicted"]) == (" French", "fra_Latn")
    (cont,) = se.continuation_records(model, tok, [text], ["s0"], cond, [None], s, "continuation")
    assert (
        cont[0]["continuation"] == " yesterday.\nIt"
        and cont[0]["n_new_tokens"] == cont_answer.index(ENDOFTEXT) + 1
    )


# ------------------------------------------------------------- the fp32 head: cached, and greedy's argmax


def test_fp32_head_is_made_once_per_weight(tiny):
    import copy

    from langsae.forward import fp32_head

    model, _, _ = tiny
    assert fp32_head(model).weight is model.lm_head.weight  # fp32: the weight itself, no copy
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    first = fp32_head(bf16)
    assert first.weight.dtype == torch.float32 and torch.equal(first.weight, bf16.lm_head.weight.float())
    assert fp32_head(bf16) is first
    with torch.no_grad():
        bf16.lm_head.weight.mul_(2)  # written in place
    second = fp32_head(bf16)
    assert second is not first and torch.equal(second.weight, bf16.lm_head.weight.float())
    assert fp32_head(bf16) is second
    bf16.lm_head.weight = torch.nn.Parameter(bf16.lm_head.weight.detach().clone())  # replaced
    third = fp32_head(bf16)
    assert third is not second and fp32_head(bf16) is third


@torch.no_grad()
def reference_fp32_argmax(model, prompt: list[int], edit, stop: set[int], max_new: int) -> list[int]:
    """Greedy, batch 1, no cache, the edit hooked: argmax of the fp32 head's logits of the final hidden
    state."""
    from langsae.forward import logits_from_hidden

    ids, out = list(prompt), []
    for _ in range(max_new):
        with stacked_edits(model, [edit], 1):
            hidden = model.model(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0, -1]
        t = int(logits_from_hidden(model, hidden).argmax())
        out.append(t)
        ids.append(t)
        if t in stop:
            break
    return out


@pytest.mark.parametrize("rows", [64, 3])
def test_bf16_greedy_takes_its_argmax_from_the_fp32_head(untied, rows):
    """In bf16, the batched, left-padded, cached engine with stacked conditions gives the tokens of a batch-1
    uncached loop whose argmax is of fp32 logits; while it runs the model's logits are the fp32 head's."""
    import copy

    from langsae.forward import fp32_lm_head, logits_from_hidden

    model = copy.deepcopy(untied[0]).to(torch.bfloat16)
    tok = untied[1]
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    conditions = _conditions(model)
    stops = stop_token_ids(tok, model)
    got = greedy_generate(
        model, prompts, conditions, stops, tok.pad_token_id, max_new_tokens=8, rows_per_forward=rows
    )
    for c, edit in enumerate(conditions):
        for i, p in enumerate(prompts):
            assert got[c][i] == reference_fp32_argmax(model, p, edit, set(stops), 8), (c, i)
    assert any(got[c] != got[0] for c in range(1, len(conditions)))
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        with fp32_lm_head(model):
            inside = model(input_ids=ids).logits
        outside = model(input_ids=ids).logits
    assert inside.dtype == torch.float32 and torch.equal(inside, logits_from_hidden(model, hidden))
    assert outside.dtype == torch.bfloat16 and isinstance(model.lm_head, torch.nn.Linear)  # restored
