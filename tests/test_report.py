"""The report's verdict rule on constructed evidence, its claims from constructed artifacts, and the README
block."""

import math

import pytest

from langsae import report
from langsae import verdicts as v
from langsae.artifacts import save_csv, save_json
from langsae.data import PAPER_LANGUAGES
from langsae.nu import META_FILE as NU_META
from langsae.stages import cluster_synergy as cluster_synergy_stage
from langsae.stages import code_switching as code_switching_stage
from langsae.stages import downstream as downstream_stage
from langsae.stages import interactions as interactions_stage
from langsae.stages import section5 as section5_stage
from langsae.stages import steering as steering_stage
from langsae.steer_eval import SUCCESS_FIGURE as STEER_SUCCESS
from langsae.steer_eval import SUMMARY_FILE as STEER_SUMMARY
from langsae.verdicts import (
    INCONCLUSIVE,
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    Interval,
    combine,
    frequency_verdict,
    interval_verdict,
)

NAN = Interval(math.nan, math.nan, math.nan)


@pytest.mark.parametrize(
    "effect, control, direction, expected",
    [
        (Interval(0.5, 0.3, 0.7), None, 1, SUPPORTED),  # excludes zero, right direction
        (Interval(0.5, 0.3, 0.7), Interval(0.1, 0.0, 0.2), 1, SUPPORTED),  # and beyond the control
        (Interval(0.5, 0.3, 0.7), Interval(0.4, 0.2, 0.5), 1, INCONCLUSIVE),  # overlaps the control
        (Interval(0.1, -0.1, 0.3), None, 1, INCONCLUSIVE),  # includes zero
        (Interval(-0.5, -0.7, -0.3), None, 1, NOT_SUPPORTED),  # wrong side of zero
        (
            Interval(0.2, 0.1, 0.3),
            Interval(0.8, 0.6, 1.0),
            1,
            NOT_SUPPORTED,
        ),  # below the control: less than random
        (Interval(-0.5, -0.7, -0.3), None, -1, SUPPORTED),  # a claimed decrease
        (Interval(-0.5, -0.7, -0.3), Interval(-0.1, -0.2, 0.0), -1, SUPPORTED),
        (Interval(0.5, 0.3, 0.7), None, -1, NOT_SUPPORTED),
        (NAN, None, 1, INCONCLUSIVE),
        (Interval(0.5, 0.3, 0.7), NAN, 1, INCONCLUSIVE),
    ],
)
def test_interval_verdict(effect, control, direction, expected):
    assert interval_verdict(effect, control, direction) == expected


@pytest.mark.parametrize(
    "share, expected",
    [
        (1.0, SUPPORTED),
        (0.95, SUPPORTED),
        (0.94, INCONCLUSIVE),
        (0.5, INCONCLUSIVE),
        (0.05, NOT_SUPPORTED),
        (0.0, NOT_SUPPORTED),
        (math.nan, INCONCLUSIVE),
    ],
)
def test_frequency_verdict(share, expected):
    assert frequency_verdict(share) == expected


S, N, I = SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE


@pytest.mark.parametrize(
    "verdicts, how, expected",
    [
        ([S, S, S], "every", S),
        ([S, S, I], "every", I),
        ([S, S, N], "every", N),
        ([S, S, I], "most", S),
        ([S, I, I], "most", I),
        ([S, N, N], "most", N),
        ([S, S, N, N], "most", N),
        ([N, N, S], "some", S),
        ([N, N, I], "some", I),
        ([N, N, N], "some", N),
        ([], "some", I),
    ],
)
def test_combine(verdicts, how, expected):
    assert combine(verdicts, how) == expected


