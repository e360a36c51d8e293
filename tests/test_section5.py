"""Section 5: figure data against hand-computed values, and the script end to end on the tiny
fixture after the real nu stage."""

import csv
import math

import numpy as np
import pytest
import torch

import compute_nu_scores
import reproduce_figures_section5
from langsae import config, section5, sweep
from langsae.sweep import NO_LANGUAGE, RANDOM, Condition, EvalSet, SweepResult
from langsae.cli import run_main

LANGS = ["eng_Latn", "fra_Latn", "jpn_Jpan"]


# ----------------------------------------------------------------------------- figure data by hand


def _synthetic_result() -> SweepResult:
    """Two languages x 2 texts, one layer; ΔCE values chosen so every summary is easy by hand.

    Per text ΔCE (eng texts 0,1 | fra texts 2,3):
      eng top1: 1, 3 | 0, 0.2      eng top2: 0, 0 | 0, 0      eng top1+2: 2, 4 | 0.4, 0.4
      fra top1: 0, 0 | 2, 2        fra top2: 1, 1 | 1, 1      fra top1+2: 0.5, 0.5 | 3, 5
      random k=1 draws 0/1: 0.1/0.3 everywhere; k=2 draws 0/1: 0.2/0.4 everywhere
    """
    ev = EvalSet(("eng_Latn", "fra_Latn"), [[1, 2]] * 4, np.array([0, 0, 1, 1]), "synthetic")
    deltas = {
        ("eng_Latn", "top1"): [1, 3, 0, 0.2], ("eng_Latn", "top2"): [0, 0, 0, 0], ("eng_Latn", "top1+2"): [2, 4, 0.4, 0.4],
        ("fra_Latn", "top1"): [0, 0, 2, 2], ("fra_Latn", "top2"): [1, 1, 1, 1], ("fra_Latn", "top1+2"): [0.5, 0.5, 3, 5],
    }  # fmt: skip
    conds, rows = [], []
    for i, ((lang, fs), d) in enumerate(deltas.items()):
        conds.append(Condition(4, "directional", lang, fs, (10 * i,) if "+" not in fs else (10 * i, 10 * i + 1)))
        rows.append(d)
    for k, vals in ((1, (0.1, 0.3)), (2, (0.2, 0.4))):
        for draw, v in enumerate(vals):
            conds.append(Condition(4, "directional", NO_LANGUAGE, RANDOM, tuple(range(100, 100 + k)), draw))
            rows.append([v] * 4)
    baseline = np.array([5.0, 6.0, 7.0, 8.0])
    return SweepResult(ev, conds, baseline, np.array([3, 4, 5, 6]), baseline + np.array(rows))


def _get(rows, **match):
    (row,) = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return row


def test_figure5_rows_by_hand():
    r = _synthetic_result()
    rows = section5.figure5_rows(r, ["eng_Latn", "fra_Latn"], [4], 2, seed=0)
    assert math.isclose(_get(rows, language="eng_Latn", features="top1", series="self")["delta_ce"], 2.0)
    assert math.isclose(_get(rows, language="eng_Latn", features="top1", series="others")["delta_ce"], 0.1)
    assert math.isclose(_get(rows, language="eng_Latn", features="top1+2", series="self")["delta_ce"], 3.0)
    # control: French features on English texts
    assert math.isclose(_get(rows, language="eng_Latn", features="top1+2", series="other_lang_features")["delta_ce"], 0.5)
    assert math.isclose(_get(rows, language="fra_Latn", features="top1", series="random")["delta_ce"], 0.2)  # k=1 draws
    assert math.isclose(_get(rows, language="fra_Latn", features="top1+2", series="random")["delta_ce"], 0.3)  # k=2 draws
    self_row = _get(rows, language="eng_Latn", features="top1", series="self")
    assert 1.0 <= self_row["ci_low"] <= 2.0 <= self_row["ci_high"] <= 3.0


def test_figure6_synergy_is_paired_per_text():
    r = _synthetic_result()
    rows = section5.figure6_rows(r, ["eng_Latn", "fra_Latn"], [4], 2, seed=0)
    syn = _get(rows, language="eng_Latn", eval="self", quantity="synergy")
    # per text: 2-1-0 = 1 and 4-3-0 = 1: no spread, so a zero-width interval (an unpaired bootstrap would be wide)
    assert (syn["delta_ce"], syn["ci_low"], syn["ci_high"]) == (1.0, 1.0, 1.0)
    assert math.isclose(_get(rows, language="fra_Latn", eval="self", quantity="synergy")["delta_ce"], 4 - 2 - 1)
    assert math.isclose(_get(rows, language="fra_Latn", eval="others", quantity="synergy")["delta_ce"], 0.5 - 0 - 1)


