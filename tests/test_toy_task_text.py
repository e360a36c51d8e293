"""The toy's task lines (issue 18): counts from the raw files, answers, seeded order, the leak checks
(real data passes; planted leaks of every kind are caught), the devtest refusal and the build switch."""

import csv
import dataclasses
import gzip
import json

import pytest

from langsae import checks, config, toy
from langsae.config import PRESETS, build_parser, resolve
from langsae.data import DATA_DIR, PAPER_LANGUAGES, load_texts, ntrex_file, read_sib200, sib_file
from langsae.errors import UserError
from langsae.steer_eval import LID_PROMPT, named_language
from langsae.tasks import TOPIC_EXAMPLE, TOPIC_INSTRUCTION, read_xquad, topic_items
from langsae.toy import reproduce
from langsae.toy import task_text as tt
from langsae.toy.train import training_text
from langsae.toy_paths import DEFAULT_BUILD_HAS_TASK_LINES, TASK_LINES_KEY

TWO = ("eng_Latn", "spa_Latn")  # enough languages for the planted leaks, and fast


@pytest.fixture(scope="module")
def all_lines():
    return tt.task_lines(PAPER_LANGUAGES, 0, -1, -1)


@pytest.fixture(scope="module")
def measured_two():
    return tt.measured_sets(TWO)


def _raw_topic_rows(lang: str) -> list[dict]:
    """The SIB TSV read with the csv module alone (not `read_sib200`)."""
    with gzip.open(sib_file(lang), "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_counts_per_language_match_the_raw_files(all_lines):
    for lang in PAPER_LANGUAGES:
        with gzip.open(ntrex_file(lang), "rt", encoding="utf-8") as f:
            n_ntrex = sum(1 for line in f if line.strip())
        devtest_train = {
            int(r["index_id"])
            for r in _raw_topic_rows(lang)
            if r["split"] == "train" and int(r["index_id"]) >= 997
        }
        assert len(devtest_train) == 328  # the number
        kinds = [x.kind for x in all_lines[lang]]
        assert kinds.count(tt.LID) == n_ntrex == 1997
        assert kinds.count(tt.TOPIC) == len(devtest_train - {1028}) == 327
        topic_ids = {x.sentence_id for x in all_lines[lang] if x.kind == tt.TOPIC}
        assert topic_ids == {f"sib:{k}" for k in devtest_train - {1028}}


def test_every_lid_answer_is_the_languages_english_name(all_lines):
    english = {"eng_Latn": "English", "arb_Arab": "Arabic", "cmn_Hans": "Chinese", "tha_Thai": "Thai"}
    for lang, lines in all_lines.items():
        for x in (x for x in lines if x.kind == tt.LID):
            assert x.text == LID_PROMPT.format(text=x.sentence) + x.answer + "\n"
            assert named_language(x.answer) == lang  # the steering stage's own parser reads it back
            if lang in english:
                assert x.answer == " " + english[lang]


def test_topic_lines_are_sib_train_devtest_rows_with_their_label(all_lines):
    raw = {int(r["index_id"]): r for r in _raw_topic_rows("fra_Latn")}
    for x in (x for x in all_lines["fra_Latn"] if x.kind == tt.TOPIC):
        row = raw[int(x.sentence_id.removeprefix("sib:"))]
        assert row["split"] == "train" and int(row["index_id"]) >= 997
        assert x.text == TOPIC_INSTRUCTION + TOPIC_EXAMPLE.format(text=row["text"]) + f" {row['category']}\n"
    # the topic task's zero-shot prompt (the toy preset's --topic-shots 0), answered
    item = next(i for i in topic_items("fra_Latn", 0, 0, load_texts(("fra_Latn",), "selection", 1, "dev")))
    assert item.prompt.startswith(TOPIC_INSTRUCTION + "Sentence: ") and item.prompt.endswith("\nTopic:")
    assert PRESETS["toy"].defaults["downstream_topic_shots"] == 0


def test_order_is_seeded_and_a_smaller_n_is_a_prefix():
    a, b = tt.task_lines(TWO, 0, -1, -1), tt.task_lines(TWO, 0, -1, -1)
    assert a == b
    other = tt.task_lines(TWO, 1, -1, -1)
    assert [x.sentence_id for x in other["eng_Latn"]] != [x.sentence_id for x in a["eng_Latn"]]
    assert sorted(map(repr, other["eng_Latn"])) == sorted(map(repr, a["eng_Latn"]))  # same lines, other order
    few = tt.task_lines(TWO, 0, 5, 3)["spa_Latn"]
    lid, topic = (
        [x for x in a["spa_Latn"] if x.kind == tt.LID],
        [x for x in a["spa_Latn"] if x.kind == tt.TOPIC],
    )
    assert few == lid[:5] + topic[:3]
    assert tt.task_lines(TWO, 0, 0, 0) == {lang: [] for lang in TWO}


def test_the_real_lines_hold_no_measured_sentence(all_lines):
    measured = tt.measured_sets(PAPER_LANGUAGES)
    sets = {m.set for m in measured}
    assert sets == {"selection", "evaluation", "sib200:dev", "sib200:test", "xquad:context", "xquad:question"}
    check = tt.leak_check(all_lines, measured)
    assert check.status == checks.PASS, check.summary


def test_without_the_exclusion_the_check_finds_the_real_leak(monkeypatch, measured_two):
    monkeypatch.setattr(tt, "EXCLUDED_TOPIC_IDS", frozenset())
    lines = tt.task_lines(("eng_Latn",), 0, 0, -1)
    leaks = tt.find_leaks(lines["eng_Latn"], measured_two)
    assert [(x["line"], x["set"], x["sentence_id"]) for x in leaks] == [
        ("topic/eng_Latn/sib:1028", "sib200:dev", "sib:1029")
    ]


def _line(kind, lang, sid, sentence):
    return tt.TaskLine(kind, lang, sid, sentence, " English")


def test_planted_measured_sentences_are_caught(measured_two):
    eng, spa = (tt.task_lines(TWO, 0, 30, 30)[lang] for lang in TWO)
    sib_dev = next(r for r in read_sib200("eng_Latn") if r.split == "dev")
    selection = load_texts(TWO, "selection", -1)
    evaluation = load_texts(TWO, "evaluation", -1)
    local = next(i for i, s in enumerate(evaluation.ids["spa_Latn"]) if s.startswith("eval:"))
    question = read_xquad("spa_Latn")[7]["question"]
    context = read_xquad("eng_Latn")[0]["context"]
    inner = context.split(". ")[1] + "."  # one sentence of a context paragraph
    planted = {
        "sib dev by id and text": _line(tt.TOPIC, "eng_Latn", f"sib:{sib_dev.index_id}", sib_dev.text),
        "selection by text": _line(tt.LID, "eng_Latn", "ntrex:0", selection.by_language["eng_Latn"][3]),
        "evaluation by file-local id": _line(tt.LID, "spa_Latn", evaluation.ids["spa_Latn"][local], "Hola."),
        "spanish selection in an english line": _line(
            tt.LID, "eng_Latn", "ntrex:1", " " + selection.by_language["spa_Latn"][5] + "  "
        ),
        "xquad question inside a line": _line(tt.LID, "spa_Latn", "ntrex:2", "Dijo algo. " + question),
        "line inside an xquad context": _line(tt.LID, "eng_Latn", "ntrex:3", inner),
    }
    for name, bad in planted.items():
        lines = (
            {"eng_Latn": [*eng, bad], "spa_Latn": spa}
            if bad.lang == "eng_Latn"
            else {"eng_Latn": eng, "spa_Latn": [*spa, bad]}
        )
        check = tt.leak_check(lines, measured_two)
        assert check.status == checks.FAIL, name
        caught = {x["line"] for x in check.details["leaks"]}
        assert caught == {f"{bad.kind}/{bad.lang}/{bad.sentence_id}"}, name
    by = {x["by"] for x in tt.find_leaks([planted["sib dev by id and text"]], measured_two)}
    assert by == {"id", "text"}


def _args(tmp_path, split, record):
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "build.json").write_text(json.dumps(record))
    argv = ["--model", "toy", "--model-id", str(tmp_path / "model"), "--split", split]
    return build_parser("x").parse_args([*argv, "--out-dir", str(tmp_path / "run")])


