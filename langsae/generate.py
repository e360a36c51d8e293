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
  batches, stopping per row at a newline-bearing token, an EOS token, or `max_new_tokens`.
- `continuation_logprobs`: sum of a continuation's token log-probabilities after a prompt,
  right-padded batches through the model's own forward, LM head in fp32
  (`forward.logits_from_hidden`).
"""

from __future__ import annotations

import functools
from typing import Callable, ContextManager, Protocol, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from langsae.forward import fp32_head, logits_from_hidden, make_batches, stacked_edits
from langsae.model import HookPoint

DEFAULT_ROWS = 64  # rows (items x conditions) per forward


class Edit(Protocol):
    """What a condition does to the model: `apply(out [B, T, d], sublayer_input [B, T, d_in]) -> [B, T, d]` at `hook`."""

    hook: HookPoint

    def apply(self, out: torch.Tensor, sublayer_input: torch.Tensor) -> torch.Tensor: ...


# stack(model, conditions, rows_each): while active, rows [c*B, (c+1)*B) of every forward run condition c
Stacker = Callable[..., ContextManager]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@functools.lru_cache(maxsize=4)
def _newline_ids(tokenizer) -> frozenset[int]:
    decoded = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(i for i, s in enumerate(decoded) if "\n" in s)


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end an answer: every token whose text contains a newline (byte-level BPE merges
    newlines into many tokens, e.g. ".\\n"), and the tokenizer's EOS. Sorted."""
    ids = set(_newline_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


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
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, use_cache=True,
        eos_token_id=list(stop_ids), pad_token_id=pad_id,
    )  # fmt: skip


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
        with stack(model, group, len(idx)):
            gen = model.generate(
                input_ids=ids.repeat(n, 1).to(dev), attention_mask=mask.repeat(n, 1).to(dev), generation_config=config
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

    Each pair is one right-padded row (prompt ids then continuation ids); only the positions that
    predict a continuation token go through the LM head, in fp32. Every continuation needs at
    least one token, every prompt too (the first continuation token is predicted from it).
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in continuations):
        raise ValueError("every prompt and every continuation needs at least one token")
    out = np.full((len(edits), len(prompts)), np.nan)
    if not prompts or not edits:
        return out
    dev = _device(model)
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    per_chunk, per_group = _chunks(len(seqs), len(edits), rows_per_forward)
    batches = make_batches(seqs, per_chunk, pad_id)
    head = fp32_head(model)
    work = [(b, g) for b in batches for g in range(0, len(edits), per_group)]
    for batch, g in tqdm(work, desc=desc, unit="batch", leave=False):
        group = list(edits[g : g + per_group])
        n, B = len(group), len(batch.indices)
        # positions t that predict a continuation token t+1, and those tokens, per row of the chunk
        pos_rows, pos_t, targets = [], [], []
        for row, i in enumerate(batch.indices):
            start, end = len(prompts[i]), len(seqs[i])
            pos_rows += [row] * (end - start)
            pos_t += list(range(start - 1, end - 1))
            targets += seqs[i][start:end]
        rows_t, t_t = torch.tensor(pos_rows), torch.tensor(pos_t)
        with stack(model, group, B):
            final = model.model(
                input_ids=batch.input_ids.repeat(n, 1).to(dev), attention_mask=batch.attention_mask.repeat(n, 1).to(dev),
                use_cache=False,
            ).last_hidden_state  # fmt: skip
        for c in range(n):
            h = final[(c * B + rows_t).to(dev), t_t.to(dev)]
            logp = torch.log_softmax(logits_from_hidden(model, h, head), dim=-1)
            tok = logp.gather(1, torch.tensor(targets, device=dev)[:, None])[:, 0].double().cpu()
            sums = torch.zeros(B, dtype=torch.float64).index_add_(0, rows_t, tok)
            out[g + c, batch.indices] = sums.numpy()
    return out
