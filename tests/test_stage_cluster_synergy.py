"""Stage 4: the permutation test's level and power on constructed data, and the script on the small
toy (a shared top-1 is flagged and its synergy is −ΔA exactly; reruns compute nothing; missing or
stale clusters are refused with the command that makes them)."""

import json
import math
import re

import numpy as np
import pytest
from helpers import LANGS5, TOY, copy_nu, read_csv, stage3
from scipy.stats import kstest

from langsae import config, sweep, synergy
from langsae.cli import run_main
from langsae.stages import cluster_synergy
from langsae.stats import Resampled

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])  # 10 languages in clusters of 3, 3, 2, 2
PAIRS = [(a, b) for a in range(10) for b in range(a + 1, 10)]
A_IDX, B_IDX = np.array([p[0] for p in PAIRS]), np.array([p[1] for p in PAIRS])


def test_permutation_p_is_uniform_under_the_null():
    rng = np.random.default_rng(0)
    ps = [
        synergy.permutation_test(rng.normal(size=len(PAIRS)), A_IDX, B_IDX, LABELS, 199, seed=s)[1]
        for s in range(300)
    ]
    assert kstest(ps, "uniform").pvalue > 0.01
    assert 0.02 < np.mean(np.array(ps) <= 0.05) < 0.09


def test_permutation_p_is_small_with_a_planted_effect():
    rng = np.random.default_rng(1)
    intra = LABELS[A_IDX] == LABELS[B_IDX]
    values = rng.normal(scale=0.1, size=len(PAIRS)) - 1.0 * intra  # intra pairs sub-additive
    effect, p, n = synergy.permutation_test(values, A_IDX, B_IDX, LABELS, 2000, seed=0)
    assert 1 / 2001 <= p < 0.01 and n == 2000
    assert math.isclose(effect, values[intra].mean() - values[~intra].mean())


INTRA = LABELS[A_IDX] == LABELS[B_IDX]


def test_cluster_effect_given_cosine_is_null_when_cosine_explains_synergy():
    """Intra pairs have larger |cosine|, and synergy depends on the cosine alone: the plain
    intra-vs-inter test finds a cluster effect, the test given the cosine does not."""
    rng = np.random.default_rng(2)
    cos = rng.uniform(0.0, 0.3, len(PAIRS)) + 0.5 * INTRA
    values = -2.0 * cos + rng.normal(scale=0.05, size=len(PAIRS))
    assert synergy.permutation_test(values, A_IDX, B_IDX, LABELS, 2000, seed=0)[1] < 0.01
    effect, p, _ = synergy.permutation_test(values, A_IDX, B_IDX, LABELS, 2000, seed=0, covariate=cos)
    assert p > 0.05 and abs(effect) < 0.1
    # the coefficient is the least-squares one of values ~ 1 + cos + intra
    coef = np.linalg.lstsq(np.column_stack([np.ones(len(PAIRS)), cos, INTRA]), values, rcond=None)[0]
    assert math.isclose(effect, coef[2], abs_tol=1e-12)


def test_cluster_effect_given_cosine_finds_a_planted_effect_and_keeps_its_level():
    rng = np.random.default_rng(3)
    cos = rng.uniform(0.0, 0.8, len(PAIRS))
    values = -cos - 1.0 * INTRA + rng.normal(scale=0.1, size=len(PAIRS))
    effect, p, _ = synergy.permutation_test(values, A_IDX, B_IDX, LABELS, 2000, seed=0, covariate=cos)
    assert p < 0.01 and abs(effect + 1.0) < 0.15
    ps = []
    for s in range(200):  # synergy depends on the cosine only, the cosine not on clusters
        c = rng.uniform(0.0, 0.8, len(PAIRS))
        ps.append(
            synergy.permutation_test(
                -c + rng.normal(size=len(PAIRS)), A_IDX, B_IDX, LABELS, 199, seed=s, covariate=c
            )[1]
        )
    assert kstest(ps, "uniform").pvalue > 0.01


def test_group_means_and_regression_by_hand():
    values = Resampled(np.array([1.0, 2.0, 4.0]), np.array([[1.0, 2.0, 4.0], [0.0, 2.0, 6.0]]))
    i, o, d = synergy.group_means(values, np.array([True, True, False]))
    assert (i.point, o.point, d.point) == (1.5, 4.0, -2.5) and np.allclose(d.reps, [-2.5, -5.0])
    r = synergy.regression([0.0, 0.5, 1.0, 1.0], [0.0, -1.0, -2.0, -2.0])
    assert math.isclose(r["slope"], -2.0) and math.isclose(r["r"], -1.0) and r["n"] == 4
    assert math.isnan(synergy.regression([0.3, 0.3, 0.3], [1, 2, 3])["slope"])


