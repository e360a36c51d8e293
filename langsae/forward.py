"""The one forward engine: tokenisation, batching, padding masks and hooks.

Every stage (nu-scores, ablation, generation, the toy build) runs the model through
these functions, so batching, padding and the position-0 rule are defined once.
Texts are right-padded; position 0 is the first real token (Qwen3 adds no BOS, so it is
a real token acting as the attention sink) and is excluded from activation statistics.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from langsae.model import HookPoint, decoder_layers, hook_module

MAX_TOKENS = 512  # FLORES sentences are far shorter; this only guards against runaway inputs


@dataclass
class Batch:
    """Right-padded token ids of a few texts.

    input_ids, attention_mask: [B, T]; `indices[b]` is row b's position in the caller's list.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    indices: list[int]

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.indices)

    def statistic_mask(self) -> torch.Tensor:
        """[B, T] bool: tokens that count in activation statistics (not padding, not position 0)."""
        mask = self.attention_mask.bool().clone()
        mask[:, 0] = False
        return mask


def tokenize(tokenizer, texts: list[str], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """Token ids of each text, with the tokenizer's own special tokens (none for Qwen3, BOS for Gemma)."""
    return [tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"] for t in texts]


def make_batches(token_ids: list[list[int]], batch_size: int, pad_id: int, sort_by_length: bool = True) -> list[Batch]:
    """Group texts into right-padded batches; sorting by length keeps padding small.

    The order of batches never changes a result: every statistic is keyed by `indices`.
    """
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i])) if sort_by_length else range(len(token_ids))
    order = list(order)
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
            mask[row, : len(token_ids[i])] = 1
        batches.append(Batch(ids, mask, idx))
    return batches


def _first_tensor(x):
    return x[0] if isinstance(x, tuple) else x


@contextmanager
def capture(model, points: dict[str, HookPoint]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensor at each hook point on every forward; the dict holds the latest values.

    Input points record the module's first positional argument (for `mlp` that is the
    post_attention_layernorm output after its gain: what a transcoder reads).
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str, hp: HookPoint):
        if hp.io == "input":
            return lambda mod, args: store.__setitem__(name, args[0].detach())
        return lambda mod, args, out: store.__setitem__(name, _first_tensor(out).detach())

    try:
        for name, hp in points.items():
            mod = hook_module(model, hp)
            fn = make(name, hp)
            handles.append(mod.register_forward_pre_hook(fn) if hp.io == "input" else mod.register_forward_hook(fn))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def edit_output(model, hp: HookPoint, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the output of a hook point by fn(output, module_input) while the block runs.

    `fn` gets the module's output [B, T, d] and its first input [B, T, d_in] (which a
    transcoder-native ablation needs to recompute feature activations).
    """
    if hp.io != "output":
        raise ValueError(f"can only edit outputs, got {hp}")

    def hook(mod, args, out):
        new = fn(_first_tensor(out), args[0])
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = hook_module(model, hp).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    pass


@torch.no_grad()
def run_through_layer(model, batch: Batch, last_layer: int) -> None:
    """Run the decoder on a batch up to and including `last_layer`, then stop.

    Hooks registered by the caller (e.g. `capture`) see everything they need; the layers
    above and the LM head (a large share of the cost for a 151k vocabulary) never run.
    """

    def stop(mod, args, out):
        raise _StopForward

    handle = decoder_layers(model)[last_layer].register_forward_hook(stop)
    try:
        model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
