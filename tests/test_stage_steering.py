"""Language steering evaluated: the success metrics on planted answers, the degenerate rule, the conditions,
the bootstrap estimates against brute force, the best-alpha rule on constructed records, and the stage
on the small toy (resume, stale inputs, bad flags)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from langsae import steer_eval as se
from langsae.data import PAPER_LANGUAGES
from langsae.stages import steering
from langsae.steer_eval import SteerCondition
from langsae.steering import STEERING_DIR, VECTORS_FILE
from langsae.verdicts import Artifacts


def test_every_paper_language_has_names_and_a_language_id_label():
    from langsae import langid

    for lang in PAPER_LANGUAGES:
        assert se.LANGUAGE_NAMES[lang][0].isascii()  # the English name first
        assert langid.covers(lang), lang


@pytest.mark.parametrize(
    "answer, target, named, success",
    [
        (" English.", "eng_Latn", "eng_Latn", True),  # planted success
        (" French.", "eng_Latn", "fra_Latn", False),  # planted failure: names the source
        (" ENGLISH", "eng_Latn", "eng_Latn", True),  # case-insensitive
        (" Español", "spa_Latn", "spa_Latn", True),  # the target's own name
        (" 日本語です", "jpn_Jpan", "jpn_Jpan", True),
        (" ภาษาไทย", "tha_Thai", "tha_Thai", True),
        (" French, not English", "eng_Latn", "fra_Latn", False),  # the first language named counts
        (" a language", "eng_Latn", None, False),
        ("", "eng_Latn", None, False),
    ],
)
def test_lid_success_counts_planted_answers(answer, target, named, success):
    assert se.named_language(answer) == named
    assert (se.named_language(answer) == target) is success


def test_continuation_success_counts_a_planted_success_and_failure():
    from langsae.langid import identify

    got = identify(["The committee approved the new budget for the city's public schools yesterday.",
                    "Le comité a approuvé hier le nouveau budget des écoles publiques de la ville."])  # fmt: skip
    assert [g == "eng_Latn" for g in got] == [True, False]


def test_degenerate_rule():
    assert se.is_degenerate([], "")
    assert se.is_degenerate([5], "  \n")
    assert se.is_degenerate([7, 7, 7, 3, 4], "x")  # 3 of 5 > half
    assert not se.is_degenerate([7, 7, 3, 4], "x")  # 2 of 4 is not more than half
    assert not se.is_degenerate([9], "word")


def test_conditions_cover_every_cell_once():
    conds = se.conditions_for("spa_Latn", ["eng_Latn", "spa_Latn"], [1, 2], [1, 2], [2.0, 8.0], se.METHODS, random_draws=2)
    # target spa_Latn = the source is skipped; per layer x count: sv, gated (2 alphas) + 2 controls x 2 draws x 2 alphas
    assert len(conds) == 1 + 2 * 2 * (2 * 2 + 2 * 2 * 2)
    assert conds[0] == SteerCondition(se.NONE, "spa_Latn", "eng_Latn")
    assert len({c.unit() for c in conds}) == len(conds)


def _ids(n):
    return [f"s{i}" for i in range(n)]


def test_evaluator_matches_brute_force_means():
    """Point estimates are the plain means; the collateral is the mean over languages (target excluded) of the
    paired per-text mean ΔCE; replicate means equal a brute-force loop over the plan's draw counts."""
    rng = np.random.default_rng(0)
    langs = ["spa_Latn", "eng_Latn", "fra_Latn", "jpn_Jpan"]
    ids = {lang: _ids(6) for lang in langs}
    ev = se.Evaluator(ids, seed=3, n_boot=50)
    c = SteerCondition(se.SV, "spa_Latn", "eng_Latn", 1, 1, 2.0)
    lid = [{"id": i, "success": bool(rng.integers(2)), "target_logprob": float(rng.normal())} for i in ids["spa_Latn"]]
    est = ev.metric("lid", "success", lid, None, c)
    assert est.point == pytest.approx(np.mean([r["success"] for r in lid]))
    w = ev.plan.weights(0)
    brute = [sum(w[b, j] * lid[j]["success"] for j in range(6)) / w[b].sum() for b in range(50)]
    np.testing.assert_allclose(est.reps, brute)

    base = [{"lang": lang, "id": i, "ce": float(rng.uniform(2, 4))} for lang in langs[1:] for i in ids[lang]]
    steered = [{**r, "ce": r["ce"] + float(rng.normal(0.3, 0.1))} for r in base]
    coll = ev.metric("collateral", "delta_ce", steered, base, c)
    per_lang = []
    for g, lang in enumerate(langs):
        if lang in ("spa_Latn", "eng_Latn"):  # the source has no records; the target is left out
            continue
        d = [s["ce"] - b["ce"] for s, b in zip(steered, base) if b["lang"] == lang]
        per_lang.append(np.mean(d))
    assert coll.point == pytest.approx(np.mean(per_lang))
    assert coll.reps.shape == (50,)


