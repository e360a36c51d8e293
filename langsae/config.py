"""Presets (model + SAE release) and the command line every stage shares.

A preset names a model and an SAE release; `--model-id`, `--sae-release` and
`--sae-id-template` override its parts. Each run's artifacts live under
`sae_features/<run>/` and its figures under `output/<run>/`, where `<run>` names the
preset (or the model and release of a custom run), so runs of different models never mix.
A run folder elsewhere (`--out-dir`) keeps its figures beside it, in `<out-dir>/figures/`
(`--figures-dir` chooses another place). Cache keys name the model by content
(`RunConfig.key`), so a run folder can be copied or moved and is reused as it is.
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from langsae import distributed
from langsae.data import PAPER_LANGUAGES, validate_languages
from langsae.errors import UserError
from langsae.model import model_identity
from langsae.toy_paths import TOY_RELEASE, TOY_ROOT, refuse_devtest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEATURES_ROOT = PROJECT_ROOT / "sae_features"
OUTPUT_ROOT = PROJECT_ROOT / "output"


@dataclass(frozen=True)
class Preset:
    """A model and the SAE release that reads it.

    `sae_converter` names a sae-lens loader for releases that are not in sae-lens's
    directory (a bare repo id); `sae_hub_cache` is a local Hugging Face cache holding
    the SAE files (the toy model's transcoders live in the project, not in ~/.cache).
    `defaults` overrides the command line's defaults for this preset. `prepare`, if set (a callable
    or a "module:function" name), is called before the model or SAE is loaded (the toy builds
    itself there on first use).
    """

    name: str
    model_id: str
    sae_release: str
    sae_id_template: str
    sae_converter: str | None = None
    sae_hub_cache: Path | None = None
    defaults: dict = field(default_factory=dict)
    prepare: str | Callable[[], object] | None = None


PRESETS: dict[str, Preset] = {
    "qwen3-0.6b": Preset(
        "qwen3-0.6b",
        "Qwen/Qwen3-0.6B",
        "mwhanna-qwen3-0.6b-transcoders-lowl0",
        "layer_{layer}",
        defaults={"downstream_layer": 10},  # the seed claim's layer (downstream_ablation.py)
    ),
    "gemma-2-2b": Preset(
        "gemma-2-2b",
        "google/gemma-2-2b",
        "gemma-scope-2b-pt-res-canonical",
        "layer_{layer}/width_16k/canonical",
    ),
    "toy": Preset(
        "toy",
        str(TOY_ROOT / "model"),
        TOY_RELEASE,
        "layer_{layer}.safetensors",
        sae_converter="mwhanna_transcoder",
        sae_hub_cache=TOY_ROOT / "hub",
        # CPU-sized: the whole toy pipeline runs in minutes (n_eval_texts: Section 5's --n-texts)
        # steer_*: steer_language.py's defaults, one pair, four alphas on enough texts for intervals that
        # can exclude zero; alphas in steps that resolve the 0.25-nat collateral budget (on the toy,
        # gated alpha 2 already costs 0.38 nats, so 1,2,4,8 left one alpha within it: docs/toy_model.md);
        # downstream_*: downstream_ablation.py's --n-items (qa), --n-topic-items (all)
        # and --topic-shots (0: the toy's topic lines are the zero-shot prompt, langsae.toy.task_text)
        defaults={
            "device": "cpu",
            "dtype": "float32",
            "batch_size": 16,
            "n_eval_texts": 40,
            "steer_layer": 1,
            "steer_source": "spa_Latn",
            "steer_target": "eng_Latn",
            "steer_alphas": "1,1.25,1.5,2",
            "steer_n_texts": 40,
            "steer_random_draws": 1,
            "downstream_n_items": 40,
            "downstream_n_topic_items": -1,
            "downstream_topic_shots": 0,
            "downstream_tasks": "qa,topic",
        },  # the tasks whose data is bundled: the toy stays offline
        prepare="langsae.toy:ensure_built",  # imported when called: the presets need no training code
    ),
}
# Presets read from sae-lens's release registry when used (langsae.presets): the short name is chosen
# here, everything else (model, SAE ids, layers, the default layer) comes from the registry. A family
# with two releases of one model gets a suffix: qwen3-14b-lowl0 (the low-L0 transcoders), -k50/-k100
# (Qwen-Scope's TopK k); the bare Qwen-Scope name is k=50, which every Qwen-Scope size has.
REGISTRY_PRESETS = {
    "qwen3-1.7b": "mwhanna-qwen3-1.7b-transcoders-lowl0",
    "qwen3-4b": "mwhanna-qwen3-4b-transcoders",
    "qwen3-8b": "mwhanna-qwen3-8b-transcoders",
    "qwen3-14b": "mwhanna-qwen3-14b-transcoders",
    "qwen3-14b-lowl0": "mwhanna-qwen3-14b-transcoders-lowl0",
    "qwen-scope-3-1.7b-k50": "qwen-scope-3-1.7b-base-w32k-l50",
    "qwen-scope-3-1.7b-k100": "qwen-scope-3-1.7b-base-w32k-l100",
    "qwen-scope-3-8b-k50": "qwen-scope-3-8b-base-w64k-l50",
    "qwen-scope-3-8b-k100": "qwen-scope-3-8b-base-w64k-l100",
    "qwen-scope-3-30b-a3b-k50": "qwen-scope-3-30b-a3b-base-w32k-l50",
    "qwen-scope-3-30b-a3b-k100": "qwen-scope-3-30b-a3b-base-w128k-l100",
}
PRESET_ALIASES = {
    "gemma-2b": "gemma-2-2b",
    "qwen-scope-3-1.7b": "qwen-scope-3-1.7b-k50",
    "qwen-scope-3-8b": "qwen-scope-3-8b-k50",
    "qwen-scope-3-30b-a3b": "qwen-scope-3-30b-a3b-k50",
}
CUSTOM = "custom"


def preset_names() -> list[str]:
    """Every preset's name, the hand-written ones first (aliases and custom left out)."""
    return [*PRESETS, *REGISTRY_PRESETS]


