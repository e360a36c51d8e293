"""Model and SAE loading, and the mapping of sae-lens hook names onto HF modules.

We run plain `transformers` models with forward hooks. A transcoder says where it reads
and writes through its own metadata (`hook_name`, `hook_name_out`), in TransformerLens
names; `hook_point` maps them to HookPoints and `hook_module` finds the HF module whose
input or output each one is. `Arch` (looked up by `architecture`) is the only place that knows
a model family's layout: its layers, rotary embedding, final norm, LM head and hooked modules.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import pkgutil
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from langsae.artifacts import cached_sha256
from langsae.errors import UserError
from langsae.hub import hf_token, hub_error_message, local_hub_cache

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from langsae.config import Preset

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- hook points


@dataclass(frozen=True)
class HookPoint:
    """Where an SAE reads or writes: the input or output of a layer's MLP sublayer or of the whole block.

    The MLP sublayer is what TransformerLens puts between `mlp.hook_in` and `hook_mlp_out`:
    the MLP module, plus the post-MLP norm on models that have one (Gemma 2). `hook_module`
    finds the HF module each point lives on; everything that hooks the model goes through it.
    """

    layer: int
    module: str  # "mlp" (the MLP sublayer of model.model.layers[L]) or "block" (model.model.layers[L])
    io: str  # "input" (first argument) or "output"

    def sublayer_input(self) -> "HookPoint":
        """The input of the same sublayer: what a transcoder writing this point reads."""
        return HookPoint(self.layer, self.module, "input")

    def precedes(self, other: "HookPoint") -> bool:
        """Whether a forward computes this point before `other`."""
        return self._rank() < other._rank()

    def _rank(self) -> tuple[int, int]:
        return self.layer, _FORWARD_ORDER.index((self.module, self.io))


_FORWARD_ORDER = [
    ("block", "input"),
    ("mlp", "input"),
    ("mlp", "output"),
    ("block", "output"),
]  # within a layer


_HOOK_PATTERNS = {
    r"blocks\.(\d+)\.mlp\.hook_in": ("mlp", "input"),  # the MLP module's input, after the pre-MLP norm's gain
    r"blocks\.(\d+)\.hook_mlp_out": ("mlp", "output"),  # what the MLP sublayer adds to the residual stream
    r"blocks\.(\d+)\.hook_resid_post": ("block", "output"),
}


def hook_point(hook_name: str) -> HookPoint:
    """Map a TransformerLens hook name to a HookPoint; an unknown name is an error, not a guess."""
    for pattern, (module, io) in _HOOK_PATTERNS.items():
        m = re.fullmatch(pattern, hook_name)
        if m:
            return HookPoint(int(m.group(1)), module, io)
    raise UserError(
        f"SAE hook {hook_name!r} is not supported; known: blocks.L.mlp.hook_in, blocks.L.hook_mlp_out, "
        "blocks.L.hook_resid_post"
    )


@dataclass(frozen=True)
class Arch:
    """Everything langsae knows about one family of HF decoder models; nothing else reaches into a model.

    The methods answer for the layout Qwen3 and Gemma 2 share: `model.model` holds `.layers`,
    `.rotary_emb` and the final `.norm`; `model.lm_head` is the LM head; a decoder layer takes
    (hidden, attention_mask=, position_ids=, position_embeddings=). A family laid out the same way
    is one more `ARCHITECTURES` entry, keyed by its `config.model_type`, naming what differs in
    fields; one laid out otherwise subclasses Arch and overrides the methods that differ:

        class Renamed(Arch):
            def decoder(self, model):
                return model.transformer

        ARCHITECTURES["renamed"] = Renamed(mlp_output_norm=None)

    mlp_output_norm: the decoder layer's attribute holding the norm applied to the MLP's output
    before it joins the residual stream (Gemma 2's post_feedforward_layernorm), or None (Qwen3).
    """

    mlp_output_norm: str | None = None

    def decoder(self, model: PreTrainedModel) -> torch.nn.Module:
        """The decoder stack without the LM head (what `model(...)` runs before the head)."""
        return model.model

    def layers(self, model: PreTrainedModel) -> torch.nn.ModuleList:
        return self.decoder(model).layers

    def final_norm(self, model: PreTrainedModel) -> torch.nn.Module:
        return self.decoder(model).norm

    def lm_head(self, model: PreTrainedModel) -> torch.nn.Module:
        return model.lm_head

    def position_embeddings(self, model: PreTrainedModel, hidden: torch.Tensor, position_ids: torch.Tensor):
        """The rotary embedding's (cos, sin) for `position_ids`, as the decoder's forward makes them."""
        return self.decoder(model).rotary_emb(hidden, position_ids)

    def run_layer(self, layer: torch.nn.Module, hidden, mask, position_ids, position_embeddings):
        """One decoder layer on hidden [R, T, d], without a KV cache; returns its output hidden states."""
        out = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            past_key_values=None,
            use_cache=False,
        )
        return out[0] if isinstance(out, tuple) else out

    def hook_module(self, model: PreTrainedModel, hp: HookPoint) -> torch.nn.Module:
        """See the module-level `hook_module`."""
        layer = self.layers(model)[hp.layer]
        if hp.module == "block":
            return layer
        if hp.io == "output" and self.mlp_output_norm is not None:
            return getattr(layer, self.mlp_output_norm)
        return layer.mlp


ARCHITECTURES: dict[str, Arch] = {  # config.model_type -> its adapter: the one place to add a model family
    "qwen3": Arch(),
    "gemma2": Arch(mlp_output_norm="post_feedforward_layernorm"),
    # Qwen3's layout; each layer's `mlp` is a sparse MoE block (router + experts) or, at mlp_only_layers /
    # off decoder_sparse_step, a dense MLP. Hook points sit on `mlp` either way: its input is the
    # post-attention norm's output, its output what joins the residual stream (a plain tensor in
    # transformers 5; 4.x returned (hidden, router_logits), which forward's hooks take the first of).
    "qwen3_moe": Arch(),
}


def architecture(model: PreTrainedModel) -> Arch:
    """The adapter for the model's family; an unknown family is one error naming where to add it."""
    model_type = getattr(model.config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UserError(
            f"model type {model_type!r} is not supported (known: {', '.join(ARCHITECTURES)}); "
            "add its adapter to ARCHITECTURES in langsae/model.py"
        )
    return arch


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    return architecture(model).layers(model)


def hook_module(model: PreTrainedModel, hp: HookPoint) -> torch.nn.Module:
    """The HF module whose first input (hp.io == "input") or output (hp.io == "output") is `hp`.

    block: the decoder layer L, in and out.
    mlp input: the MLP module's first argument, as TransformerLens's `blocks.L.mlp.hook_in`:
        post_attention_layernorm's output on Qwen3, pre_feedforward_layernorm's on Gemma 2,
        both after their gain.
    mlp output: TransformerLens's `blocks.L.hook_mlp_out`, what is added to the residual
        stream: the output of the layer's MLP-output norm where the family has one (Gemma 2's
        post_feedforward_layernorm, `Arch.mlp_output_norm`), else the MLP module's output (Qwen3).
        Its input is then the raw MLP output, not the MLP input: code that needs both takes
        the input at its own hook point (`HookPoint.sublayer_input`), never from the hooked
        module's arguments.
    """
    return architecture(model).hook_module(model, hp)


# ----------------------------------------------------------------------------- model


def _hub_kwargs() -> dict:
    token = hf_token()
    return {"token": token} if token else {}


def _prepare(preset: Preset) -> None:
    """Let the preset make its files first (the toy builds itself on first use). A hook named as
    "module:function" is imported only now, so the presets do not import the toy's training code."""
    hook = preset.prepare
    if isinstance(hook, str):
        hook = pkgutil.resolve_name(hook)
    if hook is not None:
        hook()


def model_config(preset: Preset):
    """The model's config alone (no weights): enough to validate layers before heavy work."""
    from transformers import AutoConfig

    _prepare(preset)
    try:
        return AutoConfig.from_pretrained(preset.model_id, **_hub_kwargs())
    except (OSError, ValueError) as e:
        raise UserError(hub_error_message(f"model {preset.model_id!r}", e, preset.model_id)) from e


def check_layers(layers: tuple[int, ...] | None, n_layers: int, flag: str = "--layers") -> tuple[int, ...]:
    """Every layer if None; otherwise each must lie in [0, n_layers). Checked before any result is
    looked for, so a layer the model lacks is named as such, not as a missing result to compute."""
    if layers is None:
        return tuple(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise UserError(
            f"{flag}: layer(s) {bad} out of range: the model has {n_layers} layers (0-{n_layers - 1})"
        )
    return layers


def load_tokenizer(preset: Preset) -> PreTrainedTokenizerBase:
    """The model's tokenizer, right-padded (cheap: stages that must know about it before the weights
    load it first)."""
    from transformers import AutoTokenizer

    _prepare(preset)
    try:
        tokenizer = AutoTokenizer.from_pretrained(preset.model_id, **_hub_kwargs())
    except (OSError, ValueError) as e:
        raise UserError(hub_error_message(f"model {preset.model_id!r}", e, preset.model_id)) from e
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    preset: Preset,
    device: str,
    dtype: torch.dtype,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The HF causal LM (eval mode) and its tokenizer (`tokenizer` if already loaded, else
    `load_tokenizer`).

    device_map: None puts the whole model on `device`; "auto" / "balanced" / "sequential" (or an explicit
    {module name: device, "cpu" or "disk"} dict) lets accelerate shard it over the visible GPUs, the CPU
    and `offload_folder` (the flag --device-map, `placement`), within `max_memory` if given.
    """
    from transformers import AutoModelForCausalLM

    if tokenizer is None:
        tokenizer = load_tokenizer(preset)
    _prepare(preset)
    sharded = {}
    if device_map is not None:
        sharded = {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
    try:
        model = AutoModelForCausalLM.from_pretrained(preset.model_id, dtype=dtype, **sharded, **_hub_kwargs())
    except (OSError, ValueError) as e:
        raise UserError(hub_error_message(f"model {preset.model_id!r}", e, preset.model_id)) from e
    architecture(model)  # a family langsae cannot hook is refused here, before any stage work
    if device_map is None:
        model = model.to(device)
    return model.eval(), tokenizer


OFFLOAD_FOLDER = "offload"  # below the run folder: the weights accelerate puts on disk under --device-map


def placement(cfg) -> dict:
    """`load_model`'s device-map arguments for run `cfg` (config.RunConfig): its --device-map and
    --max-memory, and the offload folder below the run folder. Every stage loads as
    `load_model(cfg.preset, cfg.device, cfg.dtype, tokenizer, **placement(cfg))`."""
    if cfg.device_map is None:
        return {}
    offload = Path(cfg.features_dir) / OFFLOAD_FOLDER
    max_memory = dict(cfg.max_memory) if cfg.max_memory else None  # from_pretrained rewrites it in place
    return {"device_map": cfg.device_map, "max_memory": max_memory, "offload_folder": offload}


# ----------------------------------------------------------------------------- where modules run


def execution_device(module: torch.nn.Module) -> torch.device:
    """The device `module` computes on, with or without an accelerate device map.

    A module that accelerate dispatched (--device-map) carries an AlignDevicesHook whose
    `execution_device` says where its forward runs: for a module offloaded to the CPU or disk its
    parameters sit on `meta` and are loaded there only for the forward, so a parameter's device would
    say "meta". Without a hook (no device map) a module runs where its parameters lie.
    """
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type != "meta":
            return t.device
    raise ValueError(f"{type(module).__name__} has no execution device: offloaded without an accelerate hook")


def layer_device(model: PreTrainedModel, layer: int) -> torch.device:
    """Where decoder layer `layer` runs: where its edits' tensors, its residual and its SAE belong."""
    return execution_device(decoder_layers(model)[layer])


def input_device(model: PreTrainedModel) -> torch.device:
    """Where the token embedding runs: where input ids go."""
    return execution_device(model.get_input_embeddings())


# ----------------------------------------------------------------------------- identity
#
# Cache keys and staleness checks name the model by what it is, never by where it lies, so a run
# folder, the toy or a whole clone can move and keep its results. A hub model is its repo id and
# the commit the local cache holds (hashing a GB of hub weights at every stage start would cost
# more than it tells); a local folder is the SHA-256 of its files; the toy is its build's fingerprint.
# The SAE needs nothing more than its release and ids (config.RunConfig.key): a hub release is
# content-addressed by name, and the toy's transcoders are part of the toy's fingerprint.

IDENTITY_FILES = ("config.json", "tokenizer.json", "tokenizer.model")  # besides the weight files
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def hub_commit(repo_id: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit `repo_id`'s main resolves to in the local Hugging Face cache, or None if not cached."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    repo = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    try:
        return (repo / "refs" / "main").read_text().strip() or None
    except (OSError, ValueError):
        return None


def folder_identity(folder: Path) -> str:
    """SHA-256 of a local model folder's config, tokenizer and weight files, by name (not by path).
    Each file is hashed once per process while its size and mtime are unchanged (cached_sha256)."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.iterdir() if p.name in IDENTITY_FILES or p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        if p.is_file():
            h.update(f"{p.name}\0{cached_sha256(p)}\n".encode())
    return "sha256:" + h.hexdigest()


def model_identity(model_id: str) -> str:
    """What the model is, for cache keys: 'toy-sha256:…' (a toy build's model folder: `root/model` beside
    its build.json), 'sha256:…' (another local folder), or the hub id with '@<commit>' when cached."""
    from langsae.toy import build_identity  # langsae.toy imports this module

    path = Path(model_id)
    if path.is_dir():
        toy = build_identity(path.parent) if path.name == "model" else None
        return toy or folder_identity(path)
    if path.is_absolute() or model_id.startswith("."):  # a local folder that is not there (yet): no content
        return f"absent:{path.name}"
    commit = hub_commit(model_id)
    return f"{model_id}@{commit}" if commit else model_id


# ----------------------------------------------------------------------------- SAEs


def _directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def _converter_name(preset: Preset) -> str:
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name

    return preset.sae_converter or get_conversion_loader_name(preset.sae_release)


def _sae_repo(preset: Preset) -> str | None:
    """The hub repo that holds the release's files (for the fetch hint); None for a project-local cache."""
    if preset.sae_hub_cache is not None:
        return None
    info = _directory().get(preset.sae_release)
    return info.repo_id if info else preset.sae_release


def check_sae_ids(preset: Preset, layers: tuple[int, ...]) -> None:
    """Refuse a release or id that sae-lens does not know, before any heavy work."""
    directory = _directory()
    release = preset.sae_release
    if release not in directory:
        if "/" in release:  # a bare HF repo id: sae-lens loads it with the named converter
            return
        close = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"SAE release {release!r} is not known to sae-lens{hint}")
    known = directory[release].saes_map
    for layer in layers:
        sae_id = preset.sae_id_template.format(layer=layer)
        if sae_id not in known:
            example = next(iter(known), "")
            raise UserError(
                f"SAE id {sae_id!r} (layer {layer}) is not in release {release!r}; ids look like {example!r} "
                "(check --sae-id-template and --layers)"
            )


def sae_config(preset: Preset, layer: int) -> dict:
    """The SAE's config dict (hook names, widths) without its weights."""
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_CONFIG_GETTERS
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides, get_repo_id_and_folder_name

    sae_id = preset.sae_id_template.format(layer=layer)
    repo_id, folder = get_repo_id_and_folder_name(preset.sae_release, sae_id)
    getter = NAMED_PRETRAINED_SAE_CONFIG_GETTERS[_converter_name(preset)]
    try:
        with local_hub_cache(preset.sae_hub_cache):
            return getter(repo_id, folder, "cpu", False, get_config_overrides(preset.sae_release, sae_id))
    except Exception as e:  # hub / file errors come in many types
        raise UserError(hub_error_message(f"SAE {preset.sae_release}/{sae_id}", e, _sae_repo(preset))) from e


def sae_hook_names(cfg: dict) -> tuple[str, str]:
    """(where the SAE reads, where it writes), as TransformerLens hook names.

    Loaders put `hook_name` at the top of the config (mwhanna, Gemma Scope) or under
    `metadata` (sae-lens's own format); a residual SAE reads and writes the same place.
    """
    meta = cfg.get("metadata") or {}
    read = cfg.get("hook_name") or meta.get("hook_name")
    if not read:
        raise UserError("the SAE's config names no hook_name; cannot tell where it reads")
    write = cfg.get("hook_name_out") or meta.get("hook_name_out") or read
    return read, write


def sae_hook_points(cfg: dict) -> tuple[HookPoint, HookPoint]:
    """HookPoints of `sae_hook_names`."""
    read, write = sae_hook_names(cfg)
    return hook_point(read), hook_point(write)


def load_sae(preset: Preset, layer: int, device: str, dtype: torch.dtype) -> SAE:
    """One layer's SAE or transcoder through sae-lens's own loader for the release, read into memory.

    sae-lens reads the file through a memory map and casts tensor by tensor to `dtype`
    (no fp32 copy of the whole SAE is made for a bf16 target); at the file's own dtype it
    keeps the mapped file as the weights, unread until first used. So the weights are
    loaded on the CPU and every page is touched here: the file is read by whoever calls
    this (the nu stage's prefetch thread), not by the first encode. The move to another
    device comes after, so a GPU stream never waits on a disk read.
    """
    sae = _sae_lens_load(preset, layer, "cpu", dtype)
    _read_pages(sae)
    return sae if torch.device(device).type == "cpu" else sae.to(device)


def _sae_lens_load(preset: Preset, layer: int, device: str, dtype: torch.dtype) -> SAE:
    """`SAE.from_pretrained` for one layer of the preset's release, errors as one line."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS

    sae_id = preset.sae_id_template.format(layer=layer)
    converter = NAMED_PRETRAINED_SAE_LOADERS[preset.sae_converter] if preset.sae_converter else None
    log.info("loading SAE %s / %s", preset.sae_release, sae_id)
    try:
        with local_hub_cache(preset.sae_hub_cache), warnings.catch_warnings():
            # sae-lens suggests TransformerLens kwargs; we run plain transformers.
            warnings.filterwarnings("ignore", message="(?s).*model_from_pretrained_kwargs")
            sae = SAE.from_pretrained(
                preset.sae_release,
                sae_id,
                device=device,
                dtype=str(dtype).removeprefix("torch."),
                converter=converter,
            )
    except UserError:
        raise
    except Exception as e:
        raise UserError(hub_error_message(f"SAE {preset.sae_release}/{sae_id}", e, _sae_repo(preset))) from e
    return sae.eval()


PAGE_BYTES = 4096


@torch.no_grad()
def _read_pages(module: torch.nn.Module) -> None:
    """Touch one byte in every page of each CPU weight's storage, so that memory-mapped weights
    are read from the file now (a no-op in cost for weights already in memory)."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type == "cpu" and t.untyped_storage().nbytes():
            as_bytes = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage())
            as_bytes[::PAGE_BYTES].sum()


def neuronpedia_id(preset: Preset, layer: int) -> str | None:
    info = _directory().get(preset.sae_release)
    if info is None or info.neuronpedia_id is None:
        return None
    return info.neuronpedia_id.get(preset.sae_id_template.format(layer=layer))
