"""The one forward engine: tokenisation, batching, padding masks and hooks.

Every stage (nu-scores, ablation, generation, the toy build) runs the model through
these functions, so batching, padding and the position-0 rule are defined once.
Texts are right-padded; position 0 is excluded from activation statistics. It is the BOS
token where the tokenizer adds one (Gemma), else the first real token, which acts as the
attention sink (Qwen3); `langsae.nu.position_0_rule` says which in the metadata.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary
from tqdm.auto import tqdm

from langsae.model import (
    HookPoint,
    architecture,
    decoder_layers,
    execution_device,
    hook_module,
    input_device,
    layer_device,
)

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


def make_batches(
    token_ids: list[list[int]], batch_size: int, pad_id: int, sort_by_length: bool = True
) -> list[Batch]:
    """Group texts into right-padded batches; sorting by length keeps padding small.

    The order of batches never changes a result: every statistic is keyed by `indices`.
    """
    order = (
        sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
        if sort_by_length
        else range(len(token_ids))
    )
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


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A module's first input, whether passed by position or (decoder layers) as `hidden_states=`."""
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def capture(model, points: dict[str, HookPoint]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensor at each hook point on every forward; the dict holds the latest values.

    Each point is hooked on the module `langsae.model.hook_module` names for it (for an MLP input,
    the MLP module's first argument, after the pre-MLP norm's gain: what a transcoder reads;
    for an MLP output, the post-MLP norm's output on models that have one).
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make(name: str, hp: HookPoint):
        if hp.io == "input":
            return lambda mod, args, kwargs: store.__setitem__(name, _first_input(args, kwargs).detach())
        return lambda mod, args, out: store.__setitem__(name, _first_tensor(out).detach())

    try:
        for name, hp in points.items():
            mod = hook_module(model, hp)
            fn = make(name, hp)
            if hp.io == "input":
                handles.append(mod.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(mod.register_forward_hook(fn))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def edit_output(
    model,
    hp: HookPoint,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    read: HookPoint | None = None,
) -> Iterator[None]:
    """Replace the tensor at output hook point `hp` by fn(output, x) while the model runs.

    output: [B, T, d], the tensor at `hp`; x: [B, T, d_in], the tensor at hook point `read`
    in the same forward, by default `hp.sublayer_input()` (for an MLP output that is the MLP
    input, which a transcoder-native ablation needs to recompute feature activations); when
    read == hp, x is the unedited output itself. x is captured at its own hook point rather
    than taken from the hooked module's arguments because on Gemma 2 the module holding
    hook_mlp_out is post_feedforward_layernorm, whose input is the raw MLP output.
    """
    if hp.io != "output":
        raise ValueError(f"can only edit outputs, got {hp}")
    read = read or hp.sublayer_input()
    own = read == hp
    if not (own or read.precedes(hp)):
        raise ValueError(f"{read} is computed after {hp}: it cannot be passed to an edit of {hp}")

    def hook(mod, args, out):
        o = _first_tensor(out)
        # popped, so that a read point that did not run in this forward (e.g. run_from_layer started past
        # it) is an error, never a tensor left over from an earlier forward
        x = o if own else store.pop("x", None)
        if x is None:
            raise RuntimeError(f"{read} must be computed before {hp} in the same forward")
        new = fn(o, x)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    with capture(model, {} if own else {"x": read}) as store:
        handle = hook_module(model, hp).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def stacked(edits: Sequence, rows_each: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An `edit_output` function for conditions stacked along the batch: rows [i*B, (i+1)*B) get
    `edits[i].apply` (B = rows_each); None leaves its rows as they are."""

    def fn(out: torch.Tensor, module_input: torch.Tensor) -> torch.Tensor:
        parts = [
            o if e is None else e.apply(o, x)
            for e, o, x in zip(edits, out.split(rows_each), module_input.split(rows_each))
        ]
        return torch.cat(parts)

    return fn


@contextmanager
def stacked_edits(model, edits: Sequence, rows_each: int) -> Iterator[None]:
    """While the model runs, rows [i*B, (i+1)*B) get edits[i] (B = rows_each): each edit is an object
    with a `hook` HookPoint and `apply(out, sublayer_input)` (e.g. `langsae.ablation.Ablation`), or
    None for no edit. Edits may sit at different hook points (e.g. different layers): each point
    gets one hook, which leaves the rows of other points' conditions alone. Each edit's tensors move to
    its layer's execution device here, once per install (`on_device`), so callers may build edits on any
    device and under --device-map each acts where its layer runs."""
    with ExitStack() as stack:
        for hp in dict.fromkeys(e.hook for e in edits if e is not None):
            dev = layer_device(model, hp.layer)
            mine = [on_device(e, dev) if e is not None and e.hook == hp else None for e in edits]
            stack.enter_context(edit_output(model, hp, stacked(mine, rows_each)))
        yield


def on_device(edit, device: torch.device):
    """`edit` (a dataclass such as `langsae.ablation.Ablation`) with every tensor field on `device`; the
    edit itself when all already are (no copy: the usual case without a device map) or when it is not a
    dataclass (it then places its own tensors)."""
    if not dataclasses.is_dataclass(edit):
        return edit
    moved = {
        f.name: v.to(device)
        for f in dataclasses.fields(edit)
        if isinstance(v := getattr(edit, f.name), torch.Tensor) and v.device != device
    }
    return dataclasses.replace(edit, **moved) if moved else edit


class _StopForward(Exception):
    pass


def _run_until_stopped(model, batch: Batch, handle) -> None:
    """Run the decoder until a hook (registered as `handle`) raises _StopForward; remove the hook."""
    try:
        decoder = architecture(model).decoder(model)
        decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()


@torch.no_grad()
def run_through_layer(model, batch: Batch, last_layer: int) -> None:
    """Run the decoder on a batch up to and including `last_layer`, then stop.

    Hooks registered by the caller (e.g. `capture`) see everything they need; the layers
    above and the LM head (a large share of the cost for a 151k vocabulary) never run.
    """

    def stop(mod, args, out):
        raise _StopForward

    _run_until_stopped(model, batch, decoder_layers(model)[last_layer].register_forward_hook(stop))


@torch.no_grad()
def collect_tokens(
    model,
    batches: list[Batch],
    points: dict[str, HookPoint],
    keep: Callable[[Batch], torch.Tensor],
    desc: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass per batch (stopping after the deepest layer needed), keeping the kept tokens'
    activations at each hook point.

    keep(batch) -> [B, T] bool (e.g. `Batch.statistic_mask`, or the attention mask).
    Returns ({name: [n_kept, d]} on the CPU, in the model's dtype; [n_kept] text index of each token).
    """
    device = input_device(model)
    last = max(hp.layer for hp in points.values())
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in points}
    texts = []
    with capture(model, points) as store:
        for batch in tqdm(batches, desc=desc, unit="batch"):
            run_through_layer(model, batch.to(device), last)
            mask = keep(batch)
            for name in points:
                kept[name].append(store[name][mask.to(store[name].device)].cpu())
            texts.append(torch.tensor(batch.indices)[:, None].expand_as(mask)[mask])
    return {name: torch.cat(v) for name, v in kept.items()}, torch.cat(texts)


# ----------------------------------------------------------------------------- running from a layer
#
# An ablation at layer L cannot change anything below L, so the ablation engine computes the
# input of layer L once per batch (`hidden_before_layer`) and then runs only layers L..end,
# the final norm and the LM head for each condition (`run_from_layer`, `next_token_ce`),
# with several conditions stacked along the batch dimension. Masks, rotary embeddings and
# the final norm are the model's own, reached through the family's adapter (`langsae.model.Arch`).

LOGIT_CHUNK_ELEMENTS = 2**26  # logits materialised at once (256 MB in fp32); bounds CE memory


@torch.no_grad()
def hidden_before_layer(model, batch: Batch, layer: int) -> torch.Tensor:
    """The input of decoder layer `layer` (the scaled embeddings for layer 0): [B, T, d].

    Runs layers 0..layer-1 only.
    """
    store: dict[str, torch.Tensor] = {}

    def grab(mod, args, kwargs):
        store["h"] = _first_input(args, kwargs).detach()
        raise _StopForward

    _run_until_stopped(
        model, batch, decoder_layers(model)[layer].register_forward_pre_hook(grab, with_kwargs=True)
    )
    return store["h"]


def _layer_masks(
    model, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
) -> list:
    """The attention mask each decoder layer gets, made by transformers' own mask builder
    (per layer type: full or sliding-window attention, as the model's forward does)."""
    from transformers.masking_utils import create_masks_for_generate

    config = model.config.get_text_config()
    masks = create_masks_for_generate(
        config=config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        past_key_values=None,
        position_ids=position_ids,
    )
    n = len(decoder_layers(model))
    if isinstance(masks, dict):
        return [masks[t] for t in config.layer_types[:n]]
    if masks is attention_mask and getattr(config, "layer_types", None) is not None:
        raise NotImplementedError(
            f"layer types {set(config.layer_types)} have no mask builder in transformers"
        )
    return [masks] * n


@torch.no_grad()
def run_from_layer(
    model, hidden: torch.Tensor, attention_mask: torch.Tensor, start_layer: int
) -> torch.Tensor:
    """Run decoder layers start_layer..end on `hidden` (the input of start_layer), then the final norm.

    hidden: [R, T, d]; attention_mask: [R, T] (1 = real token, right padding).
    Returns the final normalised hidden states [R, T, d], the LM head's input. Hooks on
    the layers (e.g. `edit_output`) fire as in a full forward. Under a device map the residual starts on
    start_layer's execution device (each layer's accelerate hook moves it on from there).
    """
    arch = architecture(model)
    hidden = hidden.to(execution_device(arch.layers(model)[start_layer]))
    attention_mask = attention_mask.to(hidden.device)
    T = hidden.shape[1]
    position_ids = torch.arange(T, device=hidden.device).unsqueeze(0)  # as the model's forward, right padding
    position_embeddings = arch.position_embeddings(model, hidden, position_ids)
    masks = _layer_masks(model, hidden, attention_mask, position_ids)
    layers = arch.layers(model)
    for i in range(start_layer, len(layers)):
        hidden = arch.run_layer(layers[i], hidden, masks[i], position_ids, position_embeddings)
    return arch.final_norm(model)(hidden)


@dataclass(frozen=True)
class Fp32Head:
    """The LM head's weight [V, d] and bias [V] (or None) in fp32."""

    weight: torch.Tensor
    bias: torch.Tensor | None


# weight Parameter -> (its state when copied, the fp32 copy); keyed by identity, never keeps a model alive
_FP32_HEADS = WeakIdKeyDictionary()


def _state(t: torch.Tensor | None) -> tuple | None:
    """What identifies a tensor's current values without reading them: storage, version (bumped by every
    in-place write), dtype, device and shape."""
    return None if t is None else (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))


def fp32_head(model) -> Fp32Head:
    """The LM head in fp32, made once per model: for an fp32 model the weight itself (no copy); for a bf16
    model a copy (V x d x 4 bytes: 0.6 GB for Qwen3-0.6B) that is cached for as long as the weight lives
    and made anew when the weight (or bias) is replaced, moved or written in place."""
    head = model.lm_head
    weight, bias = head.weight, getattr(head, "bias", None)
    offloaded = weight.device.type == "meta"  # --device-map put the head on the CPU or disk
    if not offloaded and weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        return Fp32Head(weight, bias)
    state = (_state(weight), _state(bias))
    cached = _FP32_HEADS.get(weight)
    if cached is None or cached[0] != state:
        cached = _FP32_HEADS[weight] = (state, _offloaded_head(head) if offloaded else _float_head(head))
    return cached[1]


def _float_head(head: torch.nn.Module) -> Fp32Head:
    bias = getattr(head, "bias", None)
    return Fp32Head(head.weight.detach().float(), None if bias is None else bias.detach().float())


def _offloaded_head(head: torch.nn.Module) -> Fp32Head:
    """An fp32 copy of an offloaded head, on its execution device: accelerate loads its weights there for
    as long as `align_module_device` lasts (a copy is kept, so the weights are read once, not per chunk)."""
    from accelerate.utils import align_module_device

    with align_module_device(head, execution_device(head)):
        f = _float_head(head)
        return Fp32Head(f.weight.clone() if f.weight is head.weight else f.weight, f.bias)


def _project(final_hidden: torch.Tensor, head: Fp32Head) -> torch.Tensor:
    """The head's matmul in fp32 (F.linear, the op nn.Linear runs: an fp32 model's logits are
    bit-identical), on the head's device (under a device map the final norm may run elsewhere)."""
    return torch.nn.functional.linear(final_hidden.to(head.weight.device).float(), head.weight, head.bias)


def logits_from_hidden(model, final_hidden: torch.Tensor, head: Fp32Head | None = None) -> torch.Tensor:
    """LM head plus the model's final logit soft-cap (Gemma 2), all in fp32: [..., V].

    final_hidden: [..., d] in any dtype. The matmul itself runs in fp32: a bf16 head would
    round every logit to bf16 (relative error up to 2^-8, so up to ~0.04 on a logit of 10),
    noise of the size of the small ΔCEs we measure. head: `fp32_head(model)`, made here if None.
    """
    logits = _project(final_hidden, head or fp32_head(model))
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class _Fp32LmHead(torch.nn.Module):
    """Stands in for `model.lm_head` (see `fp32_lm_head`): fp32 logits from the cached fp32 head. The head
    is a plain attribute, not a parameter, so `model.parameters()` (and the model's dtype) do not change."""

    def __init__(self, head: Fp32Head):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _project(hidden, self.head)


@contextmanager
def fp32_lm_head(model) -> Iterator[None]:
    """While active, the model's own forward (and so `model.generate`) computes its logits with the fp32 head:
    greedy argmax as log-likelihoods see it, not of bf16-rounded logits. The model's own code still applies
    what follows its head (Gemma 2's soft-cap), now on fp32 logits. A logits processor could not do this:
    the logits it gets are already rounded."""
    original = model.lm_head
    model.lm_head = _Fp32LmHead(fp32_head(model))
    try:
        yield
    finally:
        model.lm_head = original


def predicted_tokens(
    final_hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions that predict a real token of right-padded rows: position t predicts token t+1
    when t+1 is not padding. final_hidden: [R, T, d]; input_ids, attention_mask: [R, T].
    Returns (their hidden states [n, d], the tokens they predict [n], the row of each [n])."""
    R, T, _ = final_hidden.shape
    predicted = attention_mask[:, 1:].bool()  # [R, T-1]
    rows = torch.arange(R, device=final_hidden.device).unsqueeze(1).expand(R, T - 1)[predicted]
    return final_hidden[:, :-1][predicted], input_ids[:, 1:][predicted], rows


@torch.no_grad()
def next_token_ce(
    model,
    final_hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean next-token cross-entropy in fp32, padding masked.

    final_hidden: [R, T, d] (from `run_from_layer` or the model's last_hidden_state);
    input_ids, attention_mask: [R, T]. Position t predicts token t+1 when t+1 is a real token.
    Only predicted positions go through the LM head (in fp32, see `logits_from_hidden`),
    `chunk_tokens` at a time, so memory is chunk_tokens x V (plus one fp32 copy of the head
    for a bf16 model) whatever the batch and length. Returns (mean CE [R] fp32, n_predicted [R]);
    a row with nothing to predict gets NaN.
    """
    R = final_hidden.shape[0]
    vocab = model.lm_head.weight.shape[0]
    chunk = chunk_tokens or max(1, LOGIT_CHUNK_ELEMENTS // vocab)
    head = fp32_head(model)  # once for all chunks
    here, dev = final_hidden.device, head.weight.device  # under a device map the CE runs on the head's device
    h, targets, rows = predicted_tokens(final_hidden, input_ids.to(here), attention_mask.to(here))
    h, targets, rows = h.to(dev), targets.to(dev), rows.to(dev)
    total = torch.zeros(R, dtype=torch.float32, device=dev)
    for s in range(0, h.shape[0], chunk):
        logits = logits_from_hidden(model, h[s : s + chunk], head)
        ce = torch.nn.functional.cross_entropy(logits, targets[s : s + chunk], reduction="none")
        total.index_add_(0, rows[s : s + chunk], ce)
    count = attention_mask[:, 1:].sum(1).to(dev)
    mean = total / count.clamp(min=1)
    mean[count == 0] = float("nan")
    return mean, count
