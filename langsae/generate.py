"""Generation and log-likelihood scoring under per-row edits: the one forward engine, applied to tasks.

Each batch row carries its own condition: an edit (an ablation, or any object with a `hook`
HookPoint and `apply(out, sublayer_input)`, e.g. a steering edit) or None (the unedited model).
Conditions are stacked along the batch as in Section 5 (`langsae.forward.stacked_edits`):
for C conditions and a chunk of B items, row c*B + i is item i under condition c. The edits are
forward hooks (`forward.edit_output`), so they act at every position of the prompt and of every
generated token, whatever the model's own `generate` does with its KV cache.

Steering conditions span several layers and decide a gate at the first, so they do not fit the
one-hook-point `Edit`; both functions take `stack`, the context manager that installs a group of
conditions on the batch (default `forward.stacked_edits`; `langsae.steering.stacked_steering` for
steering), so every kind of condition runs through this one engine.

- `greedy_generate`: transformers' own `model.generate` (greedy, KV cache on), left-padded
  batches, stopping per row at a stop token (`stop_token_ids`: a newline-bearing token or any of the
  model's EOS ids, `eos_token_ids`) or after `max_new_tokens`. The argmax is taken of fp32 logits:
  while it runs, `model.lm_head` is the cached fp32 head (`forward.fp32_lm_head`), as in log-likelihoods,
  so a bf16 model decodes by the logits its log-likelihoods are scored with, not by bf16-rounded ones.
- `continuation_logprobs`: sum of a continuation's token log-probabilities after a prompt, through
  the model's own forward; each distinct prompt runs once per condition and its continuations run
  on copies of its KV cache; LM head in fp32 (`forward.logits_from_hidden`).
"""

from __future__ import annotations

import functools
from typing import Callable, ContextManager, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from langsae.forward import fp32_head, fp32_lm_head, logits_from_hidden, stacked_edits
from langsae.model import HookPoint, input_device

DEFAULT_ROWS = 64  # rows (items x conditions) per forward


class Edit(Protocol):
    """What a condition does to the model at `hook`:
    `apply(out [B, T, d], sublayer_input [B, T, d_in]) -> [B, T, d]`."""

    hook: HookPoint

    def apply(self, out: torch.Tensor, sublayer_input: torch.Tensor) -> torch.Tensor: ...


# stack(model, conditions, rows_each): while active, rows [c*B, (c+1)*B) of every forward run condition c
Stacker = Callable[..., ContextManager]


def _device(model) -> torch.device:
    """Where input ids go: the embedding's device (under a device map, not every parameter's)."""
    return input_device(model)


@functools.lru_cache(maxsize=4)
def _newline_ids(tokenizer) -> frozenset[int]:
    decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, s in enumerate(decoded) if "\n" in s)


def _as_ids(value) -> set[int]:
    """An eos_token_id setting (None, an int, or a list of ints) as a set."""
    if value is None:
        return set()
    return {int(v) for v in value} if isinstance(value, (list, tuple)) else {int(value)}


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a text: the EOS ids of the model's generation config and of its config, and the
    tokenizer's EOS. Sorted. The stages build their own GenerationConfig, so the model's list would be lost:
    Qwen3's lists <|endoftext|> (151643, how the base model ends a document) besides <|im_end|> (151645,
    the tokenizer's EOS); without it a base model's answer runs on past <|endoftext|> into a new text."""
    ids = _as_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    for config in (model.config, model.config.get_text_config()):
        ids |= _as_ids(getattr(config, "eos_token_id", None))
    return sorted(ids | _as_ids(tokenizer.eos_token_id))


def stop_token_ids(tokenizer, model) -> list[int]:
    """Tokens that end an answer: every token whose text contains a newline (byte-level BPE merges
    newlines into many tokens, e.g. ".\\n"), and every EOS id (`eos_token_ids`). Sorted."""
    return sorted(set(_newline_ids(tokenizer)) | set(eos_token_ids(model, tokenizer)))


def _chunks(n_items: int, n_conditions: int, rows_per_forward: int) -> tuple[int, int]:
    """(items per chunk, conditions per group) so that one forward holds at most rows_per_forward rows
    (at least one item and one condition)."""
    per_group = max(1, min(n_conditions, rows_per_forward))
    return max(1, rows_per_forward // per_group), per_group


def left_pad(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask [B, T] (what decoder-only generation needs: every row ends
    at the last column, so the next token is predicted from the same position in every row)."""
    width = max(len(t) for t in token_ids)
    ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, t in enumerate(token_ids):
        if len(t):
            ids[row, width - len(t) :] = torch.tensor(list(t))
            mask[row, width - len(t) :] = 1
    return ids, mask


