"""A memory plan before any load: what a stage will hold per device, from config numbers alone.

A stage that cannot fit would otherwise fail with an out-of-memory error after a long model load (or
halfway through a sweep). `check` estimates, right after `preflight`, the parts one device holds:

  model        its parameters x dtype bytes; counted exactly by building the model on PyTorch's
               "meta" device (shapes only, no memory, no weights read), so tied embeddings, MoE
               experts and every family's own layout count as the real model does
  sae          n SAEs: W_enc d_in x d_sae, W_dec d_sae x d_out, b_enc, threshold d_sae, b_dec d_out, x dtype
  activations  one decoder layer's working set for `rows` stacked rows of `tokens` tokens: the
               residual stream in and out (2 x hidden) and the MLP's gate and up (2 x intermediate)
  kv_cache     generation: 2 (keys, values) x layers x kv_heads x head_dim x tokens x rows x dtype
  logits       the fp32 CE's logits: rows x tokens x vocab x 4, at most forward.LOGIT_CHUNK_ELEMENTS
               at once (next_token_ce scores in chunks), and twice that for cross_entropy's log-softmax
  fp32_head    the LM head's fp32 copy a non-fp32 model scores with (forward.fp32_head): vocab x hidden x 4
  encode       nu's fp32 encode chunk: pre-activations and activations, nu.ENCODE_CHUNK_ELEMENTS x 4 each

and, in host memory, `cache`: nu's cached SAE inputs (collect_tokens keeps them on the CPU): --cache-gb,
but at least one layer's and at most every layer's texts x tokens x hidden x dtype when the texts are known.
On a CPU run both pools are the machine's RAM. Against them: torch.cuda.mem_get_info (summed over the
visible GPUs under --device-map auto) and the RAM the kernel calls available (/proc/meminfo). Only the
estimate goes into a stage's meta: the free memory changes from run to run, and metas must not.
The estimate is an order of magnitude check, not an allocator: LANGSAE_SKIP_MEMORY_PLAN=1 runs anyway.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from langsae.errors import UserError

log = logging.getLogger(__name__)

GIB = 2**30
SKIP_ENV = "LANGSAE_SKIP_MEMORY_PLAN"
MEMINFO = "/proc/meminfo"


@dataclass(frozen=True)
class Sizes:
    """What a stage's largest step holds at once: `rows` stacked rows of up to `tokens` tokens."""

    rows: int
    tokens: int
    n_saes: int = 1
    cache_gb: float = 0.0  # host-side cache (nu's --cache-gb)
    cache_texts: int | None = None  # texts cached (None: not known), each up to `tokens` tokens
    cache_layers: int = 0  # layers whose inputs are cached, if --cache-gb holds them all (0: the run's)
    kv_cache: bool = False  # the generation engine
    logits: bool = True  # a full forward to the LM head (nu stops at its last read layer)
    encode: bool = False  # nu's chunked SAE encode
    knobs: tuple[str, ...] = ("--batch-size",)  # the flags that shrink rows/tokens/cache, for the message


@dataclass
class MemoryPlan:
    """Bytes per part on the device and in host memory, and what is available (None: not known)."""

    stage: str
    device: str
    parts: dict[str, int]
    host_parts: dict[str, int] = field(default_factory=dict)
    available: int | None = None
    host_available: int | None = None
    knobs: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        """On a CPU run the device is the host: one pool."""
        return torch.device(self.device).type == "cpu"

    def needed(self) -> tuple[int, int]:
        """(device bytes, host bytes); on a CPU run everything is device bytes."""
        dev, host = sum(self.parts.values()), sum(self.host_parts.values())
        return (dev + host, 0) if self.shared else (dev, host)

    def record(self) -> dict[str, Any]:
        """The estimate in GiB for a meta file: the parts and totals, nothing that varies between runs."""
        dev, host = self.needed()
        return {
            "parts_gib": {k: _gib(v) for k, v in self.parts.items()},
            "host_parts_gib": {k: _gib(v) for k, v in self.host_parts.items()},
            "device_gib": _gib(dev),
            "host_gib": _gib(host),
        }

    def check(self) -> "MemoryPlan":
        """Raise a one-line UserError when a pool's estimate exceeds what is available."""
        dev, host = self.needed()
        device_short = self.available is not None and dev > self.available
        host_short = not self.shared and self.host_available is not None and host > self.host_available
        over = []
        if device_short:
            parts = {**self.parts, **self.host_parts} if self.shared else self.parts
            over.append(f"{self.device} needs {_fmt(dev)} ({_listing(parts)}), {_fmt(self.available)} free")
        if host_short:
            have = _fmt(self.host_available)
            over.append(f"host memory needs {_fmt(host)} ({_listing(self.host_parts)}), {have} available")
        if not over:
            return self
        msg = f"memory plan for {self.stage}: " + "; ".join(over) + f"; {self.advice(device_short)}"
        if os.environ.get(SKIP_ENV):
            log.warning("%s (running anyway: %s is set)", msg, SKIP_ENV)
            return self
        raise UserError(msg)

    def advice(self, device_short: bool) -> str:
        """What to change: the stage's own flags, then (on a GPU) more GPUs or sharding the model."""
        knobs = list(self.knobs)
        if device_short and not self.shared:
            knobs += ["more GPUs", "--device-map auto"]
        return f"lower {' / '.join(knobs)} (or set {SKIP_ENV}=1 to run anyway)"


