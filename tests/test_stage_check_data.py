"""Every data check fails on small constructed bad data, and passes on the same data made good."""

import json

import pytest

from langsae import checks, langid, tasks
from langsae.cli import run_main
from langsae.data import SIB_CATEGORIES, SibRow, load_texts
from langsae.stages import check_data

EN = [
    "The cat sat on the mat today.",
    "It rained all afternoon in the city.",
    "We bought bread at the market.",
]
FR = [
    "Le chat est assis sur le tapis.",
    "Il a plu tout l'après-midi en ville.",
    "Nous avons acheté du pain au marché.",
]


def good_sets():
    return {
        "selection": {"eng_Latn": EN[:2], "fra_Latn": FR[:2]},
        "evaluation": {"eng_Latn": EN[2:], "fra_Latn": FR[2:]},
    }


def test_counts():
    assert checks.counts(good_sets(), ["eng_Latn", "fra_Latn"]).status == checks.PASS
    uneven = good_sets()
    uneven["selection"]["fra_Latn"] = FR[:1]
    assert checks.counts(uneven, ["eng_Latn", "fra_Latn"]).status == checks.WARN
    missing = checks.counts(good_sets(), ["eng_Latn", "fra_Latn", "spa_Latn"])
    assert missing.status == checks.FAIL and "selection/spa_Latn" in missing.summary
    # a task set covers only the languages it has (XQuAD has no French): listed, not failed ...
    with_task = {**good_sets(), "xquad": {"eng_Latn": ["A context."]}}
    c = checks.counts(with_task, ["eng_Latn", "fra_Latn"], task_sets=("xquad",))
    assert c.status == checks.PASS and c.details["not_covered"] == {"xquad": ["fra_Latn"]}
    # ... but a covered language without texts fails
    with_task["xquad"]["fra_Latn"] = []
    c = checks.counts(with_task, ["eng_Latn", "fra_Latn"], task_sets=("xquad",))
    assert c.status == checks.FAIL and "xquad/fra_Latn" in c.summary


def test_disjoint():
    assert checks.disjoint("selection", good_sets()).status == checks.PASS
    leaky = good_sets()
    leaky["evaluation"]["fra_Latn"] = [FR[0] + " ", FR[2]]  # outer whitespace does not hide a shared sentence
    c = checks.disjoint("selection", leaky)
    assert c.status == checks.FAIL and c.details["overlaps"] == [
        {"set": "evaluation", "language": "fra_Latn", "n": 1, "examples": [FR[0] + " "]}
    ]
    # the same sentence in another language is a translation, not a leak
    other = good_sets()
    other["evaluation"]["fra_Latn"] = [EN[0]]
    assert checks.disjoint("selection", other).status == checks.PASS


@pytest.mark.parametrize(
    "bad, problem", [(["", EN[1]], "empty"), (["  ", EN[1]], "empty"), ([EN[0], EN[0]], "duplicate")]
)
def test_clean_texts(bad, problem):
    assert checks.clean_texts(good_sets()).status == checks.PASS
    sets = good_sets()
    sets["selection"]["eng_Latn"] = bad
    c = checks.clean_texts(sets)
    assert c.status == checks.FAIL and [p["problem"] for p in c.details["problems"]] == [problem]


def test_parallel_ids():
    ok = {"selection": {"eng_Latn": ["a", "b", "c"], "fra_Latn": ["a", "b", "c"]}}
    assert checks.parallel_ids(ok).status == checks.PASS
    swapped = {"selection": {"eng_Latn": ["a", "b", "c"], "fra_Latn": ["a", "c", "b"]}}
    c = checks.parallel_ids(swapped)
    assert c.status == checks.FAIL and c.details["mismatches"][0]["first_difference"] == 1
    short = {"selection": {"eng_Latn": ["a", "b"], "fra_Latn": ["a"]}}
    assert checks.parallel_ids(short).details["mismatches"][0]["first_difference"] == 1