def test_summary_peak_specificity_synergy_by_hand():
    r = _synthetic_result()
    summary = {row["language"]: row for row in section5.summary_rows(r, ["eng_Latn", "fra_Latn"], [4], 2, seed=0)}
    eng = summary["eng_Latn"]
    assert eng["peak_layer"] == 4 and math.isclose(eng["self_delta_ce"], 3.0) and math.isclose(eng["others_delta_ce"], 0.4)
    assert math.isclose(eng["specificity"], 3.0 / 0.4)
    assert math.isclose(eng["synergy"], 1.0) and math.isclose(eng["random_delta_ce"], 0.3)
    assert math.isclose(eng["other_lang_features_delta_ce"], 0.5)
    assert "shared_with" in eng and "Figure" not in section5.format_summary(list(summary.values()))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def nu_dir(tiny_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("section5") / "run"
    flags = ["--out-dir", str(out), "--languages", ",".join(LANGS), "--layers", "0,2", "--n-texts-per-lang", "4"]
    assert run_main(compute_nu_scores.main, [*tiny_args, *flags, "--top-k", "2", "--control-pool", "6"]) == 0
    return out


def _run(tiny_args, nu_dir, *extra):
    flags = ["--out-dir", str(nu_dir), "--languages", ",".join(LANGS), "--n-texts", "3", "--batch-size", "4", "--random-draws", "2"]
    return run_main(reproduce_figures_section5.main, [*tiny_args, *flags, *extra])


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_script_end_to_end_and_resume(tiny_args, nu_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    assert _run(tiny_args, nu_dir) == 0
    rows = _read_csv(nu_dir / "ablation_results.csv")
    n_conditions = 2 * (3 * 3 + 2 * 2)  # layers x (languages x {top1, top2, top1+2} + {k=1, k=2} x draws)
    assert len(rows) == n_conditions * 3
    assert list(rows[0])[:11] == section5.RESULTS_COLUMNS[:11]
    assert {r["features"] for r in rows} == {"top1", "top2", "top1+2", "random"}
    assert {r["eval_lang"] for r in rows} == set(LANGS) and {r["n_texts"] for r in rows} == {"3"}
    for r in rows:
        assert float(r["ci_low"]) <= float(r["delta_ce"]) <= float(r["ci_high"])
    assert {r["draw"] for r in rows if r["features"] == "random"} == {"0", "1"}
    for name in ("figure5_data.csv", "figure6_data.csv", "section5_summary.csv", "section5_meta.json"):
        assert (nu_dir / name).exists(), name
    for name in ("figure5.png", "figure5.pdf", "figure6.png", "figure6.pdf"):
        assert (tmp_path / "output" / "run" / name).stat().st_size > 1000, name
    assert "peak" in capsys.readouterr().out

    # the directions the engine ablated are the transcoder rows the nu stage saved
    d = torch.load(nu_dir / "layer_2_directions.pt", weights_only=False)
    top = d["top_indices"][LANGS.index("fra_Latn")].tolist()
    fra = [r for r in rows if r["layer"] == "2" and r["ablated_lang"] == "fra_Latn" and r["features"] == "top1+2"]
    assert {r["feature_ids"] for r in fra} == {"+".join(map(str, sorted(top[:2])))}

    # a rerun computes nothing and rewrites the same table
    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sweep, "ablated_ce", fail)
    monkeypatch.setattr(sweep, "baseline_ce", fail)
    assert _run(tiny_args, nu_dir) == 0
    assert _read_csv(nu_dir / "ablation_results.csv") == rows


def test_feature_mode_joins_the_same_table(tiny_args, nu_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    assert _run(tiny_args, nu_dir, "--layers", "2", "--mode", "feature", "--random-draws", "0", "--top-k", "1") == 0
    rows = _read_csv(nu_dir / "ablation_results.csv")
    assert {r["mode"] for r in rows} == {"directional", "feature"}
    feature = [r for r in rows if r["mode"] == "feature"]
    assert len(feature) == 3 * 3 and {r["features"] for r in feature} == {"top1"}
    assert (tmp_path / "output" / "run" / "figure5_feature.png").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-k", "3"], "--top-k 3 is out of range"),
        (["--layers", "1"], r"layer\(s\) \[1\] have no nu results.*python compute_nu_scores\.py .*--layers 0,1,2"),
        (["--layers", "7"], "out of range: the model has 3 layers"),
        (["--languages", "eng_Latn,kor_Hang"], r"not kor_Hang.*python compute_nu_scores\.py"),
        (["--n-texts", "0"], "--n-texts must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny_args, nu_dir, capsys, extra, message):
    import re

    assert _run(tiny_args, nu_dir, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_missing_nu_results_name_the_command(tiny_args, tmp_path, capsys):
    assert _run(tiny_args, tmp_path / "nothing") == 2
    err = capsys.readouterr().err
    assert "python compute_nu_scores.py" in err and "--out-dir" in err