def _records(success_by_alpha, delta_by_alpha, n=10):
    """Constructed records of one pair: sv at each alpha with the given success rate and collateral ΔCE."""
    ids = _ids(n)
    none = SteerCondition(se.NONE, "spa_Latn", "eng_Latn")
    conds = [none] + [SteerCondition(se.SV, "spa_Latn", "eng_Latn", 1, 1, a) for a in success_by_alpha]
    lid = {none: [{"id": i, "success": False, "target_logprob": -5.0} for i in ids]}
    coll = {none: [{"lang": "fra_Latn", "id": i, "ce": 3.0} for i in ids]}
    for c in conds[1:]:
        k = round(success_by_alpha[c.alpha] * n)
        lid[c] = [{"id": i, "success": j < k, "target_logprob": -1.0} for j, i in enumerate(ids)]
        coll[c] = [{"lang": "fra_Latn", "id": i, "ce": 3.0 + delta_by_alpha[c.alpha]} for i in ids]
    return {"lid": lid, "collateral": coll}, conds, {lang: ids for lang in ("spa_Latn", "eng_Latn", "fra_Latn")}


def test_best_alpha_is_the_most_successful_within_the_budget():
    # alpha 8 succeeds most but costs 2 nats; 4 is the best within a 0.5 budget
    records, conds, ids = _records({1.0: 0.2, 4.0: 1.0, 8.0: 1.0}, {1.0: 0.1, 4.0: 0.4, 8.0: 2.0})
    (entry,) = se.best_alpha(records, conds, ids, budget=0.5, seed=0, n_boot=100)
    assert entry["best_alpha"] == 4.0 and entry["n_alphas_within_budget"] == 2
    assert entry["success"][0] == 1.0 and entry["collateral_delta_ce"][0] == pytest.approx(0.4)
    assert entry["baseline_success"][0] == 0.0
    (none_fit,) = se.best_alpha(records, conds, ids, budget=0.05, seed=0, n_boot=100)
    assert none_fit["best_alpha"] is None and none_fit["success"] is None


def test_results_rows_have_the_schema_and_a_mean_over_draws(tmp_path):
    records, conds, ids = _records({2.0: 0.5}, {2.0: 0.2})
    rows = se.results_rows(records, conds, se.Evaluator(ids, 0, 100), 0)
    assert all(list(r) == se.RESULTS_COLUMNS for r in rows)
    sv = [r for r in rows if r["task"] == "lid" and r["method"] == se.SV]
    assert [(r["metric"], r["value"]) for r in sv if r["metric"] == "success"] == [("success", 0.5)]
    assert next(r for r in rows if r["task"] == "collateral" and r["method"] == se.SV)["value"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- the stage on the small toy

TOY = ["--model", "toy"]


@pytest.fixture(scope="module")
def toy_run(small_toy, tmp_path_factory):
    from helpers import run_nu

    out = tmp_path_factory.mktemp("toy_steering")
    assert run_nu(TOY, out) == 0
    return out


def _stage(out, *flags):
    return steering.main([*TOY, "--out-dir", str(out), "--n-texts", "3", "--max-new-tokens", "4", "--lid-max-new-tokens", "3", *flags])


def test_stage_on_toy_writes_tidy_results_and_resumes(toy_run):
    first = _stage(toy_run, "--methods", "sv,gated,random_gate", "--random-draws", "2")
    n_conditions = 1 + 2 * 2 + 1 * 2 * 2  # none; sv, gated x 2 alphas; random_gate x 2 draws x 2 alphas
    # 3 tasks x conditions, plus the steering vectors of layer 1
    assert first == {"computed": 3 * n_conditions + 1, "cached": 0, "unit": "(task, source, condition) or a layer's steering vectors"}
    with open(toy_run / se.RESULTS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == se.RESULTS_COLUMNS
    assert {r["task"] for r in rows} == set(se.TASKS)
    rg = [r for r in rows if r["method"] == "random_gate" and r["task"] == "lid" and r["metric"] == "success" and float(r["alpha"]) == 8]
    assert sorted(r["draw"] for r in rg) == ["", "0", "1"]  # per draw and the mean over draws
    summary = json.loads((toy_run / se.SUMMARY_FILE).read_text())
    assert {(e["task"], e["method"]) for e in summary["entries"]} == {(t, m) for t in ("lid", "continuation") for m in ("sv", "gated", "random_gate")}
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
    assert [line for line in section if line.startswith("![")] == [f"![{n[:-4]}]({n})" for n in se.figure_names()]
    again = _stage(toy_run, "--methods", "sv,gated,random_gate", "--random-draws", "2")
    assert again["computed"] == 0 and again["cached"] == first["computed"]
    # a new alpha computes only its own units
    more = _stage(toy_run, "--methods", "sv", "--alphas", "2,8,16", "--tasks", "lid")
    assert more["computed"] == 1


def test_stage_refuses_bad_flags_and_stale_nu(toy_run, tmp_path):
    from langsae.cli import run_main

    base = [*TOY, "--out-dir", str(toy_run)]
    for bad in (["--alphas", "two"], ["--methods", "sv,nope"], ["--n-layers", "5"], ["--source", "eng_Latn", "--target", "eng_Latn"],
                ["--tasks", "lid,x"], ["--n-texts", "1"]):  # fmt: skip
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