def test_language_identity_catches_a_mislabelled_block():
    texts = load_texts(("eng_Latn", "fra_Latn", "kor_Hang"), "selection", 12).by_language
    good = {"selection": dict(texts)}
    assert checks.language_identity(good, langid.identify, langid.covers).status == checks.PASS
    swapped = {
        "selection": {
            "eng_Latn": texts["fra_Latn"],
            "fra_Latn": texts["eng_Latn"],
            "kor_Hang": texts["kor_Hang"],
        }
    }
    c = checks.language_identity(swapped, langid.identify, langid.covers)
    assert c.status == checks.FAIL
    assert (
        c.details["agreement"]["selection"]["kor_Hang"] == 1.0
        and c.details["agreement"]["selection"]["eng_Latn"] < 0.2
    )
    rows = [r for r in c.details["disagreeing_rows"] if r["language"] == "eng_Latn"]
    assert len(rows) >= 10 and all(r["identified"] == "fra_Latn" for r in rows[:3])
    # a few stray rows are a WARN, with the rows listed
    mixed = dict(texts)
    mixed["eng_Latn"] = texts["eng_Latn"][:10] + texts["kor_Hang"][:2]
    c = checks.language_identity({"selection": mixed}, langid.identify, langid.covers)
    assert c.status == checks.WARN and {
        r["row"] for r in c.details["disagreeing_rows"] if r["language"] == "eng_Latn"
    } >= {10, 11}


def test_language_identity_says_which_languages_it_cannot_judge():
    c = checks.language_identity({"selection": {"nus_Latn": ["Nuer text"]}}, langid.identify, langid.covers)
    assert c.status == checks.WARN and c.details["not_covered"] == ["nus_Latn"]


def test_token_lengths():
    def by_words(texts):
        return [t.split() for t in texts]

    c = checks.token_lengths(good_sets(), by_words)
    assert c.status == checks.PASS and c.details["lengths"]["selection"]["eng_Latn"]["min"] == 7
    sets = good_sets()
    sets["evaluation"]["fra_Latn"] = ["Bonjour"]  # one token: nothing to predict
    c = checks.token_lengths(sets, by_words)
    assert c.status == checks.FAIL and c.details["short_texts"][0] == {
        "set": "evaluation",
        "language": "fra_Latn",
        "row": 0,
        "tokens": 1,
        "text": "Bonjour",
    }
    assert checks.token_lengths(good_sets(), None, "no model here").status == checks.WARN