def named_preset(name: str) -> Preset | None:
    """The preset called `name` (or an alias of it); None if there is none. A registry preset is read
    from sae-lens's registry only now: importing sae-lens takes seconds, which --help should not pay."""
    name = PRESET_ALIASES.get(name, name)
    if name in REGISTRY_PRESETS:
        from langsae.presets import registry_preset

        return registry_preset(name).preset()
    return PRESETS.get(name)


LABELS = ("model_id", "device_map")  # in RunConfig.describe() for people, left out of RunConfig.key()


@dataclass(frozen=True)
class RunConfig:
    """Everything common to every stage, resolved from the command line."""

    preset: Preset
    run_name: str
    features_dir: Path
    output_dir: Path
    languages: tuple[str, ...]
    layers: tuple[int, ...] | None  # None: every layer of the model
    n_texts_per_lang: int
    split: str
    device: str
    dtype: torch.dtype
    batch_size: int
    seed: int
    force: bool
    device_map: str | None = None  # --device-map: accelerate shards the model (model.placement)
    max_memory: dict | None = None  # --max-memory: accelerate's max_memory for that

    def sae_id(self, layer: int) -> str:
        return self.preset.sae_id_template.format(layer=layer)

    def describe(self) -> dict:
        """The settings that identify a run, for metadata: `model` is the model's content identity
        (model.model_identity), `model_id` its name or path for people (not part of `key`)."""
        return {
            "preset": self.preset.name,
            "model_id": self.preset.model_id,
            "model": model_identity(self.preset.model_id),
            "sae_release": self.preset.sae_release,
            "sae_id_template": self.preset.sae_id_template,
            "languages": list(self.languages),
            "split": self.split,
            "n_texts_per_lang": self.n_texts_per_lang,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device_map": self.device_map,  # where layers ran, not what they compute: not in key()
        }

    def model_settings(self, *fields: str) -> dict:
        """The model part of a stage's cache key: these fields of `describe()`, in this order (by default
        the model's content identity, the SAE release and id template, and the dtype)."""
        d = self.describe()
        return {k: d[k] for k in fields or ("model", "sae_release", "sae_id_template", "dtype")}

    def key(self) -> dict:
        """`describe()` without what names a place: what cache keys and staleness checks compare, so a
        run folder (or the toy, or the clone) copied elsewhere keeps its results. The SAE is its
        release and ids; its local cache's path never enters (the toy's is in the toy's identity)."""
        return {k: v for k, v in self.describe().items() if k not in LABELS}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_")


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """'all' or None -> None; '3,5,7' -> (3, 5, 7); '0-3' -> (0, 1, 2, 3)."""
    if text is None or text.strip().lower() == "all":
        return None
    layers: list[int] = []
    for part in _comma_list(text):
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:  # else an empty range: later messages would blame missing results
                    raise UserError(f"--layers: the range {part} runs downwards; write it as {hi}-{lo}")
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise UserError(
                f"--layers: cannot read {part!r}; give comma-separated integers such as 0,5,10 "
                "or a range 0-27"
            ) from None
    if not layers:
        raise UserError(f"--layers {text!r} names no layer; give e.g. 0,5,10, a range 0-27, or all")
    return tuple(sorted(set(layers)))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help, and the script's docstring (its examples) kept as written.

    A default of None (the help says what unset means) or an off switch's False says nothing: left out.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or (action.default is False and action.nargs == 0):
            return action.help
        return super()._get_help_string(action)


