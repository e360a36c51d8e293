"""Presets read from sae-lens's release registry, and the README's preset table made from them.

`config.REGISTRY_PRESETS` names a release per short name; everything else is read from the installed
sae-lens's `pretrained_saes.yaml` (`get_pretrained_saes_directory`): the model, the SAE ids (and from
them the number of layers), the converter and the Neuronpedia ids. Where the release's converter makes
its config without the hub (Qwen-Scope), the hook points, width and k come from that config too.
Nothing here needs the hub, so a registry preset resolves offline.

    python -m langsae.presets --readme    # rewrite README.md's preset table from this code
"""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import dataclass

from langsae.config import PRESET_ALIASES, PRESETS, PROJECT_ROOT, REGISTRY_PRESETS, Preset

SEED_LAYER, SEED_DEPTH = 10, 28  # the seed claim: layer 10 of Qwen3-0.6B's 28
# Converters whose config getter reads nothing from the hub (it parses the repo id and file name).
OFFLINE_CONFIG = ("qwen_scope",)
# The mwhanna converter reads d_model and width from the repo's wandb-config.yaml, so its config needs
# the hub; its hook names are fixed in its code (tests/test_presets.py runs it on a stub cache to check).
CONVERTER_HOOKS = {"mwhanna_transcoder": ("blocks.{layer}.mlp.hook_in", "blocks.{layer}.hook_mlp_out")}
README_START, README_END = "<!-- presets:start -->", "<!-- presets:end -->"


def relative_layer(n_layers: int) -> int:
    """The seed's layer 10 of 28 at the same relative depth, rounded: every size is compared at one depth."""
    return round(SEED_LAYER / SEED_DEPTH * n_layers)


@dataclass(frozen=True)
class RegistryPreset:
    """A preset as the registry describes it. `hooks`: where the SAE reads and writes, with {layer};
    `width`, `k`: None where only the downloaded config says (the mwhanna transcoders)."""

    name: str
    release: str
    repo_id: str
    model_id: str
    converter: str
    sae_id_template: str
    n_layers: int
    hooks: tuple[str, str]
    neuronpedia_template: str | None
    width: int | None
    k: int | None

    @property
    def layer(self) -> int:
        return relative_layer(self.n_layers)

    def preset(self) -> Preset:
        """The run's Preset. The default layer is a preset default, so downstream.py's rule (the preset's
        layer, else the Section 5 peak) takes it; sae-lens picks the converter from the release."""
        defaults = {"downstream_layer": self.layer}
        return Preset(self.name, self.model_id, self.release, self.sae_id_template, defaults=defaults)


def directory() -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def layer_template(by_layer_id: str, layer: int, expected: dict[int, str]) -> str:
    """The template with {layer} that gives `expected[L]` for every layer L, found by trying each place
    where `by_layer_id` (the id of `layer`) spells that number; an error if none fits them all."""
    for m in re.finditer(rf"(?<!\d){layer}(?!\d)", by_layer_id):
        template = by_layer_id[: m.start()] + "{layer}" + by_layer_id[m.end() :]
        if all(template.format(layer=L) == v for L, v in expected.items()):
            return template
    raise ValueError(f"no layer template fits the ids {sorted(expected.values())[:3]}...")


def sae_id_template(sae_ids: list[str]) -> tuple[str, int]:
    """(the SAE id template, the number of layers): the ids must be one per layer, 0 to n-1."""
    n = len(sae_ids)
    for sae_id in sae_ids:  # the id of layer n-1 is the one that spells the number n-1
        for m in re.finditer(rf"(?<!\d){n - 1}(?!\d)", sae_id):
            template = sae_id[: m.start()] + "{layer}" + sae_id[m.end() :]
            if {template.format(layer=L) for L in range(n)} == set(sae_ids):
                return template, n
    raise ValueError(f"the SAE ids {sae_ids[:3]}... are not one per layer 0-{n - 1}")


def _converter_config(converter: str, repo_id: str, path: str) -> dict | None:
    if converter not in OFFLINE_CONFIG:
        return None
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_CONFIG_GETTERS

    return NAMED_PRETRAINED_SAE_CONFIG_GETTERS[converter](repo_id, path, "cpu")


def _hook_template(configs: dict[int, dict], key: str, layer: int) -> str:
    """A hook name of the configs as a template; a residual SAE has no `hook_name_out`: it writes where
    it reads (as model.sae_hook_names has it)."""
    names = {L: c.get(key) or c["hook_name"] for L, c in configs.items()}
    return layer_template(names[layer], layer, names)


def _model_id(model: str, config: dict | None) -> str:
    """The Hugging Face model: the converter's config names it; else the registry's model name, which is
    TransformerLens's (mwhanna: 'qwen3-8b'), mapped to its official HF id as sae-lens itself would."""
    if config is not None:
        return config["model_name"]
    from transformer_lens.loading_from_pretrained import get_official_model_name

    return get_official_model_name(model)