def summary_row(lang, peak, shares, self_, others_diff, random, synergy, other_feats, shared=""):
    """One section5_summary.csv row (the columns the claims read), intervals as (value, low, high)."""
    row = {
        "language": lang,
        "peak_layer": peak,
        "peak_frequency": ";".join(f"{L}:{s}" for L, s in shares.items()),
        "modal_peak_share": max(shares.values()),
        "shared_with": shared,
    }
    for name, ci, val in (
        ("self_delta_ce", "self", self_),
        ("specificity_diff", "specificity_diff", others_diff),
        ("random_delta_ce", "random", random),
        ("synergy", "synergy", synergy),
        ("other_lang_features_delta_ce", "other_lang_features", other_feats),
    ):
        row.update({name: val[0], f"{ci}_ci_low": val[1], f"{ci}_ci_high": val[2]})
    return row


@pytest.fixture
def run(tmp_path):
    fdir, odir = tmp_path / "features", tmp_path / "output"
    rows = [
        # peaks at 10 in every resample; specific and beyond random; synergy > 0
        summary_row(
            "eng_Latn",
            10,
            {10: 1.0},
            (0.8, 0.7, 0.9),
            (0.5, 0.4, 0.6),
            (0.02, 0.0, 0.05),
            (0.1, 0.05, 0.15),
            (0.2, 0.1, 0.3),
        ),
        # peaks at 10 in 97%; specific; synergy < 0
        summary_row(
            "spa_Latn",
            10,
            {10: 0.97, 9: 0.03},
            (0.6, 0.5, 0.7),
            (0.3, 0.2, 0.4),
            (0.02, 0.0, 0.05),
            (-0.2, -0.3, -0.1),
            (0.2, 0.1, 0.3),
        ),
        # Korean peaks at 0 always; self within random: no evidence that it is specific
        summary_row(
            "kor_Hang",
            0,
            {0: 1.0},
            (0.1, 0.0, 0.2),
            (0.05, -0.05, 0.15),
            (0.1, 0.0, 0.3),
            (0.0, -0.1, 0.1),
            (0.3, 0.2, 0.4),
        ),
        # Thai peaks at 0 in 60%: inconclusive
        summary_row(
            "tha_Thai",
            0,
            {0: 0.6, 10: 0.4},
            (0.9, 0.8, 1.0),
            (0.7, 0.6, 0.8),
            (0.02, 0.0, 0.05),
            (0.0, -0.1, 0.1),
            (0.2, 0.1, 0.3),
        ),
    ]
    save_csv(rows, fdir / "section5_summary.csv")
    save_json(
        {
            "layers": [0, 9, 10],
            "top_k": 2,
            "mode": "directional",
            "n_texts_per_lang": 40,
            "peak_rule": "rule",
            "bootstrap": {"n_boot": 2000, "resampling": "ids"},
            "config": {"preset": "toy"},
        },
        fdir / "section5_meta.json",
    )
    return v.Artifacts(fdir, odir)


def test_claims_from_constructed_summary(run):
    # at layer 10: eng 1.0 and spa 0.97 supported, kor 0.0 not, tha 0.4 inconclusive: 2 of 4 is not "most"
    assert section5_stage.layer10_dominant(run).verdict == INCONCLUSIVE
    kt = section5_stage.korean_thai_layer0(run)
    assert kt.verdict == INCONCLUSIVE and "kor 1.00, tha 0.60" in kt.numbers
    hurt = section5_stage.hurts_mainly_target(run)
    assert hurt.verdict == SUPPORTED and hurt.numbers.startswith("3/4 languages supported")
    syn = section5_stage.some_synergy(run)
    assert syn.verdict == SUPPORTED and "synergy > 0 in 1/4, < 0 (sub-additive) in 1" in syn.numbers
    own = section5_stage.own_features_beat_others(run)
    assert own.verdict == SUPPORTED and own.numbers.startswith(
        "3/4"
    )  # kor: 0.1 [0, 0.2] vs 0.3 [0.2, 0.4] inconclusive


def test_layer_not_measured_is_inconclusive(run, tmp_path):
    meta = run.json("section5_meta.json")
    save_json({**meta, "layers": [0, 9]}, run.features_dir / "section5_meta.json")
    ev = section5_stage.layer10_dominant(run)
    assert ev.verdict == INCONCLUSIVE and ev.numbers.startswith("layer 10 not measured")


