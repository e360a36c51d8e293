"""compare_runs.py on two real Section 5 runs of the small toy with different seeds and language
sets: every number in its CSVs against the runs' own files read here, the shared-language rule,
and bad input as one line with exit 2."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import copy_nu, read_csv
from nu_artifacts import edit_meta, write_fake_nu

from langsae import compare, report
from langsae.artifacts import save_json, save_torch
from langsae.cli import run_main
from langsae.stages import section5 as reproduce_figures_section5

RUN_A = ["eng_Latn", "spa_Latn", "jpn_Jpan", "tha_Thai"]
RUN_B = ["spa_Latn", "jpn_Jpan", "tha_Thai", "arb_Arab"]
SHARED = ["spa_Latn", "jpn_Jpan", "tha_Thai"]  # in run A's order
S5 = ["--model", "toy", "--n-texts", "4", "--random-draws", "2"]

# Hand-written downstream results for run A (the stage itself is too slow for a unit test): the
# primary metrics' deltas and one secondary metric (qa em), which the comparison must leave out.
TASKS = {
    ("spa_Latn", "qa", "f1", "generate"): [-0.25, -0.4, -0.1],
    ("spa_Latn", "qa", "em", "generate"): [-9.0, -9.5, -8.5],
    ("jpn_Jpan", "topic", "accuracy", "loglik"): [0.05, -0.02, 0.12],
    ("arb_Arab", "topic", "accuracy", "loglik"): [-0.3, -0.4, -0.2],  # not a language of the comparison
}


def _entry(lang, task, metric, scoring, own):
    return {
        "task": task,
        "lang": lang,
        "layer": 1,
        "metric": metric,
        "scoring": scoring,
        "baseline": [0.6, 0.5, 0.7],
        "own_delta": own,
        "random_delta": [0.0, -0.05, 0.05],
        "own_minus_random": own,
        "cross_lang": "eng_Latn",
        "cross_delta": [0.0, 0.0, 0.0],
        "own_drop_exceeds_random": False,
    }


@pytest.fixture(scope="module")
def runs(small_toy_nu, tmp_path_factory):
    """Two run folders: the nu stage's files, then a real Section 5 run (seed 0 on RUN_A, seed 1 on RUN_B)."""
    root = tmp_path_factory.mktemp("compare")
    out = []
    for name, langs, seed in (("run_a", RUN_A, 0), ("run_b", RUN_B, 1)):
        run = copy_nu(small_toy_nu, root / name)
        argv = [*S5, "--out-dir", str(run), "--languages", ",".join(langs), "--seed", str(seed)]
        assert run_main(reproduce_figures_section5.main, argv) == 0
        out.append(run)
    entries = [_entry(*key, own) for key, own in TASKS.items()]
    save_json({"mode": "directional", "rule": "r", "entries": entries}, out[0] / "downstream_summary.json")
    report.write_report(out[0], out[0] / "figures")  # the report as it stands with the task results
    return out


def _compare(runs, out, capsys, *extra):
    rc = run_main(compare.main, [*map(str, runs), "--out", str(out), *extra])
    return rc, capsys.readouterr()


def _depth(run):
    """The model's layer count, from the config.json of the model the run's nu meta names."""
    model_id = json.loads((run / "meta.json").read_text())["model_id"]
    return json.loads((Path(model_id) / "config.json").read_text())["num_hidden_layers"]