def _generation_config(max_new_tokens: int, stop_ids: Sequence[int], pad_id: int):
    from transformers import GenerationConfig

    # a fresh config: the model's own (e.g. Qwen3's sampling defaults) must not leak in
    return GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )


def cut_at_stop(tokens: Sequence[int], stop_ids: set[int] | frozenset[int]) -> list[int]:
    """Generated tokens up to and including the first stop token (the rest is padding)."""
    out = []
    for t in tokens:
        out.append(int(t))
        if t in stop_ids:
            break
    return out


@torch.no_grad()
def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    edits: Sequence[Edit | None],
    stop_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    rows_per_forward: int = DEFAULT_ROWS,
    desc: str = "generate",
    stack: Stacker = stacked_edits,
) -> list[list[list[int]]]:
    """Greedy continuations of every prompt under every condition: out[c][i] = token ids generated
    for prompts[i] under edits[c], up to and including the first stop token, at most max_new_tokens.

    Prompts are sorted by length and left-padded in chunks; each chunk runs once per group of
    conditions, stacked along the batch, through `model.generate` with its KV cache.
    """
    stop_ids = list(stop_ids)
    stop_set = frozenset(stop_ids)
    out: list[list[list[int]]] = [[[] for _ in prompts] for _ in edits]
    if not prompts or not edits:
        return out
    dev = _device(model)
    per_chunk, per_group = _chunks(len(prompts), len(edits), rows_per_forward)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    config = _generation_config(max_new_tokens, stop_ids, pad_id)
    work = [(s, g) for s in range(0, len(order), per_chunk) for g in range(0, len(edits), per_group)]
    for s, g in tqdm(work, desc=desc, unit="batch", leave=False):
        idx, group = order[s : s + per_chunk], list(edits[g : g + per_group])
        ids, mask = left_pad([prompts[i] for i in idx], pad_id)
        n = len(group)
        with stack(model, group, len(idx)), fp32_lm_head(model):
            gen = model.generate(
                input_ids=ids.repeat(n, 1).to(dev),
                attention_mask=mask.repeat(n, 1).to(dev),
                generation_config=config,
            )
        new = gen[:, ids.shape[1] :].cpu().tolist()
        for c in range(n):
            for row, i in enumerate(idx):
                out[g + c][i] = cut_at_stop(new[c * len(idx) + row], stop_set)
    return out