def squad(context, qas):
    return {"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}


def test_xquad_spans_and_ids():
    bom = "\ufeffParis is the capital of France."
    good = {
        "eng_Latn": squad(
            "Paris is the capital of France.",
            [{"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}],
        ),
        "spa_Latn": squad(
            bom, [{"id": "q1", "question": "¿Capital?", "answers": [{"text": "Paris", "answer_start": 1}]}]
        ),
    }
    assert checks.xquad(good).status == checks.PASS  # the offset counts the BOM
    off_by_bom = json.loads(json.dumps(good))
    off_by_bom["spa_Latn"]["data"][0]["paragraphs"][0]["context"] = bom.lstrip(
        "\ufeff"
    )  # stripped BOM: off by one
    c = checks.xquad(off_by_bom)
    assert c.status == checks.FAIL and c.details["bad_spans"][0]["at_offset"] == "aris "
    other_ids = json.loads(json.dumps(good))
    other_ids["spa_Latn"]["data"][0]["paragraphs"][0]["qas"][0]["id"] = "q2"
    assert checks.xquad(other_ids).status == checks.FAIL
    assert checks.xquad({}).status == checks.WARN


def sib_rows(labels):
    return [SibRow("train", i, c, f"text {i}") for i, c in enumerate(labels)]


def test_sib_labels():
    labels = list(SIB_CATEGORIES) * 2
    assert (
        checks.sib_labels({"eng_Latn": sib_rows(labels), "fra_Latn": sib_rows(labels)}, SIB_CATEGORIES).status
        == checks.PASS
    )
    missing = checks.sib_labels(
        {"eng_Latn": sib_rows(list(SIB_CATEGORIES)[:-1] + [labels[0]])}, SIB_CATEGORIES
    )
    assert missing.status == checks.FAIL and "no 'geography'" in missing.summary
    differ = checks.sib_labels(
        {"eng_Latn": sib_rows(labels), "fra_Latn": sib_rows(labels + ["travel"])}, SIB_CATEGORIES
    )
    assert differ.status == checks.FAIL and "fra_Latn counts differ" in differ.summary


def test_the_tasks_stratified_sample_passes_the_balance_check_on_a_file_sorted_by_label():
    stars = [1] * 50 + [2] * 40 + [3] * 30 + [4] * 30 + [5] * 60  # sorted, like the Amazon files
    idx = tasks.stratified_sample(stars, 20, seed=0)
    assert len(set(idx)) == 100
    assert checks.label_balance({"eng_Latn": [stars[i] for i in idx]}, range(1, 6)).status == checks.PASS


def test_label_balance():
    first_n = [1] * 50 + [2] * 50  # "the first N rows" of a sorted file
    c = checks.label_balance({"eng_Latn": first_n}, range(1, 6))
    assert c.status == checks.FAIL and c.details["counts"]["eng_Latn"] == {1: 50, 2: 50, 3: 0, 4: 0, 5: 0}
    assert checks.label_balance({}, range(1, 6)).status == checks.WARN


def test_check_data_exits_non_zero_on_a_mislabelled_block(tmp_path, capsys, monkeypatch):
    real = check_data.load_texts

    def mislabelled(languages, which, n, split="dev"):
        texts = real(languages, which, n, split)
        if which == "selection":  # the Spanish block carries the Portuguese texts
            texts.by_language["spa_Latn"] = texts.by_language["por_Latn"]
        return texts

    monkeypatch.setattr(check_data, "load_texts", mislabelled)
    out = tmp_path / "run"
    argv = [
        "--model",
        "toy",
        "--languages",
        "eng_Latn,spa_Latn,por_Latn",
        "--out-dir",
        str(out),
        "--no-tokenizer",
    ]
    assert run_main(check_data.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "language identity" in err and "disjoint" not in err
    report = json.loads((out / checks.META_FILE).read_text())
    assert report["status"] == checks.FAIL
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["language identity"]["details"]["agreement"]["selection"]["spa_Latn"] < 0.5
    assert by_name["token lengths"]["status"] == checks.WARN


def test_check_data_passes_on_the_bundled_data(tmp_path):
    out = tmp_path / "run"
    argv = [
        "--model",
        "toy",
        "--languages",
        "eng_Latn,tha_Thai,cmn_Hans",
        "--out-dir",
        str(out),
        "--no-tokenizer",
    ]
    assert run_main(check_data.main, argv) == 0
    report = json.loads((out / checks.META_FILE).read_text())
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["xquad"] == statuses["sib200 labels"] == statuses["disjoint"] == checks.PASS
    assert report["sets"]["selection"] == {"eng_Latn": 100, "tha_Thai": 100, "cmn_Hans": 100}
    # the record is the stage's meta (stages.write_meta): its one name, its flags, the run's config
    assert report["stage"] == check_data.STAGE.name == "check-data" and report["figures"] == []
    assert report["settings"] == {"amazon_per_label": 40, "no_tokenizer": True, "seed": 0}
    assert report["config"]["languages"] == ["eng_Latn", "tha_Thai", "cmn_Hans"] and report["versions"]


def test_a_mixed_set_is_checked_for_parallel_ids_within_each_source(tmp_path):
    """spa_Latn and por_Latn come from Deng's files, glg_Latn and cat_Latn from SIB-200: their ids
    match only within each source, which is what the set promises (data.MIXED_SOURCES)."""
    out = tmp_path / "run"
    argv = [
        "--model",
        "toy",
        "--languages",
        "spa_Latn,por_Latn,glg_Latn,cat_Latn",
        "--out-dir",
        str(out),
        "--no-tokenizer",
    ]
    assert run_main(check_data.main, argv) == 0
    c = next(
        c for c in json.loads((out / checks.META_FILE).read_text())["checks"] if c["name"] == "parallel ids"
    )
    assert c["status"] == checks.PASS and "selection (deng2025), selection (sib200)" in c["summary"]
    ids = check_data.ids_by_origin("selection", load_texts(("spa_Latn", "glg_Latn"), "selection", -1))
    assert (
        checks.parallel_ids(
            {"selection": {**ids["selection (deng2025)"], **ids["selection (sib200)"]}}
        ).status
        == checks.FAIL
    )
