"""The steering stage on the small toy: tidy results, resume, its meta and report section, stale inputs
and bad flags (the library's metrics and rules: tests/test_steer_eval.py)."""

import csv
import json
from pathlib import Path

import pytest

from langsae import steer_eval as se
from langsae.stages import steering
from langsae.steering import STEERING_DIR, VECTORS_FILE
from langsae.verdicts import Artifacts

TOY = ["--model", "toy"]


@pytest.fixture(scope="module")
def toy_run(small_toy, tmp_path_factory):
    from helpers import run_nu

    out = tmp_path_factory.mktemp("toy_steering")
    assert run_nu(TOY, out) == 0
    return out


def _stage(out, *flags):
    return steering.main(
        [
            *TOY,
            "--out-dir",
            str(out),
            "--n-texts",
            "3",
            "--max-new-tokens",
            "4",
            "--lid-max-new-tokens",
            "3",
            "--alphas",  # two, not the toy preset's four: the counts below are by hand
            "2,8",
            *flags,
        ]
    )


def test_stage_on_toy_writes_tidy_results_and_resumes(toy_run):
    first = _stage(toy_run, "--methods", "sv,gated,random_gate", "--random-draws", "2")
    n_conditions = 1 + 2 * 2 + 1 * 2 * 2  # none; sv, gated x 2 alphas; random_gate x 2 draws x 2 alphas
    # 3 tasks x conditions, plus the steering vectors of layer 1
    assert first == {
        "computed": 3 * n_conditions + 1,
        "cached": 0,
        "unit": "(task, source, condition) or a layer's steering vectors",
    }
    with open(toy_run / se.RESULTS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == se.RESULTS_COLUMNS
    assert {r["task"] for r in rows} == set(se.TASKS)
    rg = [
        r
        for r in rows
        if r["method"] == "random_gate"
        and r["task"] == "lid"
        and r["metric"] == "success"
        and float(r["alpha"]) == 8
    ]
    assert sorted(r["draw"] for r in rg) == ["", "0", "1"]  # per draw and the mean over draws
    summary = json.loads((toy_run / se.SUMMARY_FILE).read_text())
    assert {(e["task"], e["method"]) for e in summary["entries"]} == {
        (t, m) for t in ("lid", "continuation") for m in ("sv", "gated", "random_gate")
    }
    # per-item records saved: one line per text
    unit = toy_run / STEERING_DIR / "lid" / "spa_Latn" / "eng_Latn_L1x1_gated_a8.jsonl"
    assert len(unit.read_text().splitlines()) == 3
    assert (toy_run / STEERING_DIR / VECTORS_FILE.format(layer=1)).exists()
    # the meta names the stage; its figures are the ones the report section looks for, and it shows them all
    meta = json.loads((toy_run / steering.STAGE.meta).read_text())
    assert meta["stage"] == steering.STAGE.name == "steering"
    assert meta["bootstrap"]["seed"] == 0 and meta["bootstrap"]["resampling"].startswith("sentence ids")
    pngs = [Path(f) for f in meta["figures"] if f.endswith(".png")]
    assert sorted(f.name for f in pngs) == se.figure_names()
    section = steering.steering_section(Artifacts(toy_run, pngs[0].parent))
    assert [line for line in section if line.startswith("![")] == [
        f"![{n[:-4]}]({n})" for n in se.figure_names()
    ]
    again = _stage(toy_run, "--methods", "sv,gated,random_gate", "--random-draws", "2")
    assert again["computed"] == 0 and again["cached"] == first["computed"]
    # a new alpha computes only its own units
    more = _stage(toy_run, "--methods", "sv", "--alphas", "2,8,16", "--tasks", "lid")
    assert more["computed"] == 1


def test_stage_refuses_bad_flags_and_stale_nu(toy_run, tmp_path):
    from langsae.cli import run_main

    base = [*TOY, "--out-dir", str(toy_run)]
    for bad in (
        ["--alphas", "two"],
        ["--methods", "sv,nope"],
        ["--n-layers", "5"],
        ["--source", "eng_Latn", "--target", "eng_Latn"],
        ["--tasks", "lid,x"],
        ["--n-texts", "1"],
    ):
        assert run_main(steering.main, [*base, *bad]) == 2, bad
    assert run_main(steering.main, [*TOY, "--out-dir", str(tmp_path / "empty")]) == 2  # no nu results


def test_default_pair_outside_the_languages_is_a_skip_an_explicit_one_an_error():
    """The pipeline's language set may not hold the default pair (toy: spa_Latn -> eng_Latn): the
    stage is then skipped (SkippedTask), while a pair named on the command line must be there."""
    from langsae.config import resolve
    from langsae.errors import SkippedTask, UserError

    def settings(*flags):
        args = steering.parse_args([*TOY, *flags])
        return steering.settings_from(args, resolve(args))

    with pytest.raises(SkippedTask, match="default source and target"):
        settings("--languages", "spa_Latn,por_Latn,glg_Latn")
    with pytest.raises(UserError, match="eng_Latn is not among --languages") as e:
        settings("--languages", "spa_Latn,por_Latn", "--source", "spa_Latn", "--target", "eng_Latn")
    assert not isinstance(e.value, SkippedTask)
    with pytest.raises(UserError, match="glg_Latn has no language names"):
        settings("--languages", "glg_Latn,eng_Latn", "--source", "glg_Latn")
