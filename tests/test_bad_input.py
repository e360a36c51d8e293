"""Every bad input is one error line on stderr, exit code 2, and nothing written."""

import pytest
import torch
from helpers import fails_cleanly


def test_unknown_language_lists_close_matches(tiny_args, tmp_path, capsys):
    msg = fails_cleanly([*tiny_args, "--languages", "eng_Latn,fra_latn"], tmp_path / "o", capsys)
    assert "fra_latn" in msg and "fra_Latn" in msg
    msg = fails_cleanly([*tiny_args, "--languages", "zho_Hans"], tmp_path / "o", capsys)
    assert "cmn_Hans" in msg


def test_layer_out_of_range(tiny_args, tmp_path, capsys):
    msg = fails_cleanly([*tiny_args, "--layers", "1,3"], tmp_path / "o", capsys)
    assert "[3]" in msg and "3 layers" in msg


def test_unknown_sae_release_and_id(tiny_args, tmp_path, capsys):
    msg = fails_cleanly(
        [*tiny_args, "--sae-release", "mwhanna-qwen3-0.6b-transcoders-lowl1"], tmp_path / "o", capsys
    )
    assert "not known to sae-lens" in msg and "mwhanna-qwen3-0.6b-transcoders-lowl0" in msg
    msg = fails_cleanly([*tiny_args, "--sae-id-template", "layer{layer}"], tmp_path / "o", capsys)
    assert "'layer0'" in msg and "layer_0" in msg


def test_gated_dataset_without_token(tiny_args, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("langsae.hub.SECRETS_FILE", tmp_path / "absent.ini")
    msg = fails_cleanly([*tiny_args, "--languages", "eng_Latn,wuu_Hans"], tmp_path / "o", capsys)
    assert "gated" in msg and "HF_TOKEN" in msg
    msg = fails_cleanly(
        [*tiny_args, "--languages", "eng_Latn,arg_Latn", "--split", "devtest"], tmp_path / "o", capsys
    )
    assert "gated" in msg


def test_hub_unreachable_names_the_offline_preset(tmp_path, capsys):
    msg = fails_cleanly(["--model", "qwen3-0.6b", "--device", "cpu"], tmp_path / "o", capsys)
    assert "local Hugging Face cache" in msg and "--model toy" in msg


def test_out_of_memory_says_which_flag_to_lower(tiny_args, tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("langsae.forward.run_through_layer", oom)
    msg = fails_cleanly(tiny_args, tmp_path / "o", capsys)
    assert "--batch-size" in msg


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--model", "llama"], "unknown --model"),
        (["--model", "custom"], "--model-id"),
        (["--batch-size", "0"], "--batch-size"),
        (["--model", "toy", "--layers", "3-1"], "--layers: the range 3-1 runs downwards; write it as 1-3"),
    ],
)
def test_bad_flags(flags, expected, tmp_path, capsys):
    assert expected in fails_cleanly(flags, tmp_path / "o", capsys)
