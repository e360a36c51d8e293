"""Section 5: figure data against hand-computed values, and the script end to end on the tiny
fixture after the real nu stage."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from langsae import config, section5, stats, sweep
from langsae.cli import run_main
from langsae.data import load_texts
from langsae.stages import nu as compute_nu_scores
from langsae.stages import section5 as reproduce_figures_section5
from langsae.sweep import NO_LANGUAGE, RANDOM, Condition, EvalSet, SweepResult

LANGS = ["eng_Latn", "fra_Latn", "jpn_Jpan"]


# ----------------------------------------------------------------------------- figure data by hand


def test_evaluation_texts_carry_parallel_sentence_ids_and_a_dropped_text_leaves_its_id_out():
    texts = load_texts(("eng_Latn", "fra_Latn"), "evaluation", 4)
    ids = texts.ids["eng_Latn"]
    assert ids == texts.ids["fra_Latn"] and len(set(ids)) == 4  # parallel translations share their ids
    texts.by_language["fra_Latn"][2] = "x"  # one token: predicts nothing, dropped

    def words(text, **_):
        return {"input_ids": list(range(len(text.split())))}

    ev = sweep.build_eval_set(words, texts)
    assert list(ev.sentence_ids) == [*ids, ids[0], ids[1], ids[3]]
    assert list(ev.lang_index) == [0, 0, 0, 0, 1, 1, 1]


def _synthetic_result() -> SweepResult:
    """Two languages x 2 texts, one layer; ΔCE values chosen so every summary is easy by hand.

    Texts 0 and 2 are one sentence (id s0) in eng and fra, texts 1 and 3 another (s1).
    Per text ΔCE (eng texts 0,1 | fra texts 2,3):
      eng top1: 1, 3 | 0, 0.2      eng top2: 0, 0 | 0, 0      eng top1+2: 2, 4 | 0.4, 0.4
      fra top1: 0, 0 | 2, 2        fra top2: 1, 1 | 1, 1      fra top1+2: 0.5, 0.5 | 3, 5
      random k=1 draws 0/1: 0.1/0.3 everywhere; k=2 draws 0/1: 0.2/0.4 everywhere
    """
    ev = EvalSet(
        ("eng_Latn", "fra_Latn"),
        [[1, 2]] * 4,
        np.array([0, 0, 1, 1]),
        "synthetic",
        np.array(["s0", "s1", "s0", "s1"]),
    )
    deltas = {
        ("eng_Latn", "top1"): [1, 3, 0, 0.2],
        ("eng_Latn", "top2"): [0, 0, 0, 0],
        ("eng_Latn", "top1+2"): [2, 4, 0.4, 0.4],
        ("fra_Latn", "top1"): [0, 0, 2, 2],
        ("fra_Latn", "top2"): [1, 1, 1, 1],
        ("fra_Latn", "top1+2"): [0.5, 0.5, 3, 5],
    }
    conds, rows = [], []
    for i, ((lang, fs), d) in enumerate(deltas.items()):
        conds.append(
            Condition(4, "directional", lang, fs, (10 * i,) if "+" not in fs else (10 * i, 10 * i + 1))
        )
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
    assert math.isclose(
        _get(rows, language="eng_Latn", features="top1+2", series="other_lang_features")["delta_ce"], 0.5
    )
    assert math.isclose(
        _get(rows, language="fra_Latn", features="top1", series="random")["delta_ce"], 0.2
    )  # k=1 draws
    assert math.isclose(
        _get(rows, language="fra_Latn", features="top1+2", series="random")["delta_ce"], 0.3
    )  # k=2 draws
    self_row = _get(rows, language="eng_Latn", features="top1", series="self")
    assert 1.0 <= self_row["ci_low"] <= 2.0 <= self_row["ci_high"] <= 3.0
    # the random band resamples draws: with 2 draws, a replicate holds draw 0 twice (ΔCE 0.1 on every
    # text) with probability 1/4 > 2.5%, and draw 1 twice (0.3) likewise, so the band is [0.1, 0.3];
    # averaging the draws before resampling texts gave a zero-width band at 0.2
    rand = _get(rows, language="fra_Latn", features="top1", series="random")
    assert math.isclose(rand["ci_low"], 0.1, abs_tol=1e-6) and math.isclose(
        rand["ci_high"], 0.3, abs_tol=1e-6
    )
    # others on eng top1: fra texts 0, 0.2 -> replicates 0, 0.1 or 0.2
    others = _get(rows, language="eng_Latn", features="top1", series="others")
    assert -1e-6 <= others["ci_low"] <= 0.1 <= others["ci_high"] <= 0.2 + 1e-6  # float32 replicate sums


def test_figure6_synergy_is_paired_per_text():
    r = _synthetic_result()
    rows = section5.figure6_rows(r, ["eng_Latn", "fra_Latn"], [4], 2, seed=0)
    syn = _get(rows, language="eng_Latn", eval="self", quantity="synergy")
    # per text: 2-1-0 = 1 and 4-3-0 = 1: no spread, so a zero-width interval (an unpaired bootstrap
    # would be wide)
    assert (syn["delta_ce"], syn["ci_low"], syn["ci_high"]) == (1.0, 1.0, 1.0)
    assert math.isclose(
        _get(rows, language="fra_Latn", eval="self", quantity="synergy")["delta_ce"], 4 - 2 - 1
    )
    assert math.isclose(
        _get(rows, language="fra_Latn", eval="others", quantity="synergy")["delta_ce"], 0.5 - 0 - 1
    )


def test_summary_is_measured_on_the_held_out_half_by_hand():
    r = _synthetic_result()
    # seed 0 splits {s0, s1} into one sentence that picks the peak (half A) and one that reports (half B)
    (a,), (b,) = stats.split_halves(r.evalset.sentence_ids, 0)
    assert {a, b} == {"s0", "s1"}
    # by hand from the table in _synthetic_result, on the one sentence of half B (eng text, fra text):
    #   eng top1+2: self (s0: 2, s1: 4), others = fra text (0.4, 0.4),
    #   synergy = self − top1 − top2 (2−1−0, 4−3−0)
    #   fra top1+2: self (3, 5), others = eng text (0.5, 0.5), synergy (3−2−1, 5−2−1)
    #   French top1+2 on English texts: 0.5; English top1+2 on French texts: 0.4
    expected = {
        "s0": {
            "eng_Latn": dict(self=2.0, others=0.4, diff=1.6, ratio=5.0, synergy=1.0, olf=0.5),
            "fra_Latn": dict(self=3.0, others=0.5, diff=2.5, ratio=6.0, synergy=0.0, olf=0.4),
        },
        "s1": {
            "eng_Latn": dict(self=4.0, others=0.4, diff=3.6, ratio=10.0, synergy=1.0, olf=0.5),
            "fra_Latn": dict(self=5.0, others=0.5, diff=4.5, ratio=10.0, synergy=2.0, olf=0.4),
        },
    }[b]
    summary = {
        row["language"]: row for row in section5.summary_rows(r, ["eng_Latn", "fra_Latn"], [4], 2, seed=0)
    }
    for lang, want in expected.items():
        row = summary[lang]
        assert (
            row["peak_layer"] == 4 and row["peak_frequency"] == "4:1.000" and row["modal_peak_share"] == 1.0
        )
        assert row["peak_selection_half_n"] == 1 and row["report_half_n"] == 1
        for col, ci, key in [
            ("self_delta_ce", "self", "self"),
            ("others_delta_ce", "others", "others"),
            ("specificity_diff", "specificity_diff", "diff"),
            ("specificity", "specificity", "ratio"),
            ("synergy", "synergy", "synergy"),
            ("other_lang_features_delta_ce", "other_lang_features", "olf"),
        ]:
            # one sentence in half B: every replicate draws it, so each interval is that value
            for got in (row[col], row[f"{ci}_ci_low"], row[f"{ci}_ci_high"]):
                assert math.isclose(got, want[key], abs_tol=1e-9), (lang, col, got, want[key])
        assert row["specificity_ratio_unbounded"] is False
        # random k=2: draws 0.2 and 0.4 on every text; replicates resample the 2 draws -> [0.2, 0.4]
        assert math.isclose(row["random_delta_ce"], 0.3, abs_tol=1e-9) and row["random_draws"] == 2
        assert math.isclose(row["random_ci_low"], 0.2, abs_tol=1e-9) and math.isclose(
            row["random_ci_high"], 0.4, abs_tol=1e-9
        )
    assert "shared_with" in summary["eng_Latn"]
    table = section5.format_summary(list(summary.values()))
    assert "unbounded" not in table and f"{expected['eng_Latn']['ratio']:.2f}" in table


def _layered_result(own: np.ndarray) -> SweepResult:
    """eng and fra with n parallel sentences; per layer L one condition per language, its top1.

    own: [K, n] ΔCE of eng's top1 at each layer on the eng texts; eng's top1 changes nothing on fra
    texts and fra's top1 nothing anywhere (so only eng's numbers matter).
    """
    K, n = own.shape
    ids = np.tile([f"s{i}" for i in range(n)], 2)
    ev = EvalSet(("eng_Latn", "fra_Latn"), [[1, 2]] * (2 * n), np.repeat([0, 1], n), "simulated", ids)
    conds, rows = [], []
    for L in range(K):
        conds += [
            Condition(L, "directional", "eng_Latn", "top1", (2 * L,)),
            Condition(L, "directional", "fra_Latn", "top1", (2 * L + 1,)),
        ]
        rows += [np.concatenate([own[L], np.zeros(n)]), np.zeros(2 * n)]
    return SweepResult(ev, conds, np.zeros(2 * n), np.ones(2 * n, dtype=int), np.array(rows))


def test_held_out_peak_is_unbiased_where_the_same_text_argmax_is_not():
    """10 layers with the same true ΔCE 0.5 and per-text noise 1 (100 sentences): choosing the
    peak and measuring it on the same texts reports max over 10 noisy means, ~1.5 SE too high;
    chosen on half A and measured on half B it is unbiased, and its CI covers the truth."""
    K, n, truth, sims = 10, 100, 0.5, 150
    held_out, same_text, covered = [], [], 0
    for sim in range(sims):
        own = truth + np.random.default_rng(sim).normal(size=(K, n))
        (eng, _) = section5.summary_rows(
            _layered_result(own), ["eng_Latn", "fra_Latn"], list(range(K)), 1, seed=sim, n_boot=200
        )
        held_out.append(eng["self_delta_ce"])
        covered += eng["self_ci_low"] <= truth <= eng["self_ci_high"]
        same_text.append(own.mean(axis=1).max())  # the old rule: argmax and report on all texts
    se = 1 / np.sqrt(n)
    assert np.mean(same_text) - truth > 1.0 * se  # the bias the old rule had (E max of 10 normals ≈ 1.54 SE)
    assert abs(np.mean(held_out) - truth) < 4 * (np.sqrt(2) * se) / np.sqrt(
        sims
    )  # unbiased, within 4 SE of the mean
    assert covered / sims >= 0.88  # nominal 95%; the old same-text interval covered ~74%


def test_a_planted_peak_is_found_with_frequency_near_one():
    own = 0.5 + np.random.default_rng(0).normal(size=(10, 100))
    own[6] += 1.0  # 10 SE above every other layer
    (eng, _) = section5.summary_rows(
        _layered_result(own), ["eng_Latn", "fra_Latn"], list(range(10)), 1, seed=0, n_boot=200
    )
    assert eng["peak_layer"] == 6 and eng["modal_peak_layer"] == 6 and eng["modal_peak_share"] >= 0.95
    assert (
        eng["peak_frequency"].startswith("6:") and eng["peak_selection_half_n"] + eng["report_half_n"] == 100
    )


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def nu_dir(tiny_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("section5") / "run"
    flags = [
        "--out-dir",
        str(out),
        "--languages",
        ",".join(LANGS),
        "--layers",
        "0,2",
        "--n-texts-per-lang",
        "4",
    ]
    assert run_main(compute_nu_scores.main, [*tiny_args, *flags, "--top-k", "2", "--control-pool", "6"]) == 0
    return out


def _run(tiny_args, nu_dir, *extra):
    flags = [
        "--out-dir",
        str(nu_dir),
        "--languages",
        ",".join(LANGS),
        "--n-texts",
        "3",
        "--batch-size",
        "4",
        "--random-draws",
        "2",
    ]
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
        assert (nu_dir / "figures" / name).stat().st_size > 1000, name
    assert "peak" in capsys.readouterr().out
    summary = _read_csv(nu_dir / "section5_summary.csv")
    assert {r["language"] for r in summary} == set(LANGS)
    for r in summary:  # 3 sentences: 1 chooses the peak, 2 report it
        assert (r["peak_selection_half_n"], r["report_half_n"]) == ("1", "2")
        assert r["specificity_ratio_unbounded"] in ("True", "False") and r["peak_frequency"].startswith(
            r["modal_peak_layer"] + ":"
        )
        assert (
            float(r["specificity_diff_ci_low"])
            <= float(r["specificity_diff"])
            <= float(r["specificity_diff_ci_high"])
        )
        assert float(r["random_ci_low"]) <= float(r["random_delta_ce"]) <= float(r["random_ci_high"])
    meta = json.loads((nu_dir / "section5_meta.json").read_text())
    assert (
        meta["split_seed"] == 0
        and "half A" in meta["peak_rule"]
        and meta["bootstrap"]["n_boot"] == stats.N_BOOT
    )
    stage = reproduce_figures_section5.STAGE  # the report finds the meta by the stage's name for it
    assert meta["stage"] == stage.name == "section5" and stage.meta == "section5_meta.json"
    assert meta["bootstrap"]["random_control"] == "draws resampled with replacement as well as sentence ids"
    assert meta["mode"] == "directional" and meta["n_conditions"] * 3 == len(rows) and meta["data"]

    # the directions the engine ablated are the transcoder rows the nu stage saved
    d = torch.load(nu_dir / "layer_2_directions.pt", weights_only=False)
    top = d["top_indices"][LANGS.index("fra_Latn")].tolist()
    fra = [
        r for r in rows if r["layer"] == "2" and r["ablated_lang"] == "fra_Latn" and r["features"] == "top1+2"
    ]
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
    assert (
        _run(tiny_args, nu_dir, "--layers", "2", "--mode", "feature", "--random-draws", "0", "--top-k", "1")
        == 0
    )
    rows = _read_csv(nu_dir / "ablation_results.csv")
    assert {r["mode"] for r in rows} == {"directional", "feature"}
    feature = [r for r in rows if r["mode"] == "feature"]
    assert len(feature) == 3 * 3 and {r["features"] for r in feature} == {"top1"}
    assert (nu_dir / "figures" / "figure5_feature.png").exists()
    for name in ("figure5_data_feature.csv", "section5_summary_feature.csv"):  # beside the directional ones
        assert (nu_dir / name).exists(), name
    meta = json.loads((nu_dir / "section5_meta_feature.json").read_text())
    assert meta["stage"] == "section5" and meta["mode"] == "feature" and meta["top_k"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-k", "3"], "--top-k 3 is out of range"),
        (
            ["--layers", "1"],
            r"layer\(s\) \[1\] have no nu results.*python compute_nu_scores\.py .*--layers 0,1,2",
        ),
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