def registry_preset(name: str) -> RegistryPreset:
    """The registry's description of the preset `name` (a key of config.REGISTRY_PRESETS)."""
    return describe(name, REGISTRY_PRESETS[name])


@functools.cache
def describe(name: str, release: str) -> RegistryPreset:
    """What the registry says of `release`, under the preset name `name`."""
    entry = directory()[release]
    template, n = sae_id_template(list(entry.saes_map))
    ends = (0, n - 1)
    configs = {
        L: _converter_config(entry.conversion_func, entry.repo_id, entry.saes_map[template.format(layer=L)])
        for L in ends
    }
    config = configs[n - 1]
    if config is not None:  # the converter's own configs of the first and last layers, as templates
        hooks = tuple(_hook_template(configs, key, n - 1) for key in ("hook_name", "hook_name_out"))
    else:
        hooks = CONVERTER_HOOKS[entry.conversion_func]
    np_ids = {L: entry.neuronpedia_id.get(template.format(layer=L)) for L in range(n)}
    np_template = None if np_ids[n - 1] is None else layer_template(np_ids[n - 1], n - 1, np_ids)
    return RegistryPreset(
        name=name,
        release=release,
        repo_id=entry.repo_id,
        model_id=_model_id(entry.model, config),
        converter=entry.conversion_func,
        sae_id_template=template,
        n_layers=n,
        hooks=hooks,
        neuronpedia_template=np_template,
        width=config["d_sae"] if config else None,
        k=(config.get("activation_fn_kwargs") or {}).get("k") if config else None,
    )


# ----------------------------------------------------------------------------- README table


def table_presets() -> list[tuple[Preset, RegistryPreset]]:
    """The presets in the README's table: every one whose release is in the registry, with the Preset a
    run gets (config.named_preset) beside the registry's description. The toy and Gemma are left out."""
    from langsae.config import named_preset

    names = [n for n in PRESETS if n == "qwen3-0.6b"] + list(REGISTRY_PRESETS)
    return [(named_preset(n), describe(n, named_preset(n).sae_release)) for n in names]


def _sae_cell(r: RegistryPreset) -> str:
    return f"{r.width:,} wide, TopK k={r.k}" if r.width else "width in the SAE's config"


def _hooks_cell(r: RegistryPreset) -> str:
    read, write = (h.replace("blocks.{layer}.", "") for h in r.hooks)
    return f"`{read}` → `{write}`" if read != write else f"`{read}`"


def _names_cell(name: str) -> str:
    aliases = [a for a, t in PRESET_ALIASES.items() if t == name]
    return f"`{name}`" + "".join(f" (or `{a}`)" for a in aliases)


def _unique(cells: list[str]) -> str:
    return " / ".join(dict.fromkeys(cells))


def readme_block() -> str:
    """The README's preset table: one row per model and converter (a model's two releases share one)."""
    from importlib.metadata import version

    rows: dict[tuple, list] = {}
    for preset, r in table_presets():
        rows.setdefault((preset.model_id, r.converter), []).append((preset, r))
    lines = [
        "| `--model` | model | sae-lens release | SAE reads → writes | SAE | layers | downstream and "
        "steering layer | Neuronpedia |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (model_id, _), group in rows.items():
        cells = [
            ", ".join(_names_cell(p.name) for p, _ in group),
            f"`{model_id}`",
            ", ".join(f"`{r.release}`" for _, r in group),
            _unique([_hooks_cell(r) for _, r in group]),
            _unique([_sae_cell(r) for _, r in group]),
            _unique([str(r.n_layers) for _, r in group]),
            _unique([str(p.defaults["downstream_layer"]) for p, _ in group]),
            ", ".join(f"`{r.neuronpedia_template}`" for _, r in group if r.neuronpedia_template) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "The Qwen3 presets of `--model` (besides `toy`, `gemma-2-2b`, `custom`), generated by `python -m "
        f"langsae.presets --readme` from sae-lens {version('sae-lens')}'s release registry. The downstream "
        "and steering layer is the seed's layer 10 of 28 at the same relative "
        f"depth, round({SEED_LAYER}/{SEED_DEPTH} × layers), set as each preset's layer: so `downstream` "
        "does not use its Section 5 peak rule for these presets (it does for `gemma-2-2b` and `custom`); "
        "`--layers` overrides. Qwen-Scope reads the `-Base` models, the transcoders the post-trained ones; "
        "30B-A3B is a mixture of experts. L in a Neuronpedia id is the layer."
    )
    return "\n".join([*lines, "", note]).replace("{layer}", "L")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", action="store_true", help="rewrite README.md's preset table")
    args = p.parse_args(argv)
    if not args.readme:
        print(readme_block())
        return 0
    from langsae.report import replace_marked

    replace_marked(PROJECT_ROOT / "README.md", README_START, README_END, readme_block())
    print("README.md: preset table rebuilt from the sae-lens registry")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
