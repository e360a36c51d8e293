"""The report's verdict rule on constructed evidence, its claims from constructed artifacts, and the README block."""

import math

import pytest

from langsae import report
from langsae.artifacts import save_csv, save_json
from langsae.report import INCONCLUSIVE, NOT_RUN, NOT_SUPPORTED, SUPPORTED, Interval, combine, frequency_verdict, interval_verdict

NAN = Interval(math.nan, math.nan, math.nan)


@pytest.mark.parametrize(
    "effect, control, direction, expected",
    [
        (Interval(0.5, 0.3, 0.7), None, 1, SUPPORTED),  # excludes zero, right direction
        (Interval(0.5, 0.3, 0.7), Interval(0.1, 0.0, 0.2), 1, SUPPORTED),  # and beyond the control
        (Interval(0.5, 0.3, 0.7), Interval(0.4, 0.2, 0.5), 1, INCONCLUSIVE),  # overlaps the control
        (Interval(0.1, -0.1, 0.3), None, 1, INCONCLUSIVE),  # includes zero
        (Interval(-0.5, -0.7, -0.3), None, 1, NOT_SUPPORTED),  # wrong side of zero
        (Interval(0.2, 0.1, 0.3), Interval(0.8, 0.6, 1.0), 1, NOT_SUPPORTED),  # below the control: less than random
        (Interval(-0.5, -0.7, -0.3), None, -1, SUPPORTED),  # a claimed decrease
        (Interval(-0.5, -0.7, -0.3), Interval(-0.1, -0.2, 0.0), -1, SUPPORTED),
        (Interval(0.5, 0.3, 0.7), None, -1, NOT_SUPPORTED),
        (NAN, None, 1, INCONCLUSIVE),
        (Interval(0.5, 0.3, 0.7), NAN, 1, INCONCLUSIVE),
    ],
)
def test_interval_verdict(effect, control, direction, expected):
    assert interval_verdict(effect, control, direction) == expected


@pytest.mark.parametrize("share, expected", [(1.0, SUPPORTED), (0.95, SUPPORTED), (0.94, INCONCLUSIVE), (0.5, INCONCLUSIVE), (0.05, NOT_SUPPORTED), (0.0, NOT_SUPPORTED), (math.nan, INCONCLUSIVE)])
def test_frequency_verdict(share, expected):
    assert frequency_verdict(share) == expected


S, N, I = SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE


@pytest.mark.parametrize(
    "verdicts, how, expected",
    [
        ([S, S, S], "every", S), ([S, S, I], "every", I), ([S, S, N], "every", N),
        ([S, S, I], "most", S), ([S, I, I], "most", I), ([S, N, N], "most", N), ([S, S, N, N], "most", N),
        ([N, N, S], "some", S), ([N, N, I], "some", I), ([N, N, N], "some", N), ([], "some", I),
    ],
)  # fmt: skip
def test_combine(verdicts, how, expected):
    assert combine(verdicts, how) == expected


def summary_row(lang, peak, shares, self_, others_diff, random, synergy, other_feats, shared=""):
    """One section5_summary.csv row (the columns the claims read), intervals as (value, low, high)."""
    row = {"language": lang, "peak_layer": peak, "peak_frequency": ";".join(f"{L}:{s}" for L, s in shares.items()),
           "modal_peak_share": max(shares.values()), "shared_with": shared}  # fmt: skip
    for name, ci, v in (("self_delta_ce", "self", self_), ("specificity_diff", "specificity_diff", others_diff), ("random_delta_ce", "random", random),
                        ("synergy", "synergy", synergy), ("other_lang_features_delta_ce", "other_lang_features", other_feats)):  # fmt: skip
        row.update({name: v[0], f"{ci}_ci_low": v[1], f"{ci}_ci_high": v[2]})
    return row