@torch.no_grad()
def continuation_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    edits: Sequence[Edit | None],
    pad_id: int,
    rows_per_forward: int = DEFAULT_ROWS,
    desc: str = "log-likelihood",
    stack: Stacker = stacked_edits,
) -> np.ndarray:
    """Sum of log p(continuation token | everything before it) over each continuation's tokens,
    for each (prompts[i], continuations[i]) pair under each condition: [C, N] float64.

    Pairs that share a prompt share its pass (scoring an item's seven topic labels costs one
    prompt pass, not seven): each distinct prompt runs once per condition, left-padded, keeping
    its KV cache; the cache is then copied to one row per continuation, and the continuations run
    on it, right-padded, with explicit positions. Only the positions that predict a continuation
    token go through the LM head, in fp32. Every continuation needs at least one token, every
    prompt too (the first continuation token is predicted from it). At most `rows_per_forward`
    rows (pairs x conditions) per forward.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in continuations):
        raise ValueError("every prompt and every continuation needs at least one token")
    out = np.full((len(edits), len(prompts)), np.nan)
    if not prompts or not edits:
        return out
    head = fp32_head(model)
    pairs_of: dict[tuple[int, ...], list[int]] = {}  # distinct prompt -> its pairs
    for k, p in enumerate(prompts):
        pairs_of.setdefault(tuple(p), []).append(k)
    _, per_group = _chunks(len(prompts), len(edits), rows_per_forward)
    work = [
        (chunk, g)
        for chunk in _prompt_chunks(pairs_of, rows_per_forward // per_group)
        for g in range(0, len(edits), per_group)
    ]
    for chunk, g in tqdm(work, desc=desc, unit="batch", leave=False):
        group = list(edits[g : g + per_group])
        sums = _score_chunk(model, head, chunk, pairs_of, continuations, group, pad_id, stack)
        out[g : g + len(group), [k for p in chunk for k in pairs_of[p]]] = sums
    return out


def _prompt_chunks(pairs_of: dict[tuple[int, ...], list[int]], max_pairs: int) -> list[list[tuple[int, ...]]]:
    """Distinct prompts, longest first (less padding), in chunks of at most max_pairs pairs (at least one
    prompt)."""
    chunks, current, used = [], [], 0
    for p in sorted(pairs_of, key=len, reverse=True):
        if current and used + len(pairs_of[p]) > max_pairs:
            chunks.append(current)
            current, used = [], 0
        current.append(p)
        used += len(pairs_of[p])
    return chunks + [current] if current else chunks


def _score_chunk(model, head, chunk, pairs_of, continuations, group, pad_id, stack) -> np.ndarray:
    """[conditions, pairs of the chunk in prompt order]: summed continuation log-probabilities."""
    dev = _device(model)
    n = len(group)
    ids, mask = left_pad(chunk, pad_id)  # [B, P]; the last column is every prompt's last token
    B = len(chunk)
    rows = [
        (i, k) for i, p in enumerate(chunk) for k in pairs_of[p]
    ]  # (prompt row, pair) per continuation row
    conts = [list(continuations[k]) for _, k in rows]
    width = max(len(c) for c in conts)
    with stack(model, group, B):
        first = model.model(
            input_ids=ids.repeat(n, 1).to(dev),
            attention_mask=mask.repeat(n, 1).to(dev),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).repeat(n, 1).to(dev),
            use_cache=width > 1,
        )
    src = torch.tensor(
        [c * B + i for c in range(n) for i, _ in rows]
    )  # the prompt row of each (condition, continuation) row
    last = first.last_hidden_state
    hidden = [last[src.to(last.device), -1][:, None]]  # predicts each continuation's first token
    if width > 1:  # the continuations but their last token, on copies of their prompt's cache
        prompt_rows = [i for i, _ in rows]
        c_ids = torch.full((len(rows), width - 1), pad_id, dtype=torch.long)
        c_mask = torch.zeros((len(rows), width - 1), dtype=torch.long)
        for r, c in enumerate(conts):
            c_ids[r, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            c_mask[r, : len(c) - 1] = 1
        positions = mask.sum(-1)[prompt_rows][:, None] + torch.arange(width - 1)
        cache = first.past_key_values
        cache.reorder_cache(src.to(dev))
        with stack(model, group, len(rows)):
            rest = model.model(
                input_ids=c_ids.repeat(n, 1).to(dev),
                attention_mask=torch.cat([mask[prompt_rows], c_mask], 1).repeat(n, 1).to(dev),
                position_ids=positions.repeat(n, 1).to(dev),
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        hidden.append(rest)
    hidden = torch.cat(hidden, 1)  # [n * rows, width, d]: position j predicts continuation token j
    r_idx = [c * len(rows) + r for c in range(n) for r, cont in enumerate(conts) for _ in cont]
    j_idx = [j for _ in range(n) for cont in conts for j in range(len(cont))]
    at = hidden.device  # the final norm's: under a device map not necessarily the embedding's
    picked = hidden[torch.tensor(r_idx, device=at), torch.tensor(j_idx, device=at)]
    logp = torch.log_softmax(logits_from_hidden(model, picked, head), dim=-1)
    targets = torch.tensor([t for _ in range(n) for cont in conts for t in cont], device=logp.device)
    tok = logp.gather(1, targets[:, None])[:, 0].double().cpu()
    sums = torch.zeros(n * len(rows), dtype=torch.float64).index_add_(0, torch.tensor(r_idx), tok)
    return sums.view(n, len(rows)).numpy()
