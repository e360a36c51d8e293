"""Stage 3: distances and clusters against hand values and sklearn, stability on planted and random
matrices, and the script end to end on the tiny fixture against a batch-1 reference."""

import json
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import LANGS5, SHARED, STAGE3, TOY, copy_nu, read_csv, stage3
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from langsae import config, features, interactions, sweep
from langsae.ablation import make_ablation
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.data import load_texts
from langsae.forward import edit_output, tokenize
from langsae.model import load_model
from langsae.stages import interactions as cross_linguistic_interactions
from langsae.stages import section5 as reproduce_figures_section5
from langsae.sweep import NO_LANGUAGE, RANDOM, Condition, EvalSet, SweepResult

# ----------------------------------------------------------------------------- distance and clusters by hand


def test_ratio_distance_by_hand():
    m = np.array([[2.0, 0.5, 0.0], [1.5, 2.0, -3.0], [0.0, 0.0, 1.0]])
    d = interactions.ratio_distance(m)
    assert math.isclose(d[0, 1], 1 - (0.5 + 1.5) / 4) and d[0, 1] == d[1, 0]
    assert d[0, 2] == 1.0 and d[1, 2] == 1 - (-3.0) / 3  # nothing shared; negative interaction: beyond 1
    assert (np.diag(d) == 0).all()
    m[0, 1] = m[1, 0] = 3.0  # more than the diagonals: clipped at 0
    assert interactions.ratio_distance(m)[0, 1] == 0.0
    m[2, 2] = -5.0
    assert interactions.ratio_distance(m) is None


def test_profile_distance_is_zero_for_proportional_profiles():
    m = np.array([[1.0, 0.2, 0.6], [0.2, 1.0, 0.6], [0.4, 0.3, 2.0]])
    d = interactions.profile_distance(m)
    assert d.shape == (3, 3) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    profiles = np.concatenate([m / np.diag(m)[:, None], (m / np.diag(m)[None, :]).T], axis=1)
    assert math.isclose(d[0, 2], 1 - np.corrcoef(profiles[0], profiles[2])[0, 1], rel_tol=1e-9)


def test_negative_eigen_mass_is_zero_for_euclidean_distances_only():
    pts = np.random.default_rng(0).normal(size=(6, 3))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    assert interactions.negative_eigen_mass(d) < 1e-10
    bad = np.array([[0, 1, 5], [1, 0, 1], [5, 1, 0]], dtype=float)  # breaks the triangle inequality
    assert interactions.negative_eigen_mass(bad) > 0.1


@pytest.mark.parametrize("k", [2, 3, 5])
def test_ward_on_mds_coordinates_matches_sklearn(k):
    pts = np.random.default_rng(k).normal(size=(10, 3))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    c = interactions.cluster(d, k, dims=2, n_init=4, seed=0)
    ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(c.coords)
    assert adjusted_rand_score(c.labels, ref) == 1.0
    assert list(c.labels) == list(interactions.canonical_labels(ref))