@pytest.fixture
def run(tmp_path):
    fdir, odir = tmp_path / "features", tmp_path / "output"
    rows = [
        # peaks at 10 in every resample; specific and beyond random; synergy > 0
        summary_row("eng_Latn", 10, {10: 1.0}, (0.8, 0.7, 0.9), (0.5, 0.4, 0.6), (0.02, 0.0, 0.05), (0.1, 0.05, 0.15), (0.2, 0.1, 0.3)),
        # peaks at 10 in 97%; specific; synergy < 0
        summary_row("spa_Latn", 10, {10: 0.97, 9: 0.03}, (0.6, 0.5, 0.7), (0.3, 0.2, 0.4), (0.02, 0.0, 0.05), (-0.2, -0.3, -0.1), (0.2, 0.1, 0.3)),
        # Korean peaks at 0 always; self within random: no evidence that it is specific
        summary_row("kor_Hang", 0, {0: 1.0}, (0.1, 0.0, 0.2), (0.05, -0.05, 0.15), (0.1, 0.0, 0.3), (0.0, -0.1, 0.1), (0.3, 0.2, 0.4)),
        # Thai peaks at 0 in 60%: inconclusive
        summary_row("tha_Thai", 0, {0: 0.6, 10: 0.4}, (0.9, 0.8, 1.0), (0.7, 0.6, 0.8), (0.02, 0.0, 0.05), (0.0, -0.1, 0.1), (0.2, 0.1, 0.3)),
    ]
    save_csv(rows, fdir / "section5_summary.csv")
    save_json({"layers": [0, 9, 10], "top_k": 2, "mode": "directional", "n_texts_per_lang": 40, "peak_rule": "rule",
               "bootstrap": {"n_boot": 2000, "resampling": "ids"}, "config": {"preset": "toy"}}, fdir / "section5_meta.json")  # fmt: skip
    return report.Artifacts(fdir, odir)


def test_claims_from_constructed_summary(run):
    # at layer 10: eng 1.0 and spa 0.97 supported, kor 0.0 not, tha 0.4 inconclusive: 2 of 4 is not "most"
    assert report.layer10_dominant(run).verdict == INCONCLUSIVE
    kt = report.korean_thai_layer0(run)
    assert kt.verdict == INCONCLUSIVE and "kor 1.00, tha 0.60" in kt.numbers
    hurt = report.hurts_mainly_target(run)
    assert hurt.verdict == SUPPORTED and hurt.numbers.startswith("3/4 languages supported")
    syn = report.some_synergy(run)
    assert syn.verdict == SUPPORTED and "synergy > 0 in 1/4, < 0 (sub-additive) in 1" in syn.numbers
    own = report.own_features_beat_others(run)
    assert own.verdict == SUPPORTED and own.numbers.startswith("3/4")  # kor: 0.1 [0, 0.2] vs 0.3 [0.2, 0.4] inconclusive


def test_layer_not_measured_is_inconclusive(run, tmp_path):
    meta = run.json("section5_meta.json")
    save_json({**meta, "layers": [0, 9]}, run.features_dir / "section5_meta.json")
    ev = report.layer10_dominant(run)
    assert ev.verdict == INCONCLUSIVE and ev.numbers.startswith("layer 10 not measured")


def test_not_run_rows_and_the_document(run):
    text = report.build_report(run.features_dir, run.output_dir, "toy")
    assert "**Toy run.**" in text and report.VERDICT_RULE in text
    verdicts = report.verdicts_in(text)
    assert len(verdicts) == len(report.CLAIMS)
    assert all(v in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN) for v in verdicts)
    by_stage = dict(zip([c.stage for c in report.CLAIMS], verdicts))
    assert by_stage["downstream"] == NOT_RUN and by_stage["nu"] == NOT_RUN  # no meta.json here
    assert "Not run (`python check_data.py`)" in text


def test_a_skipped_or_unwired_stage_says_so(run):
    save_json({"stages": [{"stage": "downstream", "status": "skipped", "wall_s": 1.0}, {"stage": "interactions", "status": "done", "wall_s": 2.0}]},
              run.features_dir / "pipeline_timings.json")  # fmt: skip
    claims = {c.stage: c for c in report.CLAIMS}
    ev, verdict = report.claim_row(claims["downstream"], run)
    assert verdict == NOT_RUN and ev.numbers == "stage downstream was skipped"
    ev, verdict = report.claim_row(claims["interactions"], run)
    assert verdict == INCONCLUSIVE and "not wired" in ev.numbers


def test_readme_block_replaces_only_the_marked_text(run, tmp_path):
    path = report.write_report(run.features_dir, run.output_dir, "toy")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nhand-written\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    report.update_readme(readme, path, "output/toy/REPORT.md")
    text = readme.read_text()
    assert text.startswith("# Title\n\nhand-written\n") and text.endswith(f"{report.README_END}\nafter\n") and "\nold\n" not in text
    assert "| 1 | Layer 10 is the dominant" in text and "[output/toy/REPORT.md](output/toy/REPORT.md)" in text
    report.update_readme(readme, path, "output/toy/REPORT.md")  # idempotent
    assert readme.read_text() == text