def test_not_run_rows_and_the_document(run):
    text = report.build_report(run.features_dir, run.output_dir, "toy")
    assert "**Toy run.**" in text and report.VERDICT_RULE in text
    verdicts = report.verdicts_in(text)
    assert len(verdicts) == len(report.claims())
    assert all(v in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN) for v in verdicts)
    by_stage = dict(zip([stage for stage, _ in report.claims()], verdicts))
    assert by_stage["downstream"] == NOT_RUN and by_stage["nu"] == NOT_RUN  # no meta.json here
    assert "Not run (`python check_data.py`)" in text


def test_a_skipped_stage_says_so(run):
    save_json(
        {"stages": [{"stage": "downstream", "status": "skipped", "wall_s": 1.0}]},
        run.features_dir / "pipeline_timings.json",
    )
    claims = {stage: c for stage, c in report.claims()}
    ev, verdict = report.claim_row(claims["downstream"], "downstream", run)
    assert verdict == NOT_RUN and ev.numbers == "stage downstream was skipped"
    assert "Stage skipped (`python downstream_ablation.py`)" in report.build_report(
        run.features_dir, run.output_dir, "toy"
    )


LANGS = ["eng_Latn", "spa_Latn", "fra_Latn", "por_Latn", "vie_Latn", "tha_Thai", "kor_Hang", "arb_Arab"]


def clusters_file(run, co_vie, co_arb):
    """interaction_clusters.json with vie's co-clustering shares with en/es/fr/pt and th/ko, and arb's with
    everyone."""
    idx = {lang: k for k, lang in enumerate(LANGS)}
    co = [[1.0 if i == j else 0.0 for j in range(len(LANGS))] for i in range(len(LANGS))]
    for other, share in {**co_vie}.items():
        co[idx["vie_Latn"]][idx[other]] = co[idx[other]][idx["vie_Latn"]] = share
    for other, share in co_arb.items():
        co[idx["arb_Arab"]][idx[other]] = co[idx[other]][idx["arb_Arab"]] = share
    labels = {
        lang: (2 if lang == "arb_Arab" else 1 if lang in ("tha_Thai", "kor_Hang") else 0) for lang in LANGS
    }
    save_json(
        {
            "languages": LANGS,
            "co_clustering": co,
            "labels": labels,
            "ari": {"n_resamples": 200, "mean": 0.8, "q05": 0.5, "q95": 1.0},
            "settings": {"k": 3},
        },
        run.features_dir / "interaction_clusters.json",
    )


def test_cluster_claims_pair_by_pair(run):
    assert (
        interactions_stage.vietnamese_clusters(run) is None
        and interactions_stage.arabic_isolated(run) is None
    )
    clusters_file(
        run, {"eng_Latn": 0.99, "spa_Latn": 0.97, "fra_Latn": 0.96, "por_Latn": 0.95, "tha_Thai": 0.01}, {}
    )
    vie = interactions_stage.vietnamese_clusters(run)
    assert (
        vie.verdict == SUPPORTED
        and "eng 0.99, spa 0.97, fra 0.96, por 0.95" in vie.numbers
        and "tha 0.01, kor 0.00" in vie.control
    )
    assert interactions_stage.arabic_isolated(run).verdict == SUPPORTED  # never with anyone
    clusters_file(
        run, {"eng_Latn": 0.99, "spa_Latn": 0.97, "fra_Latn": 0.5, "por_Latn": 0.95}, {"kor_Hang": 0.5}
    )
    assert (
        interactions_stage.vietnamese_clusters(run).verdict == INCONCLUSIVE
        and interactions_stage.arabic_isolated(run).verdict == INCONCLUSIVE
    )
    clusters_file(
        run, {"eng_Latn": 0.99, "spa_Latn": 0.97, "fra_Latn": 0.02, "por_Latn": 0.95}, {"kor_Hang": 0.99}
    )
    assert (
        interactions_stage.vietnamese_clusters(run).verdict == NOT_SUPPORTED
        and interactions_stage.arabic_isolated(run).verdict == NOT_SUPPORTED
    )