def test_two_toy_runs_with_different_seeds(runs, tmp_path, capsys):
    seeds = [json.loads((r / "section5_meta.json").read_text())["seed"] for r in runs]
    assert seeds == [0, 1]
    rc, io = _compare(runs, tmp_path / "cmp", capsys)
    assert rc == 0, io.err
    assert "comparing only the 3 shared" in io.out and "eng_Latn" in io.out and "arb_Arab" in io.out

    rows = read_csv(tmp_path / "cmp" / compare.LANGUAGES_FILE)
    assert [(r["run"], r["language"]) for r in rows] == [(n, g) for n in ("run_a", "run_b") for g in SHARED]
    for run in runs:
        with open(run / "section5_summary.csv", newline="") as f:
            s5 = {r["language"]: r for r in csv.DictReader(f)}
        exclusive = json.loads((run / "meta.json").read_text())["exclusive_top1"]
        depth = _depth(run)
        for r in (r for r in rows if r["run"] == run.name):
            own = s5[r["language"]]
            peak = int(own["peak_layer"])
            assert int(r["peak_layer"]) == peak and int(r["n_layers"]) == depth
            assert math.isclose(float(r["peak_fraction"]), peak / depth, rel_tol=1e-5)
            for key in ("specificity_diff", "specificity_diff_ci_low", "specificity_diff_ci_high"):
                assert math.isclose(float(r[key]), float(own[key]), rel_tol=1e-5, abs_tol=1e-9)
            assert r["exclusive_top1"] == str(exclusive[str(peak)][r["language"]])

    task_cells = {(r["run"], r["language"]): r for r in rows}
    spa, jpn, tha = (task_cells[("run_a", g)] for g in SHARED)
    assert [float(spa[f"qa_f1_{c}"]) for c in ("own_delta", "ci_low", "ci_high")] == [-0.25, -0.4, -0.1]
    assert [float(jpn[f"topic_accuracy_{c}"]) for c in ("own_delta", "ci_low", "ci_high")] == [
        0.05,
        -0.02,
        0.12,
    ]
    assert spa["topic_accuracy_own_delta"] == jpn["qa_f1_own_delta"] == tha["qa_f1_own_delta"] == ""
    assert spa["task_layer"] == "1" and task_cells[("run_b", "spa_Latn")]["task_layer"] == ""
    assert all(r["qa_f1_own_delta"] == "" for r in rows if r["run"] == "run_b")

    claims = read_csv(tmp_path / "cmp" / compare.CLAIMS_FILE)
    for run in runs:  # each run's verdicts as its own REPORT.md states them, in claim order
        listed = [r["verdict"] for r in claims if r["run"] == run.name]
        assert listed == report.verdicts_in((run / "figures" / "REPORT.md").read_text())

    md = (tmp_path / "cmp" / compare.TABLE_FILE).read_text()
    assert "Only the 3 languages every run measured are compared" in md and "run_a: eng_Latn" in md
    for stem in (compare.PEAK_FIGURE, compare.SPECIFICITY_FIGURE):
        assert (tmp_path / "cmp" / f"{stem}.png").stat().st_size > 0
        assert (tmp_path / "cmp" / f"{stem}.pdf").stat().st_size > 0
    meta = json.loads((tmp_path / "cmp" / compare.META_FILE).read_text())
    assert meta["shared_languages"] == SHARED
    assert meta["left_out"] == {"run_a": ["eng_Latn"], "run_b": ["arb_Arab"]}
    assert [m["features_dir"] for m in meta["runs"]] == [str(r) for r in runs]
    assert all(m["sae_release"] and m["model_id"] for m in meta["runs"]) and "torch" in meta["versions"]
    assert all(m["n_layers_from"] == "nu meta (num_hidden_layers)" for m in meta["runs"])


