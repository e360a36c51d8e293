"""The stages end to end on the toy preset (small build), through the same code as real runs."""

import csv
import json

import pytest
import torch
from helpers import (
    N_TEXTS,
    brute_force_mu,
    fails_cleanly,
    load_layer,
    mlp_input_hook,
    run_nu,
    transcoder_encode,
)
from safetensors.torch import load_file

from langsae.checks import META_FILE as DATA_CHECKS
from langsae.cli import run_main
from langsae.config import PRESETS
from langsae.data import PAPER_LANGUAGES
from langsae.nu import META_FILE as NU_META
from langsae.stages import section5 as reproduce_figures_section5

TOY = ["--model", "toy"]


@pytest.fixture(scope="module")
def toy_nu(small_toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_run")
    assert run_nu(TOY, out) == 0
    return out


def test_nu_stage_on_toy_matches_brute_force(toy_nu, small_toy):
    meta = json.loads((toy_nu / NU_META).read_text())
    n_layers = json.loads((small_toy / "model" / "config.json").read_text())["num_hidden_layers"]
    assert meta["layers"] == list(range(n_layers))
    assert meta["model_id"] == PRESETS["toy"].model_id and meta["sae_release"] == PRESETS["toy"].sae_release
    layer = n_layers - 1
    (weights_file,) = (small_toy / "hub").rglob(f"layer_{layer}.safetensors")
    mu_ref = brute_force_mu(
        small_toy / "model", mlp_input_hook(layer), transcoder_encode(load_file(weights_file))
    )
    torch.testing.assert_close(load_layer(toy_nu, layer)["mean_acts"].double(), mu_ref, atol=1e-5, rtol=1e-4)
    assert N_TEXTS == meta["n_texts"]["eng_Latn"]


def test_section5_on_toy(toy_nu):
    argv = [*TOY, "--out-dir", str(toy_nu), "--layers", "1", "--n-texts", "3", "--random-draws", "1"]
    assert run_main(reproduce_figures_section5.main, argv) == 0
    with open(toy_nu / "ablation_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["features"] for r in rows} >= {"top1", "top2", "top1+2", "random"}
    assert len({r["eval_lang"] for r in rows}) == 10
    figures = toy_nu / "figures"
    assert (figures / "figure5.png").exists() and (figures / "figure6.pdf").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--languages", "eng_Latn,kor_hang"], "kor_Hang"),
        (["--layers", "99"], "out of range"),
        (["--languages", "eng_Latn,wuu_Hans"], "gated"),
        (["--sae-id-template", "layer{layer}"], "could not load SAE"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_input_under_the_toy_preset(small_toy, flags, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("langsae.hub.SECRETS_FILE", tmp_path / "absent.ini")
    assert expected in fails_cleanly([*TOY, *flags], tmp_path / "o", capsys)


def test_run_pipeline_runs_every_stage(small_toy, tmp_path, capsys):
    """`python run_pipeline.py --model toy` on the session's small toy: every stage, then a REPORT.md
    with a verdict in every claim row (and a real verdict for every claim whose stage ran)."""
    import run_pipeline
    from langsae import report
    from langsae import verdicts as v

    out = tmp_path / "toy_all"
    # four languages (the steering pair among them) keep every stage running, in a fraction of the time
    langs = "eng_Latn,spa_Latn,arb_Arab,tha_Thai"
    argv = [*TOY, "--layers", "1", "--n-texts-per-lang", "4", "--languages", langs, "--out-dir", str(out)]
    assert run_main(run_pipeline.main, argv) == 0
    assert (out / "layer_1_indices.pt").exists() and (out / "ablation_results.csv").exists()
    assert json.loads((out / DATA_CHECKS).read_text())["status"] in ("PASS", "WARN")
    figures = out / "figures"
    assert (figures / "figure5.png").exists() and (figures / "features" / "figure1_layer1.png").exists()
    rows = json.loads((out / run_pipeline.TIMINGS_FILE).read_text())["stages"]
    assert [(r["stage"], r["status"]) for r in rows] == [(s.name, "done") for s in run_pipeline.STAGES]
    text = (figures / "REPORT.md").read_text()
    assert "**Toy run.**" in text
    verdicts = report.verdicts_in(text)
    assert len(verdicts) == len(report.claims())
    ran = {s.name for s in run_pipeline.STAGES}
    for (stage, claim), verdict in zip(report.claims(), verdicts):
        allowed = (v.SUPPORTED, v.NOT_SUPPORTED, v.INCONCLUSIVE) if stage in ran else (v.NOT_RUN,)
        assert verdict in allowed, (claim.text, verdict)
    printed = capsys.readouterr().out
    assert "check-data" in printed and "plots" in printed

    # a rerun resumes: the nu layer and every Section 5 condition come from the cache
    assert run_main(run_pipeline.main, [*argv, "--stages", "nu,section5"]) == 0
    rows = {r["stage"]: r for r in json.loads((out / run_pipeline.TIMINGS_FILE).read_text())["stages"]}
    assert rows["nu"]["computed"] == 0 and rows["nu"]["cached"] == 1
    assert rows["section5"]["computed"] == 0 and rows["section5"]["cached"] > 0


def test_code_switching_on_toy(toy_nu):
    from langsae.stages import code_switching

    assert code_switching.main([*TOY, "--out-dir", str(toy_nu), "--layers", "0,1"]) == {
        "computed": 2,
        "cached": 0,
        "unit": "layer",
    }
    with open(toy_nu / "code_switching_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["language"] for r in rows} == {*PAPER_LANGUAGES, "mean"} and {r["layer"] for r in rows} == {
        "0",
        "1",
    }
    assert (toy_nu / "figures" / "code_switching_heatmap.png").exists()