def synergy_summary(run, intra, inter, n_intra=6, p=0.01):
    def part(v):
        return {"value": v[0], "ci_low": v[1], "ci_high": v[2], "n_pairs": n_intra}

    block = {
        "intra": part(intra),
        "inter": part(inter),
        "difference": part((intra[0] - inter[0], intra[1] - inter[2], intra[2] - inter[1])),
        "permutation_p": p,
        "n_permutations": 10000,
        "regression": {"slope": -0.5, "intercept": 0.0, "r": -0.7, "p": 0.001, "n": 20},
    }
    degenerate = {
        **block,
        "intra": part((-0.9, -1.0, -0.8)),
    }  # with the shared-feature pairs: sub-additive by construction
    save_json(
        {
            "layers": {
                "all_layers": {
                    "without_degenerate": block,
                    "with_degenerate": degenerate,
                    "n_same_feature": 2,
                    "n_overlapping": 1,
                }
            }
        },
        run.features_dir / "cluster_synergy_summary.json",
    )


@pytest.mark.parametrize(
    "intra, inter, n_intra, p, expected",
    [
        ((-0.3, -0.4, -0.2), (-0.05, -0.1, 0.0), 6, 0.01, SUPPORTED),  # below zero and below the inter pairs
        (
            (-0.3, -0.4, -0.2),
            (-0.05, -0.1, 0.0),
            6,
            0.4,
            INCONCLUSIVE,
        ),  # but as likely under permuted cluster labels
        (
            (-0.3, -0.4, -0.2),
            (-0.3, -0.35, -0.25),
            6,
            0.01,
            INCONCLUSIVE,
        ),  # sub-additive, but no more than inter pairs
        ((0.1, 0.05, 0.15), (-0.05, -0.1, 0.0), 6, 0.01, NOT_SUPPORTED),  # super-additive
        ((-0.3, -0.4, -0.2), (-0.05, -0.1, 0.0), 0, 0.01, INCONCLUSIVE),  # every intra pair is degenerate
    ],
)
def test_intra_cluster_claim_leaves_degenerate_pairs_out(run, intra, inter, n_intra, p, expected):
    synergy_summary(run, intra, inter, n_intra, p)
    ev = cluster_synergy_stage.intra_subadditive(run)
    assert ev.verdict == expected and "with them: -0.900" in ev.numbers


def task_entry(task, lang, baseline, own, random, layer=10):
    """A downstream_summary.json entry of a primary metric; own − random from the point values (CI ± 0.02)."""
    metric, scoring = {
        "qa": ("f1", "generate"),
        "topic": ("accuracy", "loglik"),
        "sentiment": ("accuracy", "generate"),
    }[task]
    diff = own[0] - random[0]
    return {
        "task": task,
        "lang": lang,
        "layer": layer,
        "metric": metric,
        "scoring": scoring,
        "baseline": list(baseline),
        "own_delta": list(own),
        "random_delta": list(random),
        "own_minus_random": [diff, diff - 0.02, diff + 0.02],
        "cross_lang": "cmn_Hans",
        "cross_delta": [0, 0, 0],
        "own_drop_exceeds_random": diff + 0.02 < 0,
    }