# The flags only a stage that loads the model reads: the others hide them from --help (and accept them,
# since run_pipeline.py passes every stage the same common flags).
MODEL_FLAGS = ("--device", "--device-map", "--max-memory", "--dtype", "--batch-size")


def build_parser(
    description: str, layers_default: str = "every layer", ignored: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """The parser every stage starts from; a stage adds only its own flags.

    layers_default: what an unset --layers means in this script. ignored: common flags the script
    accepts (run_pipeline.py passes every stage the same ones) but never reads, left out of its --help.
    """
    # no abbreviations: run_pipeline.py passes every flag but its own on to the stages, so `--stage` must
    # not mean `--stages`
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("model and SAE")
    g.add_argument(
        "--model",
        default="qwen3-0.6b",
        help=f"preset: {', '.join(preset_names())} (aliases: "
        + ", ".join(f"{a} = {t}" for a, t in PRESET_ALIASES.items())
        + f"), or {CUSTOM} with --model-id/--sae-release/--sae-id-template; the presets: README.md",
    )
    g.add_argument("--model-id", help="Hugging Face model id or local folder; overrides the preset's model")
    g.add_argument(
        "--sae-release", help="sae-lens release name (or HF repo id); overrides the preset's release"
    )
    g.add_argument("--sae-id-template", help="SAE id for a layer, with {layer}, e.g. 'layer_{layer}'")
    g = p.add_argument_group("data")
    g.add_argument(
        "--languages",
        default=",".join(PAPER_LANGUAGES),
        help="comma-separated FLORES+ codes; bundled (offline): the paper's ten and the 205 SIB-200 "
        "languages (e.g. glg_Latn, kas_Arab); others (e.g. wuu_Hans) come from the gated hub dataset",
    )
    g.add_argument("--layers", help=f"comma-separated layers or ranges (0-27); default: {layers_default}")
    g.add_argument(
        "--n-texts-per-lang",
        type=int,
        default=-1,
        help="first N selection texts of each language (the nu stage), in file order; -1 = all. "
        "Section 5 sets its evaluation texts with --n-texts",
    )
    g.add_argument(
        "--split",
        default="dev",
        choices=["dev", "devtest"],
        help="FLORES split; on devtest the ten come from SIB-200 too",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--out-dir",
        type=Path,
        help="the run's artifact folder; default sae_features/<run>/. Results are keyed by content (model "
        "and SAE identity, settings), not by path: a run folder copied or moved elsewhere is reused as it is",
    )
    g.add_argument(
        "--figures-dir",
        type=Path,
        help="where figures and REPORT.md go; default output/<path below sae_features/> for a run folder "
        "under sae_features/ (output/<run>/), else <out-dir>/figures/ beside the run",
    )
    g.add_argument("--device", help="torch device; default cuda if present, else cpu (toy preset: cpu)")
    g.add_argument(
        "--dtype", choices=list(DTYPES), help="model and SAE dtype; default bfloat16 (toy preset: float32)"
    )
    g.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="shard the model over the visible GPUs (then the CPU, then <out-dir>/offload/ on disk) with "
        "accelerate, for a model larger than one GPU; each SAE and edit sits on its layer's device. Default: "
        "the whole model on --device. Not with torchrun (docs/stages.md)",
    )
    g.add_argument(
        "--max-memory",
        help="with --device-map: the most each device may hold, e.g. 0=40GiB,1=40GiB,cpu=100GiB "
        "(accelerate's max_memory); default: what is free",
    )
    g.add_argument("--batch-size", type=int, help="texts per forward pass; default 8 (toy preset: 16)")
    g.add_argument("--seed", type=int, default=0, help="seed for every random choice")
    g.add_argument("--force", action="store_true", help="recompute results even when cached ones match")
    _hide(p, ignored)
    return p