def _edit(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_depth_from_a_meta_first_and_said_unknown_without_one(runs, tmp_path, capsys):
    run_c, run_d, run_e = (shutil.copytree(runs[1], tmp_path / n) for n in ("run_c", "run_d", "run_e"))
    _edit(run_e / "meta.json", num_hidden_layers=None)  # no count in any meta: the model's config.json
    _edit(run_c / "meta.json", num_hidden_layers=7)  # the nu meta's count wins over the model's config
    gone = str(tmp_path / "no_such_model")
    _edit(run_d / "meta.json", model_id=gone, num_hidden_layers=None)  # as a nu meta before it recorded depth
    s5 = json.loads((run_d / "section5_meta.json").read_text())
    _edit(run_d / "section5_meta.json", config={**s5["config"], "model_id": gone})
    rc, io = _compare([run_c, run_d, run_e], tmp_path / "cmp", capsys)
    assert rc == 0, io.err
    rows = read_csv(tmp_path / "cmp" / compare.LANGUAGES_FILE)
    for r in rows:
        if r["run"] == "run_e":
            assert r["n_layers"] == str(_depth(run_e)) != "7"
        elif r["run"] == "run_c":
            assert r["n_layers"] == "7" and math.isclose(
                float(r["peak_fraction"]), int(r["peak_layer"]) / 7, rel_tol=1e-5
            )
        else:
            assert r["n_layers"] == r["peak_fraction"] == "" and r["peak_layer"] != ""
    assert "comparing only" not in io.out  # the same languages: nothing left out
    md = (tmp_path / "cmp" / compare.TABLE_FILE).read_text()
    assert f"unknown: no layer count in the run's metas, and no config of {gone}" in md


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "does not exist"),
        ("empty", "holds no run's results"),
        ("one", "two or more run folders"),
        ("figures", "--figures-dirs: give one folder per run (2), got 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(runs, tmp_path, capsys, case, expected):
    (tmp_path / "empty").mkdir()
    argv = {
        "missing": [runs[0], tmp_path / "nowhere"],
        "empty": [runs[0], tmp_path / "empty"],
        "one": [runs[0]],
        "figures": [*runs, "--figures-dirs", tmp_path],
    }[case]
    rc, io = _compare(argv, tmp_path / "cmp", capsys)
    lines = io.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], io.err
    assert case not in ("missing", "empty") or str(argv[1]) in lines[0]
    assert not (tmp_path / "cmp").exists()


def test_runs_without_a_common_language_are_refused(runs, tmp_path, capsys):
    run_c = shutil.copytree(runs[0], tmp_path / "run_c")
    path = run_c / "section5_summary.csv"
    rows = [r for r in read_csv(path) if r["language"] == "eng_Latn"]  # run B has no English
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc, io = _compare([run_c, runs[1]], tmp_path / "cmp", capsys)
    assert rc == 2 and io.err.strip() == (
        "error: the runs share no language; compare runs measured on at least one common language"
    )


# ----------------------------------------------------------------------------- SAE-family agreement

LANGS = ["eng_Latn", "spa_Latn", "jpn_Jpan"]
E = torch.eye(4)
# Run A's top-1 decoder direction per language at layer 1, and run B's top-1 and top-2 there, chosen so
# the cosines are known by hand: identical (scaled), orthogonal with B's top-2 antiparallel, 60 degrees.
A_TOP1 = {"eng_Latn": E[0], "spa_Latn": E[1], "jpn_Jpan": E[0]}
B_TOP2 = {
    "eng_Latn": (3 * E[0], E[1]),
    "spa_Latn": (E[2], -2 * E[1]),
    "jpn_Jpan": (0.5 * E[0] + math.sqrt(3) / 2 * E[3], E[2]),
}
# language -> (cos(top-1 A, top-1 B), best |cos| over B's top-2, the rank in B of that best feature)
EXPECTED = {"eng_Latn": (1.0, 1.0, 0), "spa_Latn": (0.0, 1.0, 1), "jpn_Jpan": (0.5, 0.5, 0)}


def _fake_run(path, model, release, layers, seed, rows=None):
    """A nu-only run of `model` with SAE `release`; `rows` sets decoder rows: language -> vectors by rank."""
    g = torch.Generator().manual_seed(seed)
    weights = {L: {k: torch.randn(32, 4, generator=g) for k in ("W_enc", "W_dec")} for L in layers}
    for w in weights.values():
        w["b_enc"] = torch.zeros(32)
    config = {"preset": "fake", "model_id": f"/nowhere/{model}", "model": model, "sae_release": release}
    dirs = write_fake_nu(path, config, weights, LANGS, top_k=2, seed=seed)
    edit_meta(path, num_hidden_layers=3)
    d = dirs[1]
    for lang, vectors in (rows or {}).items():
        for rank, v in enumerate(vectors):
            feature = d["top_indices"][LANGS.index(lang), rank]
            d["W_dec"][int((d["feature_indices"] == feature).nonzero())] = v
    save_torch(d, path / "layer_1_directions.pt")
    return d