@pytest.mark.parametrize(
    "baseline, own, random, collapse, robust",
    [
        (
            (0.6, 0.55, 0.65),
            (-0.5, -0.55, -0.45),
            (-0.01, -0.02, 0.0),
            SUPPORTED,
            NOT_SUPPORTED,
        ),  # loses 83% of the margin
        (
            (0.6, 0.55, 0.65),
            (-0.1, -0.12, -0.08),
            (-0.01, -0.02, 0.0),
            NOT_SUPPORTED,
            NOT_SUPPORTED,
        ),  # hurts, no collapse
        (
            (0.6, 0.55, 0.65),
            (-0.3, -0.5, -0.1),
            (-0.01, -0.02, 0.0),
            INCONCLUSIVE,
            NOT_SUPPORTED,
        ),  # CI spans half the margin
        (
            (0.6, 0.55, 0.65),
            (-0.01, -0.03, 0.01),
            (-0.01, -0.02, 0.0),
            NOT_SUPPORTED,
            SUPPORTED,
        ),  # like random: robust
        (
            (0.02, 0.0, 0.04),
            (-0.02, -0.04, 0.0),
            (0.0, -0.01, 0.01),
            INCONCLUSIVE,
            INCONCLUSIVE,
        ),  # F1 at the floor
    ],
)
def test_task_claims_need_a_margin_over_chance(run, baseline, own, random, collapse, robust):
    entries = [task_entry("qa", lang, baseline, own, random) for lang in ("eng_Latn", "arb_Arab")]
    save_json(
        {"mode": "directional", "rule": "r", "entries": entries}, run.features_dir / "downstream_summary.json"
    )
    assert (
        downstream_stage.collapse(run).verdict == collapse
        and downstream_stage.arabic_robust(run).verdict == robust
    )


def test_task_claims_at_chance_for_classification_and_another_layer(run):
    # topic accuracy 0.15 with a CI reaching 1/7 is at chance; the toy's layer 3 is reported as such
    entries = [
        task_entry("topic", "eng_Latn", (0.15, 0.12, 0.18), (-0.1, -0.12, -0.08), (0.0, -0.01, 0.01), layer=3)
    ]
    save_json(
        {"mode": "directional", "rule": "r", "entries": entries}, run.features_dir / "downstream_summary.json"
    )
    ev = downstream_stage.collapse(run)
    assert (
        ev.verdict == INCONCLUSIVE
        and ev.numbers.startswith("layer 10 not run; at layer 3")
        and "at chance" in ev.numbers
    )
    assert downstream_stage.arabic_robust(run).numbers.endswith("no Arabic task results")