def _stage4(run, *extra, languages=LANGS5):
    return cluster_synergy.main(
        [
            *TOY,
            "--out-dir",
            str(run),
            "--languages",
            ",".join(languages),
            "--n-texts",
            "4",
            "--permutations",
            "200",
            *extra,
        ]
    )


def test_stage4_on_toy(small_toy_nu, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    run = copy_nu(small_toy_nu, tmp_path / "run")
    # fra with spa (layer 0) and with eng (layer 1) share a top-1 feature on the small toy
    langs = ["eng_Latn", "spa_Latn", "fra_Latn", "jpn_Jpan", "arb_Arab"]
    argv = [*TOY, "--out-dir", str(run), "--languages", ",".join(langs), "--n-texts", "4"]
    assert run_main(cluster_synergy.main, argv) == 2  # no clusters yet
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (
        len(err) == 1
        and "python cross_linguistic_interactions.py --model toy" in err[0]
        and "--n-texts 4" in err[0]
    )

    stage3(run, "--k", "2", "--languages", ",".join(langs))
    out = _stage4(run, languages=langs)
    assert out["computed"] > 0
    rows = read_csv(run / "cluster_synergy.csv")
    n_pairs = 2 * 10  # layers x pairs of 5 languages
    assert len(rows) == 2 * n_pairs
    same = [r for r in rows if r["same_feature"] == "True"]
    top1 = {  # the nu stage's own top-1 per layer and language
        L: {
            lang: top[0]["feature"]
            for lang, top in json.loads((run / f"layer_{L}_top20.json").read_text()).items()
        }
        for L in (0, 1)
    }
    shared = {
        (a, b)
        for L in (0, 1)
        for i, a in enumerate(langs)
        for b in langs[i + 1 :]
        if top1[L][a] == top1[L][b]
    }
    assert shared and {(r["lang_a"], r["lang_b"]) for r in same} == shared
    for r in same:
        assert (
            r["feature_a"] == r["feature_b"] and float(r["cosine"]) > 0.999999 and r["degenerate"] == "True"
        )
        assert r["delta_ab"] == r["delta_a"] == r["delta_b"]  # one condition, read back from one cache entry
        assert math.isclose(float(r["synergy"]), -float(r["delta_a"]), rel_tol=1e-5, abs_tol=1e-7)
    for r in rows:
        assert math.isclose(
            float(r["synergy"]),
            float(r["delta_ab"]) - float(r["delta_a"]) - float(r["delta_b"]),
            rel_tol=1e-4,
            abs_tol=1e-5,
        )
        assert float(r["ci_low"]) <= float(r["synergy"]) <= float(r["ci_high"])
    meta = json.loads((run / "cluster_synergy_summary.json").read_text())
    assert meta["stage"] == cluster_synergy.STAGE.name == "cluster-synergy" and meta["n_pairs"] == n_pairs
    assert meta["settings"]["permutations"] == 200 and "sentence ids" in meta["bootstrap"]["resampling"]
    summary = meta["layers"]
    assert set(summary) == {"0", "1", "all_layers"}
    for s in summary.values():
        for which in ("with_degenerate", "without_degenerate"):
            c = s[which]
            assert set(c) == {
                "intra",
                "inter",
                "difference",
                "permutation_p",
                "n_permutations",
                "regression",
                "intra_given_cosine",
            }
            assert set(c["regression"]) == {"slope", "intercept", "r", "p", "n"}
            assert set(c["intra_given_cosine"]) == {"coefficient", "permutation_p", "n_permutations"}
            # the permutations used: all 200 with every pair (both groups always have pairs); fewer may
            # qualify without
            assert c["n_permutations"] == 200 if which == "with_degenerate" else c["n_permutations"] <= 200
    for layer in ("0", "1"):
        n = {
            w: summary[layer][w]["intra"]["n_pairs"] + summary[layer][w]["inter"]["n_pairs"]
            for w in ("with_degenerate", "without_degenerate")
        }
        degenerate = len(
            {(r["lang_a"], r["lang_b"]) for r in rows if r["layer"] == layer and r["degenerate"] == "True"}
        )
        assert n["with_degenerate"] == 10 and n["without_degenerate"] == 10 - degenerate
    for name in ("synergy_intra_inter", "synergy_vs_cosine", "synergy_pairs"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000, name

    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sweep, "ablated_ce", fail)
    monkeypatch.setattr(sweep, "baseline_ce", fail)
    assert _stage4(run, languages=langs)["computed"] == 0
    with pytest.raises(Exception, match=re.escape("python cross_linguistic_interactions.py")):
        _stage4(
            run, "--mode", "feature", languages=langs
        )  # clusters were made from directional ablations: stale