def _hide(p: argparse.ArgumentParser, flags: Sequence[str]) -> None:
    """Leave `flags` out of --help, still accepted: a flag a script ignores must not look like a setting."""
    actions = {opt: a for a in p._actions for opt in a.option_strings}
    unknown = [f for f in flags if f not in actions]
    if unknown:
        raise ValueError(f"no such common flag: {unknown}")
    for flag in flags:
        actions[flag].help = argparse.SUPPRESS


def resolve_preset(args: argparse.Namespace) -> Preset:
    if args.model == CUSTOM:
        missing = [f for f in ("model_id", "sae_release", "sae_id_template") if not getattr(args, f)]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise UserError(f"--model custom needs {flags}")
        base = Preset(CUSTOM, args.model_id, args.sae_release, args.sae_id_template)
    else:
        base = named_preset(args.model) or _unknown_model(args.model)
    overrides = {
        "model_id": args.model_id or base.model_id,
        "sae_release": args.sae_release or base.sae_release,
        "sae_id_template": args.sae_id_template or base.sae_id_template,
    }
    if "{layer}" not in overrides["sae_id_template"]:
        raise UserError("--sae-id-template must contain {layer}, e.g. 'layer_{layer}'")
    changed = any(overrides[k] != getattr(base, k) for k in overrides)
    if changed:
        # A preset with a swapped model or SAE is a different run: give it its own name.
        return Preset(
            CUSTOM,
            **overrides,
            sae_converter=base.sae_converter,
            sae_hub_cache=base.sae_hub_cache,
            prepare=base.prepare,
        )
    return base


def _unknown_model(name: str):
    """One line: the close matches first (a typo is the likely cause), then every choice."""
    choices = [*preset_names(), *PRESET_ALIASES, CUSTOM]
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UserError(f"unknown --model {name!r}{hint}. Presets: {', '.join([*preset_names(), CUSTOM])}")


def run_name_for(preset: Preset) -> str:
    if preset.name != CUSTOM:
        return preset.name
    model = Path(preset.model_id).name if Path(preset.model_id).exists() else preset.model_id
    return f"{_slug(model)}__{_slug(preset.sae_release)}"