def _gib(n: int) -> float:
    """GiB to 4 significant digits: a tiny model's parts stay visible, a large one's stay readable."""
    return float(f"{n / GIB:.4g}")


def _fmt(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _listing(parts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items() if v)


# ----------------------------------------------------------------------------- the estimate


def parameter_count(model_cfg) -> int:
    """The model's parameters, counted on the meta device (no memory, no weights): tied weights once.
    A config transformers cannot build here (custom code) falls back to `dense_parameter_count`."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_cfg)
    except Exception as e:  # noqa: BLE001 - any family transformers cannot build from its config alone
        log.info("memory plan: parameters by formula (%s: %s)", type(e).__name__, e)
        return dense_parameter_count(model_cfg)
    return sum(p.numel() for p in model.parameters())


def dense_parameter_count(model_cfg) -> int:
    """The matrices of a decoder-only transformer (norms and biases left out): embeddings (and an untied
    head), attention q, k, v, o, and a gated MLP per layer, or num_experts of moe_intermediate_size
    and a router where the config has experts."""
    t = _text_config(model_cfg)
    d, heads = t.hidden_size, t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or d // heads
    kv = getattr(t, "num_key_value_heads", None) or heads
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    experts = getattr(t, "num_experts", None)
    if experts:
        mlp = experts * 3 * d * t.moe_intermediate_size + experts * d
    else:
        mlp = 3 * d * (getattr(t, "intermediate_size", None) or 4 * d)
    embeddings = t.vocab_size * d * (1 if getattr(t, "tie_word_embeddings", True) else 2)
    return embeddings + t.num_hidden_layers * (attention + mlp)


def sae_parameter_count(sae_cfg: dict) -> int:
    """W_enc, W_dec, b_enc, threshold and b_dec of one SAE or transcoder, from its config's widths."""
    d_in, d_sae = int(sae_cfg["d_in"]), int(sae_cfg["d_sae"])
    d_out = int(sae_cfg.get("d_out") or d_in)
    return d_in * d_sae + d_sae * d_out + 2 * d_sae + d_out


def _text_config(model_cfg):
    """The language model's config (multimodal configs nest it)."""
    get = getattr(model_cfg, "get_text_config", None)
    return get() if get else model_cfg


def estimate(
    model_cfg, sae_cfg: dict | None, dtype: torch.dtype, sizes: Sizes, n_params: int | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(device parts, host parts) in bytes; see the module docstring for each part's formula."""
    from langsae.forward import LOGIT_CHUNK_ELEMENTS
    from langsae.nu import ENCODE_CHUNK_ELEMENTS

    t = _text_config(model_cfg)
    b = dtype.itemsize
    hidden, vocab, layers = t.hidden_size, t.vocab_size, t.num_hidden_layers
    inter = getattr(t, "intermediate_size", None) or 4 * hidden
    head_dim = getattr(t, "head_dim", None) or hidden // t.num_attention_heads
    kv_heads = getattr(t, "num_key_value_heads", None) or t.num_attention_heads
    rows_tokens = sizes.rows * sizes.tokens
    n_params = parameter_count(model_cfg) if n_params is None else n_params
    parts = {
        "model": n_params * b,
        "sae": 0 if sae_cfg is None else sizes.n_saes * sae_parameter_count(sae_cfg) * b,
        "activations": rows_tokens * 2 * (hidden + inter) * b,
        "kv_cache": 2 * layers * kv_heads * head_dim * rows_tokens * b if sizes.kv_cache else 0,
        "logits": 2 * min(rows_tokens * vocab, LOGIT_CHUNK_ELEMENTS) * 4 if sizes.logits else 0,
        "fp32_head": vocab * hidden * 4 if sizes.logits and dtype != torch.float32 else 0,
        "encode": 0,
    }
    host = {}
    if sizes.cache_gb:  # at least one layer per pass (nu.score_layers), at most every layer, if known
        one_layer = (sizes.cache_texts or 0) * sizes.tokens * hidden * b
        cache = int(sizes.cache_gb * GIB)
        host["cache"] = min(max(cache, one_layer), one_layer * sizes.cache_layers) if one_layer else cache
    if sizes.encode and sae_cfg is not None:  # a chunk's fp32 input and output, at most every token
        n_tokens = (sizes.cache_texts or 0) * sizes.tokens or ENCODE_CHUNK_ELEMENTS
        parts["encode"] = 2 * min(ENCODE_CHUNK_ELEMENTS, n_tokens * int(sae_cfg["d_sae"])) * 4
    return parts, host


# ----------------------------------------------------------------------------- what is available


def host_available() -> int | None:
    """This process's share of the RAM the kernel can give without swapping (MemAvailable, else free
    pages; None if unknown): under torchrun the ranks of one node (LOCAL_WORLD_SIZE) share it."""
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // ranks
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // ranks
    except (ValueError, OSError, AttributeError):
        return None


def device_available(device: str, device_map: str | None = None) -> int | None:
    """Free bytes on `device`: the GPU's free memory (all visible GPUs' under --device-map, any of
    auto / balanced / sequential, which spreads the model over them), the host's RAM on a CPU, None
    elsewhere (mps...)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return host_available()
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    if device_map is not None:
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    return torch.cuda.mem_get_info(dev)[0]


# ----------------------------------------------------------------------------- for the stages


def plan(cfg, stage: str, layer: int | None = None, **sizes) -> MemoryPlan:
    """The plan of `stage` for run `cfg` (config.RunConfig): the model's config and the SAE of `layer`
    (default: the run's first layer, else 0), widths only. An SAE whose config cannot be read here
    (not cached offline, a release or id sae-lens lacks) counts as 0: the stage's own checks name that."""
    from langsae.model import model_config, sae_config

    model_cfg = model_config(cfg.preset)
    n_layers = _text_config(model_cfg).num_hidden_layers
    if layer is None:
        layer = next((L for L in cfg.layers or () if 0 <= L < n_layers), 0)
    try:
        sae_cfg = sae_config(cfg.preset, layer)
    except Exception as e:  # noqa: BLE001 - sae-lens's lookups raise ValueError, KeyError... before its load
        log.info("memory plan without the SAE: %s", e)
        sae_cfg = None
    s = Sizes(**sizes)
    if s.cache_layers == 0:
        s = replace(s, cache_layers=len(cfg.layers or ()) or n_layers)
    parts, host = estimate(model_cfg, sae_cfg, cfg.dtype, s)
    device_map = getattr(cfg, "device_map", None)
    return MemoryPlan(
        stage,
        str(cfg.device),
        parts,
        host,
        device_available(cfg.device, device_map),
        host_available(),
        s.knobs,
    )


def check(cfg, stage: str, layer: int | None = None, **sizes) -> MemoryPlan:
    """`plan`, refused in one line when it cannot fit; returns the plan (its `record()` goes in the meta)."""
    p = plan(cfg, stage, layer, **sizes).check()
    dev, host = p.needed()
    log.info(
        "memory plan for %s: %s on %s (%s)%s",
        stage,
        _fmt(dev),
        p.device,
        _listing(p.parts),
        f", {_fmt(host)} host" if host else "",
    )
    return p


def nu_plan(cfg, stage: str, cache_gb: float) -> MemoryPlan:
    """The nu stage: one forward of --batch-size texts up to forward.MAX_TOKENS, stopped at the last read
    layer (no logits); two SAEs (one encoding, the next one read meanwhile); the cached SAE inputs."""
    from langsae.forward import MAX_TOKENS

    n_texts = cfg.n_texts_per_lang * len(cfg.languages) if cfg.n_texts_per_lang > 0 else None
    return check(
        cfg,
        stage,
        rows=cfg.batch_size,
        tokens=MAX_TOKENS,
        n_saes=2,
        cache_gb=cache_gb,
        cache_texts=n_texts,
        logits=False,
        encode=True,
        knobs=("--cache-gb", "--batch-size"),
    )


def sweep_plan(cfg, stage: str, rows_per_forward: int) -> MemoryPlan:
    """A ΔCE stage: conditions stacked up to --rows-per-forward rows (at least one batch, sweep.ablated_ce)
    of texts up to forward.MAX_TOKENS, run to the fp32 CE. One SAE: a TopK layer's reads need it whole."""
    from langsae.forward import MAX_TOKENS

    rows = max(rows_per_forward, cfg.batch_size)
    return check(cfg, stage, rows=rows, tokens=MAX_TOKENS, knobs=("--rows-per-forward", "--batch-size"))


def generation_plan(
    cfg, stage: str, rows_per_forward: int, new_tokens: int, prompt_tokens: int | None = None
) -> MemoryPlan:
    """A generating stage (downstream, steering): --rows-per-forward rows of a prompt (up to
    `prompt_tokens`, at least forward.MAX_TOKENS: texts and few-shot prompts) and `new_tokens`, with
    their KV cache, and the fp32 scoring of continuations."""
    from langsae.forward import MAX_TOKENS

    tokens = max(prompt_tokens or 0, MAX_TOKENS) + new_tokens
    knobs = ("--rows-per-forward", "--max-new-tokens")
    return check(cfg, stage, rows=rows_per_forward, tokens=tokens, kv_cache=True, knobs=knobs)