def test_a_toy_trained_on_task_lines_refuses_devtest_in_one_line(tmp_path):
    trained = {"format": 3, "seed": 0, "scale": "full", TASK_LINES_KEY: {"rule": "hand-written"}}
    with pytest.raises(UserError) as e:
        resolve(_args(tmp_path, "devtest", trained))
    assert "--split devtest" in str(e.value) and "\n" not in str(e.value)
    assert resolve(_args(tmp_path, "dev", trained)).split == "dev"
    plain = {"format": 3, "seed": 0, "scale": "full"}  # today's toy: devtest still runs
    assert resolve(_args(tmp_path, "devtest", plain)).split == "devtest"


def test_an_unbuilt_default_toy_refuses_devtest_before_building(tmp_path, monkeypatch):
    """No build.json yet: the default build it would make trains on task lines, so devtest is refused
    before anything is built (the toy's constant agrees with its scale)."""
    assert DEFAULT_BUILD_HAS_TASK_LINES == toy.SCALES["full"].task_lines
    monkeypatch.setattr(config, "TOY_ROOT", tmp_path / "unbuilt")
    monkeypatch.setitem(
        config.PRESETS,
        "toy",
        dataclasses.replace(PRESETS["toy"], model_id=str(tmp_path / "unbuilt" / "model")),
    )
    args = build_parser("x").parse_args(
        ["--model", "toy", "--split", "devtest", "--out-dir", str(tmp_path / "r")]
    )
    with pytest.raises(UserError, match="not built yet") as e:
        resolve(args)
    assert "\n" not in str(e.value) and not (tmp_path / "unbuilt").exists()


