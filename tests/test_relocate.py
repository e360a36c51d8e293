"""Issue 21.3: results are keyed by what the model is, not where it lies, so a run folder, the toy
or a whole clone can move and keep them; and every "remake it with" hint asks for the run's settings."""

import json
import shutil
from dataclasses import replace

import pytest

from langsae import config, features, model, toy
from langsae.errors import UserError
from langsae.nu import META_FILE as NU_META
from langsae.stages import code_switching
from langsae.stages import nu as compute_nu_scores
from langsae.stages import section5 as reproduce_figures_section5

TOY = ["--model", "toy"]
NU = ["--n-texts-per-lang", "4"]
SECTION5 = ["--layers", "1", "--n-texts", "3", "--random-draws", "1"]


def stages(out):
    """The nu stage, then Section 5 and code switching with small settings, into `out`: their work
    records (Section 5's and code switching's together: both must be 0 computed once cached)."""
    nu = compute_nu_scores.main([*TOY, "--out-dir", str(out), *NU])
    section5 = reproduce_figures_section5.main([*TOY, "--out-dir", str(out), *NU, *SECTION5])
    switching = code_switching.main([*TOY, "--out-dir", str(out), *NU, "--layers", "1"])
    return nu, {k: section5[k] + switching[k] for k in ("computed", "cached")}


@pytest.fixture(scope="module")
def run_a(small_toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("relocate") / "a" / "run"
    nu, section5 = stages(out)
    assert nu["computed"] == 2 and section5["computed"] > 0  # the small toy has two layers
    return out


def point_toy_at(monkeypatch, root):
    """The toy preset and toy.TOY_ROOT at another build folder, as LANGSAE_TOY_DIR would set them."""

    def prepare():
        return toy.ensure_built(root)

    preset = replace(config.PRESETS["toy"], model_id=str(root / "model"), sae_hub_cache=root / "hub")
    preset = replace(preset, prepare=prepare)
    monkeypatch.setitem(config.PRESETS, "toy", preset)
    monkeypatch.setattr(toy, "TOY_ROOT", root)
    monkeypatch.setattr(config, "TOY_ROOT", root)


def toy_cfg(out):
    return config.resolve(config.build_parser("x").parse_args([*TOY, "--out-dir", str(out), *NU]))


def test_a_copied_run_folder_is_reused_with_nothing_recomputed(run_a, tmp_path):
    b = tmp_path / "b" / "run"
    shutil.copytree(run_a, b)
    nu, section5 = stages(b)
    assert nu == {"computed": 0, "cached": 2, "unit": "layer"}
    assert section5["computed"] == 0 and section5["cached"] > 0


def test_a_moved_toy_keeps_its_identity_and_its_runs(run_a, small_toy, tmp_path, monkeypatch):
    moved = tmp_path / "clone" / "toy_model"
    shutil.copytree(small_toy, moved)
    assert model.model_identity(str(moved / "model")) == model.model_identity(str(small_toy / "model"))
    point_toy_at(monkeypatch, moved)
    b = tmp_path / "b" / "run"
    shutil.copytree(run_a, b)
    assert toy_cfg(b).preset.model_id == str(moved / "model")
    nu, section5 = stages(b)
    assert nu["computed"] == 0 and section5["computed"] == 0 and section5["cached"] > 0


def test_no_path_enters_the_key_and_the_label_stays_in_the_metadata(run_a, small_toy):
    cfg = toy_cfg(run_a)
    key = json.dumps(cfg.key())
    assert str(small_toy) not in key and str(run_a) not in key and "toy-sha256:" in key
    meta = json.loads((run_a / NU_META).read_text())
    assert meta["model_id"] == str(small_toy / "model") == meta["config"]["model_id"]  # for people
    assert meta["config"]["model"] == cfg.describe()["model"]


def test_another_toy_is_refused_with_a_hint_that_remakes_the_run(run_a, small_toy, tmp_path, monkeypatch):
    """The identity is the content: one changed weight byte is another model, wherever it lies."""
    other = tmp_path / "tampered" / "toy_model"
    shutil.copytree(small_toy, other)
    weights = other / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model.model_identity(str(other / "model")) != model.model_identity(str(small_toy / "model"))
    point_toy_at(monkeypatch, other)
    with pytest.raises(UserError, match=r"made with model .*toy-sha256:") as e:
        features.load_nu_results(toy_cfg(run_a), None, 2)
    hint = str(e.value).split("`")[1].split()
    assert hint[:2] == ["python", "compute_nu_scores.py"]
    again = compute_nu_scores.parse_args(hint[2:])
    assert (again.top_k, again.out_dir, again.n_texts_per_lang) == (5, run_a, 4)  # the run's, not a top-2 one


@pytest.mark.parametrize(
    "made, need, expected",
    [
        (None, 2, (5, 64, "token")),  # nothing made yet: the stage's defaults, enough for the asker
        (None, 9, (9, 64, "token")),
        ({"top_k": 7, "control_pool": 10, "weighting": "text"}, 2, (7, 10, "text")),  # a stale run: its own
        ({"top_k": 7, "control_pool": 10, "weighting": "text"}, 12, (12, 10, "text")),
    ],
)
def test_nu_command_asks_for_the_settings_of_the_run(made, need, expected, tmp_path):
    cfg = toy_cfg(tmp_path / "r")
    hint = features.nu_command(cfg, [1], need, made).split()
    args = compute_nu_scores.parse_args(hint[2:])
    assert (args.top_k, args.control_pool, args.weighting) == expected
    assert (args.out_dir, args.layers, args.n_texts_per_lang) == (cfg.features_dir, "1", 4)


def test_a_local_model_folder_is_its_files_and_a_hub_model_its_commit(tiny_model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model.model_identity(str(copy)) == model.model_identity(str(tiny_model_dir))
    assert model.model_identity(str(copy)).startswith("sha256:")
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("32", "33", 1))
    assert model.model_identity(str(copy)) != model.model_identity(str(tiny_model_dir))
    from huggingface_hub import constants

    for cache in (tmp_path / "cache1", tmp_path / "cache2"):  # where the cache lies does not matter
        (cache / "models--org--m" / "refs").mkdir(parents=True)
        (cache / "models--org--m" / "refs" / "main").write_text("abc123\n")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        assert model.model_identity("org/m") == "org/m@abc123"
    assert model.model_identity("org/not-cached") == "org/not-cached"
