"""Language steering evaluated (langsae.steer_eval): the success metrics on planted answers, the
degenerate rule, the conditions, the bootstrap estimates against brute force and the best-alpha rule
on constructed records."""

import numpy as np
import pytest

from langsae import steer_eval as se
from langsae.data import PAPER_LANGUAGES
from langsae.steer_eval import SteerCondition


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

    got = identify(
        [
            "The committee approved the new budget for the city's public schools yesterday.",
            "Le comité a approuvé hier le nouveau budget des écoles publiques de la ville.",
        ]
    )
    assert [g == "eng_Latn" for g in got] == [True, False]


def test_degenerate_rule():
    assert se.is_degenerate([], "")
    assert se.is_degenerate([5], "  \n")
    assert se.is_degenerate([7, 7, 7, 3, 4], "x")  # 3 of 5 > half
    assert not se.is_degenerate([7, 7, 3, 4], "x")  # 2 of 4 is not more than half
    assert not se.is_degenerate([9], "word")


def test_conditions_cover_every_cell_once():
    conds = se.conditions_for(
        "spa_Latn", ["eng_Latn", "spa_Latn"], [1, 2], [1, 2], [2.0, 8.0], se.METHODS, random_draws=2
    )
    # target spa_Latn = the source is skipped; per layer x count: sv, gated (2 alphas)
    # + 2 controls x 2 draws x 2 alphas
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
    lid = [
        {"id": i, "success": bool(rng.integers(2)), "target_logprob": float(rng.normal())}
        for i in ids["spa_Latn"]
    ]
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
    return (
        {"lid": lid, "collateral": coll},
        conds,
        {lang: ids for lang in ("spa_Latn", "eng_Latn", "fra_Latn")},
    )


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
    assert next(r for r in rows if r["task"] == "collateral" and r["method"] == se.SV)[
        "value"
    ] == pytest.approx(0.2)