def _brute_force(da, db, lang):
    """cos(top-1 of A, top-1 of B) and max |cos| over B's top-k, from the saved rows by numpy."""
    i = LANGS.index(lang)

    def row(d, f):
        return d["W_dec"][list(d["feature_indices"]).index(f)].numpy().astype(float)

    u = row(da, da["top_indices"][i, 0])
    cos = [u @ row(db, f) / np.linalg.norm(u) / np.linalg.norm(row(db, f)) for f in db["top_indices"][i]]
    return cos[0], max(abs(c) for c in cos)


def test_sae_family_agreement_is_the_decoder_cosine_for_runs_of_one_model(tmp_path, capsys):
    model = "sha256:same-model"
    da = _fake_run(tmp_path / "tc", model, "transcoders", [0, 1], 0, {g: (v,) for g, v in A_TOP1.items()})
    db = _fake_run(tmp_path / "resid", model, "residual-sae", [1, 2], 1, B_TOP2)
    _fake_run(tmp_path / "other", "sha256:another-model", "residual-sae", [1], 2)
    dc = _fake_run(tmp_path / "tc_again", model, "transcoders", [1], 3)  # tc's SAE again: not paired with tc
    runs = [tmp_path / n for n in ("tc", "resid", "other", "tc_again")]
    rc, io = _compare(runs, tmp_path / "cmp", capsys)
    assert rc == 0, io.err
    rows = read_csv(tmp_path / "cmp" / compare.AGREEMENT_FILE)
    pairs = [("tc", "resid"), ("resid", "tc_again")]  # one model, two SAE releases; at their one shared layer
    assert [(r["run_a"], r["run_b"], r["language"], r["layer"]) for r in rows] == [
        (*p, g, "1") for p in pairs for g in LANGS
    ]
    for r in rows[:3]:  # tc vs resid: by hand
        cos, best, rank = EXPECTED[r["language"]]
        i = LANGS.index(r["language"])
        assert math.isclose(float(r["decoder_cosine"]), cos, abs_tol=1e-6)
        assert math.isclose(float(r["best_abs_cosine_topk"]), best, abs_tol=1e-6)
        assert int(r["best_feature_b"]) == int(db["top_indices"][i, rank]) and r["k_b"] == "2"
        assert (int(r["top1_a"]), int(r["top1_b"])) == (
            int(da["top_indices"][i, 0]),
            int(db["top_indices"][i, 0]),
        )
    for r in rows[3:]:  # resid vs tc_again: random rows, by brute force
        cos, best = _brute_force(db, dc, r["language"])
        assert math.isclose(float(r["decoder_cosine"]), cos, abs_tol=1e-5)
        assert math.isclose(float(r["best_abs_cosine_topk"]), best, abs_tol=1e-5)
    meta = json.loads((tmp_path / "cmp" / compare.META_FILE).read_text())
    assert meta["agreement_pairs"] == [list(p) for p in pairs]
    assert "## SAE-family agreement" in (tmp_path / "cmp" / compare.TABLE_FILE).read_text()

    rc, io = _compare([runs[2], runs[0], runs[3]], tmp_path / "none", capsys)  # another model, or one SAE
    assert rc == 0, io.err
    assert read_csv(tmp_path / "none" / compare.AGREEMENT_FILE) == []
    assert (
        "No two runs share a model with different SAE releases"
        in (tmp_path / "none" / compare.TABLE_FILE).read_text()
    )
