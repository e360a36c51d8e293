"""Presets, the shared command line, and the token rule."""

import pytest

from langsae.config import build_parser, parse_layers, resolve
from langsae.errors import UserError
from langsae.hub import hf_token
from langsae.model import check_sae_ids, hook_point


def cfg(*argv):
    return resolve(build_parser("x").parse_args(list(argv)))


def test_presets_and_run_folders():
    q = cfg()
    assert q.preset.model_id == "Qwen/Qwen3-0.6B" and q.sae_id(3) == "layer_3"
    assert q.features_dir.name == "qwen3-0.6b" and q.output_dir.name == "qwen3-0.6b"
    g = cfg("--model", "gemma-2b")
    assert g.preset.name == "gemma-2-2b" and g.sae_id(12) == "layer_12/width_16k/canonical"
    c = cfg(
        "--model", "custom", "--model-id", "org/m", "--sae-release", "org/s", "--sae-id-template", "l{layer}"
    )
    assert c.run_name == "org_m__org_s"
    swapped = cfg("--model-id", "other/model")  # a preset with another model is another run
    assert swapped.run_name != q.run_name
    assert len(q.languages) == 10 and q.languages[0] == "eng_Latn"


def test_real_presets_name_ids_that_sae_lens_knows():
    check_sae_ids(cfg().preset, tuple(range(28)))
    check_sae_ids(cfg("--model", "gemma-2-2b").preset, tuple(range(26)))
    with pytest.raises(UserError):
        check_sae_ids(cfg().preset, (28,))


def test_parse_layers():
    assert parse_layers(None) is None and parse_layers("all") is None
    assert parse_layers("5,1,2-4") == (1, 2, 3, 4, 5)
    with pytest.raises(UserError):
        parse_layers("1,x")


def test_unknown_hook_name_is_an_error():
    assert hook_point("blocks.7.hook_resid_post").module == "block"
    with pytest.raises(UserError):
        hook_point("blocks.7.attn.hook_z")


def test_hf_token_env_wins_over_secrets(tmp_path, monkeypatch):
    secrets = tmp_path / "secrets.ini"
    secrets.write_text("[huggingface]\ntoken = hf_fromfile\n")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert hf_token(secrets) == "hf_fromfile"
    monkeypatch.setenv("HF_TOKEN", "hf_fromenv")
    assert hf_token(secrets) == "hf_fromenv"
    secrets.write_text("[huggingface]\ntoken = hf_...\n")  # the example's placeholder is no token
    monkeypatch.delenv("HF_TOKEN")
    assert hf_token(secrets) is None


def test_figures_follow_the_whole_run_folder_not_its_basename(tmp_path):
    """Issue 21.4: `--out-dir /elsewhere/toy` wrote its figures over the project's own output/toy/."""
    from langsae import config

    default = cfg("--model", "toy")
    assert default.features_dir == config.FEATURES_ROOT / "toy"
    assert default.output_dir == config.OUTPUT_ROOT / "toy"  # the default layout is unchanged
    a = cfg("--model", "toy", "--out-dir", str(tmp_path / "a" / "toy"))
    b = cfg("--model", "toy", "--out-dir", str(tmp_path / "b" / "toy"))
    assert len({a.output_dir, b.output_dir, default.output_dir}) == 3
    assert a.output_dir == tmp_path / "a" / "toy" / "figures"  # beside the run: the folder moves as one
    nested = cfg("--model", "toy", "--out-dir", str(config.FEATURES_ROOT / "exp" / "toy"))  # output/<path>
    assert nested.output_dir == config.OUTPUT_ROOT / "exp" / "toy" and nested.run_name == "exp/toy"
    explicit = cfg("--model", "toy", "--out-dir", str(a.features_dir), "--figures-dir", str(tmp_path / "f"))
    assert explicit.output_dir == tmp_path / "f" and explicit.features_dir == a.features_dir


def test_stage_commands_reproduce_the_run_they_name(tmp_path):
    """A "run this" hint, read back by the same parser, resolves to the same run folders and settings."""
    from langsae.features import stage_command

    # qwen3-0.6b: the toy refuses --split devtest (its topic lines train on devtest sentences)
    argv = ["--model", "qwen3-0.6b", "--out-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    argv += ["--layers", "1", "--languages", "eng_Latn,spa_Latn", "--split", "devtest", "--dtype", "bfloat16"]
    argv += ["--n-texts-per-lang", "4", "--seed", "3"]
    want = cfg(*argv)
    command = stage_command("x.py", want).split()
    assert command[:2] == ["python", "x.py"]
    got = cfg(*command[2:])
    fields = ("features_dir", "output_dir", "languages", "layers", "split", "dtype", "n_texts_per_lang")
    fields += ("seed",)
    for field in fields:
        assert getattr(got, field) == getattr(want, field), field
    derived = cfg("--model", "toy", "--out-dir", str(tmp_path / "r"))
    assert "--figures-dir" not in stage_command("x.py", derived)


def test_the_pipeline_passes_figures_dir_to_every_stage(tmp_path):
    import run_pipeline

    argv = ["--model", "toy", "--out-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    argv += ["--stages", "nu"]
    assert run_pipeline.parse_args(argv).figures_dir == tmp_path / "f"  # a common flag: build_parser has it
    assert run_pipeline.stage_argv(argv) == argv[:-2]