def _blocks(noise: float, n_rep: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """9 languages in 3 planted blocks: M = 1 on the diagonal, 0.6 within a block, 0.05 across."""
    block = np.repeat(np.arange(3), 3)
    m = np.where(block[:, None] == block[None, :], 0.6, 0.05)
    np.fill_diagonal(m, 1.0)
    reps = m + np.random.default_rng(seed).normal(scale=noise, size=(n_rep, 9, 9))
    return m, reps


def test_planted_blocks_are_recovered_with_co_clustering_near_one():
    m, reps = _blocks(noise=0.03, n_rep=40)
    point = interactions.cluster(interactions.ratio_distance(m), 3, 2, 4, seed=0)
    block = np.repeat(np.arange(3), 3)
    assert adjusted_rand_score(point.labels, block) == 1.0
    stab = interactions.stability(reps, "ratio", point.labels, 3, 2, 4, seed=0)
    same = block[:, None] == block[None, :]
    assert stab.co_clustering[same].min() >= 0.95 and stab.co_clustering[~same].max() <= 0.05
    assert stab.ari.mean() > 0.95 and stab.n_skipped == 0


def test_random_matrices_give_low_stability():
    rng = np.random.default_rng(1)
    reps = rng.uniform(0, 0.5, size=(40, 9, 9))
    reps[:, np.arange(9), np.arange(9)] = 1.0
    point = interactions.cluster(interactions.ratio_distance(reps.mean(axis=0)), 3, 2, 4, seed=0)
    stab = interactions.stability(reps, "ratio", point.labels, 3, 2, 4, seed=0)
    assert stab.ari.mean() < 0.3
    off = ~np.eye(9, dtype=bool)
    assert 0.1 < stab.co_clustering[off].mean() < 0.5  # no pair is reliably together or apart


def test_undefined_resamples_are_skipped_and_counted():
    m, reps = _blocks(noise=0.0, n_rep=5)
    reps[1, 0, 0] = reps[1, 1, 1] = -1.0  # diagonal sum ≤ 0: the ratio means nothing
    point = interactions.cluster(interactions.ratio_distance(m), 3, 2, 4, seed=0)
    stab = interactions.stability(reps, "ratio", point.labels, 3, 2, 4, seed=0)
    assert stab.n_skipped == 1 and len(stab.ari) == 4


# ----------------------------------------------------------------------------- matrices from a sweep, by hand


def _sweep_result() -> SweepResult:
    """Two languages x 2 texts (sentences s0, s1 in both), two layers, per-text ΔCE chosen by hand:
    at layer 3 ablating eng gives 1, 3 on eng texts and 0, 0.2 on fra texts; ablating fra gives
    0.5, 0.5 | 2, 4; at layer 5 everything is twice that; random draws 0.1 and 0.3 everywhere."""
    ev = EvalSet(
        ("eng_Latn", "fra_Latn"),
        [[1, 2]] * 4,
        np.array([0, 0, 1, 1]),
        "synthetic",
        np.array(["s0", "s1", "s0", "s1"]),
    )
    eng, fra = np.array([1, 3, 0, 0.2]), np.array([0.5, 0.5, 2, 4])
    conds, rows = [], []
    for L, scale in ((3, 1.0), (5, 2.0)):
        conds += [
            Condition(L, "directional", "eng_Latn", "top1+2", (L, 1)),
            Condition(L, "directional", "fra_Latn", "top1+2", (L, 2)),
        ]
        rows += [scale * eng, scale * fra]
        for draw, v in enumerate((0.1, 0.3)):
            conds.append(Condition(L, "directional", NO_LANGUAGE, RANDOM, (100 + draw, 200), draw))
            rows.append(np.full(4, v))
    baseline = np.array([5.0, 6.0, 7.0, 8.0])
    return SweepResult(ev, conds, baseline, np.ones(4), baseline + np.array(rows))


def test_layer_matrices_and_aggregates_by_hand():
    lm = interactions.layer_matrices(_sweep_result(), "top1+2", 2, seed=0, n_boot=50)
    assert lm.layers == (3, 5)
    np.testing.assert_allclose(lm.m.point[0], [[2.0, 0.5], [0.1, 3.0]])
    np.testing.assert_allclose(lm.m.point[1], [[4.0, 1.0], [0.2, 6.0]])
    np.testing.assert_allclose(lm.random.point, 0.2)
    langs = ["eng_Latn", "fra_Latn"]
    mean, rand = lm.aggregate(interactions.layer_weights("mean", [3, 5], langs))
    np.testing.assert_allclose(mean.point, [[3.0, 0.75], [0.15, 4.5]])
    assert mean.reps.shape == (50, 2, 2) and np.allclose(rand.point, 0.2)
    peak, _ = lm.aggregate(interactions.layer_weights("peak", [3, 5], langs, {"eng_Latn": 5, "fra_Latn": 3}))
    np.testing.assert_allclose(peak.point, [[4.0, 0.5], [0.2, 3.0]])  # column j at language j's peak
    single, _ = lm.aggregate(interactions.layer_weights(3, [3, 5], langs))
    np.testing.assert_allclose(single.point, lm.m.point[0])
    np.testing.assert_allclose(single.reps, lm.m.reps[:, 0])


# ----------------------------------------------------------------------------- the script on the small toy


def section5_run(out):
    assert run_main(reproduce_figures_section5.main, [*TOY, "--out-dir", str(out), *SHARED]) == 0


def _reference_delta(model, ids: list[int], ablation) -> float:
    """Slow and obvious: one text, batch 1, full forwards with and without the hook, CE from the full
    logits."""
    x = torch.tensor([ids])
    ce = []
    for a in (None, ablation):
        with torch.no_grad(), edit_output(model, a.hook, a.apply) if a else nullcontext():
            logits = model(input_ids=x).logits[0].float()
        ce.append(F.cross_entropy(logits[:-1], x[0, 1:]).item())
    return ce[1] - ce[0]


def test_stage3_after_section5_computes_nothing_and_matches_a_batch1_reference(
    small_toy_nu, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    run = copy_nu(small_toy_nu, tmp_path / "run")
    section5_run(run)
    out = stage3(run)
    assert out["computed"] == 0 and out["cached"] > 0 and out["unit"] == "conditions"
    rows = read_csv(run / "interaction_matrix.csv")
    assert list(rows[0]) == interactions.MATRIX_COLUMNS
    assert {r["layer"] for r in rows} == {"0", "1", "mean"}
    assert (
        len([r for r in rows if r["ablated_lang"] == "random"]) == 3 * 5
    )  # per layer and the aggregate, per language
    for r in rows:
        assert float(r["ci_low"]) <= float(r["delta_ce"]) <= float(r["ci_high"])

    # a few cells against batch-1 forwards with the nu stage's saved directions
    cfg = resolve(
        build_parser("t").parse_args([*TOY, "--out-dir", str(run), "--languages", ",".join(LANGS5)])
    )
    nu = features.load_nu_results(cfg, None, 2)
    model, tok = load_model(cfg.preset, "cpu", torch.float32)
    texts = load_texts(tuple(LANGS5), "evaluation", 4)
    cell = {(r["eval_lang"], r["ablated_lang"], r["layer"]): float(r["delta_ce"]) for r in rows}
    for ev, ab, L in [("eng_Latn", "jpn_Jpan", 1), ("tha_Thai", "tha_Thai", 0), ("arb_Arab", "spa_Latn", 0)]:
        a = make_ablation(nu.layers[L], nu.layers[L].top(ab, (1, 2)), "directional")
        ref = np.mean([_reference_delta(model, ids, a) for ids in tokenize(tok, texts.by_language[ev])])
        assert abs(cell[(ev, ab, str(L))] - ref) < 1e-5 * max(1, abs(ref)), (ev, ab, L)
    mean_cell = np.mean([cell[("eng_Latn", "jpn_Jpan", L)] for L in ("0", "1")])
    assert abs(cell[("eng_Latn", "jpn_Jpan", "mean")] - mean_cell) < 1e-5

    clusters = json.loads((run / interactions.CLUSTERS_FILE).read_text())
    for key in (
        "languages",
        "distance",
        "labels",
        "co_clustering",
        "ari",
        "stress",
        "silhouette",
        "settings",
        "mds_coords",
    ):
        assert key in clusters, key
    assert (
        clusters["languages"] == LANGS5
        and len(clusters["distance"]) == 5
        and set(clusters["labels"]) == set(LANGS5)
    )
    assert (
        len(set(clusters["labels"].values())) == 3
        and clusters["ari"]["n_resamples"] + clusters["ari"]["n_skipped"] == 20
    )
    assert set(clusters["silhouette"]) == {"2", "3", "4"}
    co = np.array(clusters["co_clustering"])
    assert np.allclose(np.diag(co), 1) and np.allclose(co, co.T)
    assert (
        clusters["labels"]["eng_Latn"] == clusters["labels"]["spa_Latn"]
    )  # Latin-script neighbours: the small toy's ablations hurt them alike
    for name in (
        "interaction_matrix",
        "interaction_mds",
        "interaction_dendrogram",
        "interaction_coclustering",
    ):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert "MDS+Ward" in capsys.readouterr().out
    meta = json.loads((run / "interaction_meta.json").read_text())
    assert meta["stage"] == cross_linguistic_interactions.STAGE.name == "interactions"
    assert meta["settings"] == clusters["settings"] and (meta["computed"], meta["cached"]) == (
        0,
        out["cached"],
    )
    assert meta["bootstrap"]["stability_resamples"] == 20 and "draws" in meta["bootstrap"]["random_reference"]

    # --aggregate peak: column j at language j's held-out peak from Section 5, still nothing computed
    assert stage3(run, "--aggregate", "peak")["computed"] == 0
    peaks = {r["language"]: r["peak_layer"] for r in read_csv(run / "section5_summary.csv")}
    cell = {
        (r["eval_lang"], r["ablated_lang"], r["layer"]): r["delta_ce"]
        for r in read_csv(run / "interaction_matrix.csv")
    }
    for ab in LANGS5:
        assert cell[("eng_Latn", ab, "peak")] == cell[("eng_Latn", ab, peaks[ab])]


def test_stage3_from_scratch_computes_then_reads(small_toy_nu, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "OUTPUT_ROOT", tmp_path / "output")
    run = copy_nu(small_toy_nu, tmp_path / "run")
    first = stage3(run, "--features", "top1", "--distance", "profile")
    assert first["computed"] > 0

    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sweep, "ablated_ce", fail)
    monkeypatch.setattr(sweep, "baseline_ce", fail)
    again = stage3(run, "--features", "top1", "--distance", "profile")
    assert again == {"computed": 0, "cached": first["computed"], "unit": "conditions"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--aggregate", "peak"], r"no Section 5 summary.*python reproduce_figures_section5\.py --model toy"),
        (["--aggregate", "7"], r"layer\(s\) \[7\] needed by --aggregate"),
        (["--aggregate", "top"], "neither mean nor peak"),
        (["--k", "5"], "--k must be between 2 and 4"),
    ],
)
def test_bad_input_is_one_line_exit_2(small_toy_nu, tmp_path, capsys, extra, message):
    import re

    run = copy_nu(small_toy_nu, tmp_path / "run")
    argv = [*TOY, "--out-dir", str(run), *SHARED, *STAGE3, *extra]
    assert run_main(cross_linguistic_interactions.main, argv) == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")
    ]  # (after the model's progress bar)
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (run / interactions.CLUSTERS_FILE).exists()