def test_collapse_is_judged_on_the_task_languages_above_chance(run):
    # two QA task-languages at the floor and one topic task-language that the ablation does not hurt:
    # counted over all three, one "not supported" is not "most"; over the one above chance it is
    floor = [
        task_entry("qa", lang, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
        for lang in ("eng_Latn", "spa_Latn")
    ]
    unhurt = task_entry("topic", "eng_Latn", (0.5, 0.45, 0.55), (-0.01, -0.03, 0.01), (-0.01, -0.02, 0.0))
    save_json(
        {"mode": "directional", "rule": "r", "entries": [*floor, unhurt]},
        run.features_dir / "downstream_summary.json",
    )
    ev = downstream_stage.collapse(run)
    assert (
        ev.verdict == NOT_SUPPORTED and "0/1 task-languages above chance collapse (2 at chance)" in ev.numbers
    )


def test_arabic_robustness_is_judged_on_the_tasks_above_chance(run):
    at_chance = task_entry("qa", "arb_Arab", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    robust = task_entry("topic", "arb_Arab", (0.5, 0.45, 0.55), (-0.01, -0.03, 0.01), (-0.01, -0.02, 0.0))
    hurt = task_entry("topic", "arb_Arab", (0.5, 0.45, 0.55), (-0.1, -0.12, -0.08), (-0.01, -0.02, 0.0))
    for entries, verdict in (([at_chance, robust], SUPPORTED), ([at_chance, hurt], NOT_SUPPORTED)):
        save_json(
            {"mode": "directional", "rule": "r", "entries": entries},
            run.features_dir / "downstream_summary.json",
        )
        ev = downstream_stage.arabic_robust(run)
        assert ev.verdict == verdict and "baseline at chance: qa" in ev.control


def test_code_switching_claim(run):
    rows = [
        {
            "layer": L,
            "measure": "prefix_feature",
            "kind": "contrast",
            "case": "context_on_foreign_nouns",
            "language": lang,
            "feature": 1,
            "value": v,
            "ci_low": v - 0.1,
            "ci_high": v + 0.1,
            "n_items": 8,
        }
        for L, vals in ((0, (0.05, 0.0, 0.02)), (1, (0.5, 0.3, -0.2)))
        for lang, v in zip(("eng_Latn", "spa_Latn", "mean"), vals)
    ]
    save_csv(rows, run.features_dir / "code_switching_results.csv")
    (run.features_dir / "section5_summary.csv").unlink()  # no Section 5: the layer of the largest mean effect
    save_json(
        {"heatmap_layer": 1, "heatmap_layer_rule": "largest"}, run.features_dir / "code_switching_meta.json"
    )
    ev = code_switching_stage.code_switching_claim(run)
    assert ev.verdict == SUPPORTED and ev.numbers.startswith("layer 1 (largest mean effect, chosen on these")
    assert "2/2 above 0: eng +0.500 [+0.400, +0.600]; spa +0.300 [+0.200, +0.400]" in ev.numbers  # > 0.1
    save_json(
        {"heatmap_layer": 0, "heatmap_layer_rule": "largest"}, run.features_dir / "code_switching_meta.json"
    )
    assert code_switching_stage.code_switching_claim(run).verdict == INCONCLUSIVE  # 0.05 and 0.0 ± 0.1
    # with Section 5, the layer of most held-out peaks (1 here), whatever the largest effect's layer
    peak1 = [
        summary_row(lang, 1, {1: 1.0}, *[(0.5, 0.4, 0.6)] * 5)
        for lang in ("eng_Latn", "spa_Latn", "fra_Latn")
    ]
    save_csv(
        [*peak1, summary_row("kor_Hang", 0, {0: 1.0}, *[(0.5, 0.4, 0.6)] * 5)],
        run.features_dir / "section5_summary.csv",
    )
    ev = code_switching_stage.code_switching_claim(run)
    assert ev.verdict == SUPPORTED and ev.numbers.startswith("layer 1 (most common held-out peak;")


def test_gated_steering_must_beat_every_control(run):
    def entry(method, success, baseline=(0.0, 0.0, 0.05)):
        return {
            "task": "lid",
            "source": "spa_Latn",
            "target": "eng_Latn",
            "layer": 10,
            "n_layers": 1,
            "method": method,
            "best_alpha": 4.0,
            "success": list(success),
            "collateral_delta_ce": [0.1, 0.05, 0.15],
            "baseline_success": list(baseline),
        }

    save_json(
        {"budget": 0.25, "entries": [entry("gated", (0.8, 0.7, 0.9)), entry("random_gate", (0.2, 0.1, 0.3))]},
        run.features_dir / STEER_SUMMARY,
    )
    assert steering_stage.gated_steering(run).verdict == SUPPORTED
    save_json(
        {"budget": 0.25, "entries": [entry("gated", (0.8, 0.7, 0.9)), entry("random_dir", (0.8, 0.7, 0.95))]},
        run.features_dir / STEER_SUMMARY,
    )
    assert steering_stage.gated_steering(run).verdict == INCONCLUSIVE  # a random direction does as well
    save_json(
        {"budget": 0.25, "entries": [entry("gated", (0.0, 0.0, 0.0), baseline=(0.3, 0.2, 0.4))]},
        run.features_dir / STEER_SUMMARY,
    )
    assert steering_stage.gated_steering(run).verdict == NOT_SUPPORTED  # worse than no steering


def test_readme_block_replaces_only_the_marked_text(run, tmp_path):
    path = report.write_report(run.features_dir, run.output_dir, "toy")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nhand-written\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    report.update_readme(readme, path, "output/toy/REPORT.md")
    text = readme.read_text()
    assert (
        text.startswith("# Title\n\nhand-written\n")
        and text.endswith(f"{report.README_END}\nafter\n")
        and "\nold\n" not in text
    )
    assert "| 1 | Layer 10 is the dominant" in text and "[output/toy/REPORT.md](output/toy/REPORT.md)" in text
    report.update_readme(readme, path, "output/toy/REPORT.md")  # idempotent
    assert readme.read_text() == text


# ----------------------------------------------------------------------------- a whole run of ten languages

TEN = list(PAPER_LANGUAGES)  # eng spa fra jpn kor por tha vie cmn arb


def _iv3(rng, scale=1.0):
    v = round(float(rng.uniform(-scale, scale)), 3)
    w = round(float(rng.uniform(0.01, 0.1)), 3)
    return (v, round(v - w, 3), round(v + w, 3))


@pytest.fixture
def full_run(tmp_path):
    """Every stage's summary for the paper's ten languages over 28 layers, with varied numbers:
    the size of report a real run writes."""
    import numpy as np

    rng = np.random.default_rng(0)
    fdir, odir = tmp_path / "features", tmp_path / "output"
    peaks = [10, 10, 3, 0, 0, 10, 1, 27, 10, 3]
    rows = [
        summary_row(
            lang,
            p,
            {p: 0.8, 9: 0.15, 27: 0.05},
            *(_iv3(rng) for _ in range(5)),
            shared="eng_Latn" if k == 1 else "",
        )
        for k, (lang, p) in enumerate(zip(TEN, peaks))
    ]
    save_csv(rows, fdir / "section5_summary.csv")
    layers = list(range(28))
    save_json(
        {
            "layers": layers,
            "top_k": 2,
            "mode": "directional",
            "n_texts_per_lang": 500,
            "peak_rule": "rule",
            "bootstrap": {"n_boot": 2000, "resampling": "ids"},
            "config": {"preset": "qwen3-0.6b"},
        },
        fdir / "section5_meta.json",
    )
    excl = {str(L): {lang: bool(rng.random() < 0.7) for lang in TEN} for L in layers}
    save_json(
        {
            "layers": layers,
            "d_sae": 163840,
            "position_0": "excluded",
            "languages": TEN,
            "exclusive_top1": excl,
            "shared_top5": {str(L): {lang: int(rng.integers(0, 4)) for lang in TEN} for L in layers},
            "config": {},
        },
        fdir / NU_META,
    )
    co = rng.uniform(0, 1, (10, 10)).round(2)
    co = ((co + co.T) / 2).round(2)
    np.fill_diagonal(co, 1.0)
    save_json(
        {
            "languages": TEN,
            "co_clustering": co.tolist(),
            "labels": {lang: k % 4 for k, lang in enumerate(TEN)},
            "ari": {"n_resamples": 200, "mean": 0.6, "q05": 0.3, "q95": 0.9},
            "silhouette": {"2": 0.3, "3": 0.4, "4": 0.35},
            "settings": {
                "k": 4,
                "features": "top-1",
                "layers": layers,
                "aggregate": "mean",
                "mode": "directional",
                "n_texts": 500,
            },
            "distance_kind": "euclidean",
            "negative_eigen_mass": 0.01,
            "stress": 0.1,
        },
        fdir / "interaction_clusters.json",
    )
    run = v.Artifacts(fdir, odir)
    synergy_summary(run, (-0.3, -0.4, -0.2), (-0.05, -0.1, 0.0))
    entries = [
        task_entry(task, lang, (0.6, 0.5, 0.7), _iv3(rng, 0.5), _iv3(rng, 0.05))
        for task in ("qa", "sentiment", "topic")
        for lang in TEN
    ]
    save_json({"mode": "directional", "rule": "r", "entries": entries}, fdir / "downstream_summary.json")
    cs = [
        {
            "layer": L,
            "measure": "prefix_feature",
            "kind": "contrast",
            "case": case,
            "language": lang,
            "feature": 1,
            "value": v[0],
            "ci_low": v[1],
            "ci_high": v[2],
            "n_items": 72,
        }
        for L in layers
        for case in ("context_on_foreign_nouns", "same_minus_other_after_prefix")
        for lang in [*TEN, "mean"]
        for v in [_iv3(rng)]
    ]
    save_csv(cs, fdir / "code_switching_results.csv")
    save_json({"heatmap_layer": 10, "heatmap_layer_rule": "largest"}, fdir / "code_switching_meta.json")
    steer = [
        {
            "task": task,
            "source": src,
            "target": "eng_Latn",
            "layer": L,
            "n_layers": n,
            "method": method,
            "best_alpha": 4.0,
            "success": list(_iv3(rng)),
            "collateral_delta_ce": list(_iv3(rng)),
            "baseline_success": [0.0, 0.0, 0.05],
        }
        for task in ("lid", "continuation")
        for src in TEN[1:]
        for L in (5, 10, 15)
        for n in (1, 3)
        for method in ("gated", "plain", "random_dir", "random_gate")
    ]
    save_json({"rule": "best alpha", "budget": 0.25, "entries": steer}, fdir / STEER_SUMMARY)
    for name in (
        "figure5.png",
        "figure6.png",
        "features/topk_overlap.png",
        "interaction_mds.png",
        "synergy_vs_cosine.png",
        "downstream_qa_L10.png",
        "code_switching_prefix_feature.png",
        f"{STEER_SUCCESS.format(task='lid')}.png",
    ):
        (odir / name).parent.mkdir(parents=True, exist_ok=True)
        (odir / name).write_bytes(b"")  # the claims link them: their rows as long as a real run's
    return run


def test_claims_rows_are_one_line_summaries_and_the_sections_keep_the_detail(full_run):
    text = report.build_report(full_run.features_dir, full_run.output_dir, "qwen3-0.6b")
    claims = text.split("\n## Claims\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        line for line in claims.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    assert len(rows) == len(report.claims()) and v.NOT_RUN not in report.verdicts_in(text)
    too_long = {row.split("|")[1].strip(): row for row in rows if len(row) > 400}
    assert not too_long, too_long
    sections = text.split("\n## Claims\n", 1)[1].split("\n## ", 1)[1]
    s5 = full_run.csv("section5_summary.csv")
    for r in s5:  # every language's intervals of claims 3-5 and its resample shares of claims 1-2
        for key, ci in (
            ("specificity_diff", None),
            ("self_delta_ce", "self"),
            ("synergy", None),
            ("other_lang_features_delta_ce", "other_lang_features"),
        ):
            assert str(v.interval_of(r, key, ci)) in sections
    assert "10 0.80, 9 0.15, 27 0.05" in sections
    c = full_run.json("interaction_clusters.json")
    for j, lang in enumerate(TEN):  # claims 7-8: each pair's share of resamples
        assert (
            f"| {v.short(lang)} | " + " | ".join(f"{x:.2f}" for x in c["co_clustering"][j]) + " |" in sections
        )
    chance = {"qa": 0.0, "sentiment": 1 / 5, "topic": 1 / 7}  # F1 0; 5 star ratings; 7 SIB-200 topics
    for e in full_run.json("downstream_summary.json")["entries"]:  # claims 10-11
        base, margin = e["baseline"][0], e["baseline"][0] - chance[e["task"]]
        metric = f"{e['metric']}/{e['scoring']}"
        cells = [e["task"], metric, e["lang"][:3], "10", f"{base:.3f}", f"{margin:.3f}"]
        row = "| " + " | ".join([*cells, str(v.ivl(e["own_delta"]))]) + " |"
        assert row in sections
    for r in full_run.csv("code_switching_results.csv"):  # claim 12: each language at each layer
        if r["case"] == "context_on_foreign_nouns" and r["language"] != "mean":
            assert str(v.value_ci(r)) in sections
    for e in full_run.json(STEER_SUMMARY)["entries"]:  # claim 13
        assert str(v.ivl(e["success"])) in sections
