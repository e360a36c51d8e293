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
    c = cfg("--model", "custom", "--model-id", "org/m", "--sae-release", "org/s", "--sae-id-template", "l{layer}")
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