def _under_features_root(features_dir: Path) -> Path | None:
    """The run folder's path below sae_features/; None if it lies elsewhere (or is sae_features/ itself)."""
    try:
        rel = Path(features_dir).resolve().relative_to(FEATURES_ROOT.resolve())
    except ValueError:
        return None
    return rel if rel.parts else None


def figures_dir_for(features_dir: Path) -> Path:
    """Where a run's figures and REPORT.md go unless --figures-dir says otherwise: output/<path below
    sae_features/> for a run folder there (the default layout, sae_features/<run>/ -> output/<run>/), else
    <run folder>/figures/, beside the run, so that folder is self-contained and movable. Either way no two
    run folders share a figure folder (the basename alone would: /elsewhere/toy and sae_features/toy)."""
    inside = _under_features_root(features_dir)
    return OUTPUT_ROOT / inside if inside else Path(features_dir) / "figures"


def resolve(args: argparse.Namespace) -> RunConfig:
    """Turn parsed arguments into a RunConfig, validating everything that can be checked offline."""
    preset = resolve_preset(args)
    d = preset.defaults
    device = args.device or d.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    device_map, max_memory = _device_map(args)  # refuses torchrun + --device-map before joining a group
    device = distributed.setup(device)  # under torchrun: this rank's GPU, and the process group joined
    dtype = DTYPES[args.dtype or d.get("dtype", "bfloat16")]
    batch_size = args.batch_size if args.batch_size is not None else d.get("batch_size", 8)
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.n_texts_per_lang == 0 or args.n_texts_per_lang < -1:
        raise UserError("--n-texts-per-lang must be a positive number, or -1 for all")
    default_toy = preset.model_id == str(TOY_ROOT / "model")  # built on first use if it is not yet
    if Path(preset.model_id).is_dir() or default_toy:  # a local model: the toy's build.json
        refuse_devtest(Path(preset.model_id).parent / "build.json", args.split, default_toy)
    features_dir = Path(args.out_dir) if args.out_dir else FEATURES_ROOT / run_name_for(preset)
    inside = _under_features_root(features_dir)
    return RunConfig(
        preset=preset,
        run_name=inside.as_posix() if inside else Path(features_dir).resolve().name,  # titles and messages
        features_dir=features_dir,
        output_dir=Path(args.figures_dir) if args.figures_dir else figures_dir_for(features_dir),
        languages=tuple(validate_languages(_comma_list(args.languages))),
        layers=parse_layers(args.layers),
        n_texts_per_lang=args.n_texts_per_lang,
        split=args.split,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        seed=args.seed,
        force=args.force,
        device_map=device_map,
        max_memory=max_memory,
    )


DEVICE_MAPS = ("auto", "balanced", "sequential")


def _device_map(args: argparse.Namespace) -> tuple[str | None, dict | None]:
    """--device-map and --max-memory, checked: accelerate's max_memory ({GPU index or "cpu": size})."""
    from accelerate.utils import convert_file_size_to_int

    device_map, text = getattr(args, "device_map", None), getattr(args, "max_memory", None)
    if device_map is not None and distributed.is_distributed():
        raise UserError(
            "--device-map shards one model over this process's GPUs, torchrun gives each rank a whole model "
            "on its own GPU: use one or the other"
        )
    if text is None:
        return device_map, None
    if device_map is None:
        raise UserError("--max-memory only applies with --device-map (auto, balanced or sequential)")
    max_memory = {}
    for item in _comma_list(text):
        name, _, size = item.partition("=")
        try:
            convert_file_size_to_int(size)
        except ValueError:
            size = ""
        if not size or not (name.isdigit() or name == "cpu"):
            raise UserError(f"--max-memory: {item!r} is not DEVICE=SIZE (a GPU index or cpu, e.g. 0=40GiB)")
        max_memory[int(name) if name.isdigit() else name] = size
    return device_map, max_memory
