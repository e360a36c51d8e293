"""The presets read from sae-lens's registry (langsae.presets), checked against the installed registry
read here on its own: its YAML file parsed directly, and sae-lens's own config getters."""

import re
import subprocess
import sys
from dataclasses import replace
from importlib.resources import files

import pytest
import yaml
from helpers import fails_cleanly

from langsae import config, presets
from langsae.config import PRESETS, REGISTRY_PRESETS, build_parser, named_preset, resolve
from langsae.model import neuronpedia_id, sae_config

# Hand-computed round(10 / 28 * n) for the depths the registry has: 28 -> 10, 36 -> 12.86, 40 -> 14.29,
# 48 -> 17.14.
SEED_DEPTH_LAYER = {28: 10, 36: 13, 40: 14, 48: 17}


@pytest.fixture(scope="module")
def registry() -> dict:
    """sae-lens's pretrained_saes.yaml, parsed here rather than through get_pretrained_saes_directory."""
    with files("sae_lens").joinpath("pretrained_saes.yaml").open() as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def by_layer(entry: dict) -> dict[int, dict]:
    """The release's SAE entries by the layer their id spells (one number per id)."""
    out = {}
    for sae in entry["saes"]:
        (number,) = re.findall(r"\d+", sae["id"])
        out[int(number)] = sae
    return out


def stub_mwhanna_cache(root, repo_id: str):
    """A Hugging Face cache holding only the mwhanna release's wandb-config.yaml (no config.yaml, as the
    14B repos have): sae-lens's getter then names the model from the repo id alone."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    wandb = {"d_model": {"value": 8}, "d_feature": {"value": 16}, "batch_size": {"value": 4}}
    (snap / "wandb-config.yaml").write_text(yaml.safe_dump(wandb))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return root


@pytest.mark.parametrize("name", list(REGISTRY_PRESETS))
def test_registry_preset_is_the_registrys_release(name, registry, tmp_path):
    preset, desc = named_preset(name), presets.registry_preset(name)
    entry = registry[REGISTRY_PRESETS[name]]
    assert preset.sae_release == REGISTRY_PRESETS[name] and preset.name == name
    layers = by_layer(entry)
    n = len(entry["saes"])
    assert sorted(layers) == list(range(n)) and desc.n_layers == n
    assert preset.defaults == {"downstream_layer": SEED_DEPTH_LAYER[n]}
    for L in (0, n // 2, n - 1):
        assert preset.sae_id_template.format(layer=L) == layers[L]["id"]
        assert neuronpedia_id(preset, L) == layers[L].get("neuronpedia")  # the nu stage's links
        np_template = desc.neuronpedia_template
        assert (np_template and np_template.format(layer=L)) == layers[L].get("neuronpedia")
    if entry["conversion_func"] == "qwen_scope":
        # the converter's config needs no download: ask it, and the repo id's width and L0 (k)
        from sae_lens.loading.pretrained_sae_loaders import get_qwen_scope_config_from_hf

        assert preset.model_id == entry["model"]  # the registry names the HF model itself
        width_k, k = map(int, re.search(r"-W(\d+)K-L0_(\d+)$", entry["repo_id"]).groups())
        assert (desc.width, desc.k) == (width_k * 1024, k) and layers[0]["l0"] == k
        for L in (0, n - 1):
            cfg = get_qwen_scope_config_from_hf(entry["repo_id"], layers[L]["path"], "cpu")
            assert tuple(h.format(layer=L) for h in desc.hooks) == (cfg["hook_name"],) * 2
    else:
        # mwhanna: the config getter downloads wandb-config.yaml, so the registry alone has no hooks or
        # model id; sae-lens's own getter on a stub cache gives them (the model from the repo id)
        assert entry["conversion_func"] == "mwhanna_transcoder"
        local = replace(preset, sae_hub_cache=stub_mwhanna_cache(tmp_path, entry["repo_id"]))
        for L in (0, n - 1):
            cfg = sae_config(local, L)
            assert tuple(h.format(layer=L) for h in desc.hooks) == (cfg["hook_name"], cfg["hook_name_out"])
            assert cfg["model_name"] == preset.model_id


def test_the_bare_qwen_scope_names_are_k50(registry):
    for alias in ("qwen-scope-3-1.7b", "qwen-scope-3-8b", "qwen-scope-3-30b-a3b"):
        preset = named_preset(alias)
        assert preset.name == alias + "-k50"
        assert {s["l0"] for s in registry[preset.sae_release]["saes"]} == {50}


def test_the_hand_written_qwen3_preset_agrees_with_the_registry(registry):
    preset = PRESETS["qwen3-0.6b"]
    entry = registry[preset.sae_release]
    assert preset.defaults["downstream_layer"] == SEED_DEPTH_LAYER[len(entry["saes"])]
    assert preset.model_id == presets.describe(preset.name, preset.sae_release).model_id
    assert named_preset("qwen3-0.6b") is preset and named_preset("gemma-2b") is PRESETS["gemma-2-2b"]


def test_registry_presets_resolve_offline_without_the_model():
    for name, model_id, run in (
        ("qwen3-8b", "Qwen/Qwen3-8B", "qwen3-8b"),
        ("qwen-scope-3-8b", "Qwen/Qwen3-8B-Base", "qwen-scope-3-8b-k50"),
    ):
        cfg = resolve(build_parser("").parse_args(["--model", name]))
        assert (cfg.preset.model_id, cfg.run_name) == (model_id, run)
        assert cfg.features_dir == config.FEATURES_ROOT / run


def test_help_of_a_registry_preset_needs_nothing():
    out = subprocess.run(
        [sys.executable, "compute_nu_scores.py", "--model", "qwen3-8b", "--help"],
        cwd=config.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "qwen-scope-3-30b-a3b-k100" in out.stdout


@pytest.mark.parametrize(
    "name,repo", [("qwen3-8b", "Qwen/Qwen3-8B"), ("qwen-scope-3-8b", "Qwen/Qwen3-8B-Base")]
)
def test_missing_weights_name_the_repo_and_how_to_fetch_it(name, repo, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    empty = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty / "hub"))  # read at import, not per call
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    msg = fails_cleanly(["--model", name, "--device", "cpu"], tmp_path / "o", capsys)
    assert f"model '{repo}'" in msg and f"`hf download {repo}`" in msg


def test_unknown_model_lists_close_matches(tmp_path, capsys):
    msg = fails_cleanly(["--model", "qwen3-8"], tmp_path / "o", capsys)
    assert "'qwen3-8'" in msg and "did you mean qwen3-8b" in msg
    assert all(name in msg for name in [*PRESETS, *REGISTRY_PRESETS, "custom"])
    msg = fails_cleanly(["--model", "llama"], tmp_path / "o", capsys)
    assert "did you mean" not in msg and "qwen-scope-3-8b-k50" in msg


def test_sae_ids_must_be_one_per_layer():
    assert presets.sae_id_template(["l2", "l0", "l1"]) == ("l{layer}", 3)
    assert presets.sae_id_template([f"blocks.{L}.x12" for L in range(13)]) == ("blocks.{layer}.x12", 13)
    with pytest.raises(ValueError, match="one per layer"):
        presets.sae_id_template(["layer_0", "layer_2"])


def test_readme_preset_table_is_the_generated_one():
    text = (config.PROJECT_ROOT / "README.md").read_text()
    block = text.split(presets.README_START, 1)[1].split(presets.README_END, 1)[0]
    assert block.strip() == presets.readme_block(), "run `python -m langsae.presets --readme`"
    assert text.index("## Stages") < text.index(presets.README_START) < text.index("## Output layout")