def test_a_fingerprint_of_another_recipe_counts_as_absent(tmp_path, monkeypatch):
    current = {"sha256": {}, "quality": {}, "hyperparameters": toy.SCALES["small"].recorded()}
    stale = {**current, "hyperparameters": {**current["hyperparameters"], "lm_steps": 1}}
    table = {"GenuineIntel": {"small": current}, "AuthenticAMD": {"small": stale}, "Other": {"full": current}}
    path = tmp_path / "fingerprints.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(reproduce, "FINGERPRINT_FILE", path)
    assert toy.committed_fingerprints("small") == {"GenuineIntel": current}
    assert toy.committed_fingerprint("small", "AuthenticAMD") is None
    assert toy.committed_fingerprints("full") == {}  # recorded for the small recipe, not the full one


def test_the_plain_build_records_and_trains_what_it_did_before_task_lines():
    hp = toy.SCALES["full-plain"]
    assert not hp.task_lines
    record = toy.build_record(0, "full-plain")
    assert TASK_LINES_KEY not in record
    expected = {k: v for k, v in dataclasses.asdict(hp).items() if not k.startswith("task_")}
    assert record["hyperparameters"] == expected
    assert not any(name.startswith("sib200/") for name in record["data_sha256"])
    texts, train_texts, lines = training_text(hp, 0)
    with gzip.open(ntrex_file("kor_Hang"), "rt", encoding="utf-8") as f:
        korean = [line.strip() for line in f if line.strip()]
    assert lines == [] and texts["kor_Hang"] == korean and len(train_texts) == sum(map(len, texts.values()))


def test_the_builds_put_their_lines_in_the_training_text():
    for scale, n_lid, n_topic in (("small", 200, 100), ("full", 300, 327)):
        hp = toy.SCALES[scale]
        texts, train_texts, lines = training_text(hp, 0)
        expected = tt.task_lines(PAPER_LANGUAGES, 0, hp.task_lid_per_language, hp.task_topic_per_language)
        once = [x for lang in PAPER_LANGUAGES for x in expected[lang]]
        topic = [x for x in once if x.kind == tt.TOPIC]
        assert lines == once + topic * (hp.task_topic_repeats - 1)
        assert len(once) == (n_lid + n_topic) * len(PAPER_LANGUAGES)
        assert train_texts == [t for lang in PAPER_LANGUAGES for t in texts[lang]]  # the plain text, all kept
        record = toy.build_record(0, scale)
        assert record[TASK_LINES_KEY]["rule"] == tt.task_rule()
        assert record[TASK_LINES_KEY]["lines"]["tha_Thai"] == {"lid": n_lid, "topic": n_topic}
        assert str(sib_file("tha_Thai").relative_to(DATA_DIR)) in record["data_sha256"]
    # Cut to max_tokens in the sentence: every line still ends with its answer and newline, which are its
    # last tokens as tokenised alone (what the answer weight counts).
    hp = toy.SCALES["small"]
    texts, train_texts, lines = training_text(hp, 0)
    tokenizer = toy.train_tokenizer(train_texts + [x.text for x in lines], hp.vocab_size)
    ids = tt.fit_lines(tokenizer, lines, hp.max_tokens)
    cut = 0
    for x, row in zip(lines, ids):
        decoded = tokenizer.decode(row)
        ending = tokenizer(x.ending)["input_ids"]
        assert (
            len(row) <= hp.max_tokens and decoded.endswith(x.answer + "\n") and row[-len(ending) :] == ending
        )
        assert decoded.startswith(x.prompt("")[:6])  # "Text: " or "Topic "
        cut += decoded != x.text
    assert cut > 0  # the test scale does cut some lines


def test_answer_tokens_count_their_weight_in_the_loss():
    """next_token_loss with answer_weights equals the per-token sum done by hand, divided by the count of
    predicted tokens; weight 1 is the plain mean."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from langsae.forward import make_batches
    from langsae.toy.train import answer_weights, next_token_loss

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        pad_token_id=0,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    ids = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    answers = [2, 0, 1]  # the last 2 tokens of text 0 and the last token of text 2 are answers
    (batch,) = make_batches(ids, 3, 0)
    with torch.no_grad():
        got = next_token_loss(model, batch, answer_weights(batch, answers, 7.0)).item()
        plain = next_token_loss(model, batch).item()
        same = next_token_loss(model, batch, answer_weights(batch, answers, 1.0)).item()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    total, count, mean = 0.0, 0, 0.0
    for row, i in enumerate(batch.indices):
        n = len(ids[i])
        for t in range(n - 1):  # position t predicts token t + 1
            ce = -torch.log_softmax(logits[row, t].double(), -1)[ids[i][t + 1]].item()
            total += ce * (7.0 if t + 1 >= n - answers[i] else 1.0)
            mean += ce
            count += 1
    assert got == pytest.approx(total / count, rel=1e-5)
    assert plain == pytest.approx(mean / count, rel=1e-5) and same == pytest.approx(plain, rel=1e-6)
    assert got > plain  # the weighted answers do count more
