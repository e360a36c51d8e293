"""Where each language's texts come from: Deng et al.'s files, bundled SIB-200, or the hub.

The oracles here read the gzipped files directly, not through langsae.data.
"""

import csv
import gzip
import hashlib
import json
import re
from pathlib import Path

import datasets
import pytest

from langsae import data, tasks
from langsae.checks import META_FILE as DATA_CHECKS
from langsae.data import PAPER_LANGUAGES, load_texts, read_sib200, validate_languages
from langsae.errors import UserError
from langsae.nu import META_FILE as NU_META

SIB_LANGS = ("glg_Latn", "kas_Arab", "azb_Arab", "nus_Latn")


def raw_sib(file_code: str) -> list[dict]:
    with gzip.open(data.SIB_DIR / f"{file_code}.tsv.gz", "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def raw_deng(path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_ids(rows: list[dict], split: str) -> list[int]:
    ids = sorted(int(r["index_id"]) for r in rows)
    return [i for i in ids if (i < 997) == (split == "dev")]


@pytest.fixture(scope="module")
def deng_selection_in_sib() -> set[int]:
    """index_ids of Deng's selection sentences, by exact English text."""
    english = {r["text"]: int(r["index_id"]) for r in raw_sib("eng_Latn")}
    sel = [r["text"] for r in raw_deng(data.SELECTION_FILE) if r["lan"] == "en"]
    return {english[t] for t in sel if t in english}


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No token anywhere: whatever loads must load from the bundled files."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("langsae.hub.SECRETS_FILE", tmp_path / "absent.ini")

    def unreachable(lang, split):
        raise AssertionError(f"{lang} went to the hub")

    monkeypatch.setattr(data, "load_flores_plus", unreachable)


@pytest.mark.parametrize("split, n_eval", [("dev", 400), ("devtest", 394)])
def test_sib_sets_follow_the_rule(no_hub, deng_selection_in_sib, split, n_eval):
    """Selection = first 100 of the split by index_id; evaluation = the rest minus Deng's selection."""
    ids = split_ids(raw_sib("glg_Latn"), split)
    sel = load_texts(("glg_Latn",), "selection", -1, split)
    ev = load_texts(("glg_Latn",), "evaluation", -1, split)
    assert sel.ids["glg_Latn"] == [f"sib:{i}" for i in ids[:100]]
    assert ev.ids["glg_Latn"] == [f"sib:{i}" for i in ids[100:] if i not in deng_selection_in_sib]
    assert len(sel.by_language["glg_Latn"]) == 100 and len(ev.by_language["glg_Latn"]) == n_eval
    assert not set(sel.ids["glg_Latn"]) & set(ev.ids["glg_Latn"])
    assert not set(sel.by_language["glg_Latn"]) & set(ev.by_language["glg_Latn"])
    assert sel.source == f"sib200:{split}:selection"


def test_documented_sets_load_offline_and_are_parallel(no_hub):
    for which in ("selection", "evaluation"):
        texts = load_texts(SIB_LANGS, which, -1)
        first = texts.ids[SIB_LANGS[0]]
        assert all(texts.ids[lang] == first for lang in SIB_LANGS), "SIB sets share ids in the same order"
        assert first == sorted(first, key=lambda s: int(s.split(":")[1]))
        assert len(texts.flat_ids()) == len(texts.flat()[0]) == len(SIB_LANGS) * len(first)
        similar = load_texts(("spa_Latn", "por_Latn", "glg_Latn", "cat_Latn"), which, -1)
        assert [len(similar.by_language[lang]) for lang in ("glg_Latn", "cat_Latn")] == [len(first)] * 2


def test_sib_text_is_the_row_of_its_index_id(no_hub):
    rows = {int(r["index_id"]): r["text"] for r in raw_sib("nus_Latn")}
    texts = load_texts(("nus_Latn",), "evaluation", 5, "devtest")
    assert texts.by_language["nus_Latn"] == [rows[int(i.split(":")[1])] for i in texts.ids["nus_Latn"]]


def test_cmn_hans_reads_the_zho_hans_file(no_hub):
    assert [r.text for r in read_sib200("cmn_Hans")] == [r["text"] for r in raw_sib("zho_Hans")]
    assert [r.text for r in read_sib200("cmn_Hant")] == [r["text"] for r in raw_sib("zho_Hant")]
    langs = data.sib200_languages()
    assert len(langs) == 205 and "cmn_Hans" in langs and "zho_Hans" not in langs
    # On devtest the ten have no Deng files: cmn_Hans comes from SIB, parallel with eng_Latn.
    texts = load_texts(("eng_Latn", "cmn_Hans"), "selection", 3, "devtest")
    assert texts.ids["eng_Latn"] == texts.ids["cmn_Hans"] and texts.source == "sib200:devtest:selection"
    zho = {int(r["index_id"]): r["text"] for r in raw_sib("zho_Hans")}
    assert texts.by_language["cmn_Hans"][0] == zho[min(i for i in zho if i >= 997)]


def test_read_sib200_full_rows():
    rows = read_sib200("eng_Latn")
    with gzip.open(data.SIB_DIR / "eng_Latn.tsv.gz", "rt", encoding="utf-8") as f:
        n_lines = sum(1 for _ in f) - 1
    assert len(rows) == n_lines == 1004, "one row per line: quoted fields parsed, not split on tabs"
    assert {r.split for r in rows} == {"train", "dev", "test"}
    assert {r.category for r in rows} == set(data.SIB_CATEGORIES)
    assert len({r.index_id for r in rows}) == 1004 and all(0 <= r.index_id <= 2008 for r in rows)
    quoted = next(r for r in rows if r.index_id == 1239)  # stored as """She’s ... too,"" he said ..."
    assert quoted.text.startswith('"She’s very cute') and 'too," he said' in quoted.text
    assert not any(t.startswith('"""') or "\t" in t for t in (r.text for r in rows))


def test_whitespace_untouched(no_hub):
    """Texts are used exactly as stored: no strip (acm_Arab has leading spaces), no BOM games."""
    raw = {int(r["index_id"]): r["text"] for r in raw_sib("acm_Arab")}
    texts = load_texts(("acm_Arab",), "selection", -1)
    got = dict(zip(texts.ids["acm_Arab"], texts.by_language["acm_Arab"]))
    assert got["sib:20"] == raw[20] and raw[20].startswith("  ")
    assert all(got[f"sib:{i}"] == raw[i] for i in (9, 20, 26))


def test_deng_sets_unchanged(no_hub):
    sel_rows = raw_deng(data.SELECTION_FILE)
    sel = load_texts(PAPER_LANGUAGES, "selection", -1)
    assert sel.source == "bundled:multilingual_data.jsonl.gz"
    assert sel.by_language["eng_Latn"][0] == next(r["text"] for r in sel_rows if r["lan"] == "en")
    for lang, lan in data.BUNDLED.items():
        assert sel.by_language[lang] == [r["text"] for r in sel_rows if r["lan"] == lan]
    ev = load_texts(PAPER_LANGUAGES, "evaluation", 500)
    assert ev.source == "bundled:multilingual_data_test.jsonl.gz"
    assert (
        ev.by_language["arb_Arab"]
        == [r["text"] for r in raw_deng(data.EVALUATION_FILE) if r["lan"] == "ar"][:500]
    )


def test_deng_ids_parallel_and_aligned_with_sib(no_hub):
    """Deng ids are the same list in all ten; where an id is sib:<k>, it is SIB's sentence k in that
    language."""
    for which, n_sib in (("selection", 46), ("evaluation", 464)):
        texts = load_texts(PAPER_LANGUAGES, which, -1)
        ids = texts.ids["eng_Latn"]
        assert all(texts.ids[lang] == ids for lang in PAPER_LANGUAGES) and len(set(ids)) == len(ids)
        assert sum(i.startswith("sib:") for i in ids) == n_sib
        assert ids[0] == ("sel:0" if which == "selection" else "sib:0")
        for lang, code in (("spa_Latn", "spa_Latn"), ("cmn_Hans", "zho_Hans")):  # checked beyond English
            sib = {f"sib:{r['index_id']}": r["text"] for r in raw_sib(code)}
            pairs = [(i, t) for i, t in zip(ids, texts.by_language[lang]) if i.startswith("sib:")]
            assert all(sib[i] == t for i, t in pairs)


def test_mixed_set_ten_plus_glg_offline(no_hub):
    ten = load_texts(PAPER_LANGUAGES, "evaluation", -1)
    mixed = load_texts((*PAPER_LANGUAGES, "glg_Latn"), "evaluation", -1)
    assert all(mixed.by_language[lang] == ten.by_language[lang] for lang in PAPER_LANGUAGES)
    assert len(mixed.by_language["glg_Latn"]) == 400
    assert "sib200:dev:evaluation[glg_Latn]" in mixed.source and "bundled:" in mixed.source
    assert data.MIXED_SOURCES in mixed.source
    # No evaluation text of any language is a sentence of the ten's selection set.
    sel_ids = set(load_texts(PAPER_LANGUAGES, "selection", -1).ids["eng_Latn"])
    assert not sel_ids & set(mixed.flat_ids())


def test_unbundled_languages_need_the_hub_and_are_all_named(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("langsae.hub.SECRETS_FILE", tmp_path / "absent.ini")
    langs = ("kas_Arab", "azb_Arab", "nus_Latn", "wuu_Hans", "arg_Latn")
    with pytest.raises(UserError) as e:
        load_texts(langs, "selection", -1)
    msg = str(e.value)
    assert "\n" not in msg and "openlanguagedata/flores_plus" in msg and "HF_TOKEN" in msg
    named = msg.split("SIB-200): ", 1)[1].split(";", 1)[0]
    assert named == "wuu_Hans, arg_Latn"


def test_hub_failures_with_a_token_are_named_together(monkeypatch):
    monkeypatch.setattr("langsae.hub.hf_token", lambda *a: "hf_test")

    def offline(lang, split):
        try:
            raise ConnectionError("no network")
        except ConnectionError as err:
            raise UserError(f"could not load {lang}") from err

    monkeypatch.setattr(data, "load_flores_plus", offline)
    with pytest.raises(UserError, match=r"SIB-200\): wuu_Hans, arg_Latn; .*ConnectionError: no network"):
        load_texts(("glg_Latn", "wuu_Hans", "arg_Latn"), "evaluation", -1)


def test_validate_languages_accepts_every_bundled_code():
    langs = list(data.sib200_languages())
    assert validate_languages(langs) == langs
    assert validate_languages(["wuu_Hans", "arg_Latn"]) == ["wuu_Hans", "arg_Latn"]
    with pytest.raises(UserError, match="cmn_Hans"):
        validate_languages(["zho_Hans"])
    with pytest.raises(UserError, match="fil_Latn"):
        validate_languages(["tgl_Latn"])


# ------------------------------------------------------------------------- provenance: pinned and hashed data

SHA = re.compile(r"[0-9a-f]{40}")


@pytest.mark.parametrize(
    "languages, which, split",
    [
        (PAPER_LANGUAGES, "selection", "dev"),
        (("eng_Latn", "glg_Latn"), "evaluation", "dev"),
        (("glg_Latn",), "selection", "devtest"),
        (("eng_Latn", "cmn_Hans"), "evaluation", "devtest"),
    ],
)
def test_source_files_are_the_files_load_texts_opens(no_hub, monkeypatch, languages, which, split):
    """The files a stage's meta hashes for a set are exactly those that loading it opens (spied on)."""
    opened, real_open = set(), gzip.open

    def spy(path, *args, **kwargs):
        opened.add(Path(path).resolve())
        return real_open(path, *args, **kwargs)

    data._deng_selection_sib_ids.cache_clear()  # else an earlier test's read hides this one's
    monkeypatch.setattr(gzip, "open", spy)
    texts = load_texts(languages, which, 5, split)
    files, hub = data.source_files(languages, which, split)
    assert {Path(f).resolve() for f in files} == opened == {Path(f).resolve() for f in texts.files}
    assert hub == texts.hub == {}


def test_hub_sets_name_the_pinned_flores_plus_commit():
    assert data.source_files(("wuu_Hans", "eng_Latn"), "selection", "dev")[1] == {
        "openlanguagedata/flores_plus": data.FLORES_PLUS_REVISION
    }
    assert SHA.fullmatch(data.FLORES_PLUS_REVISION) and SHA.fullmatch(tasks.AMAZON_REVISION)


def test_hub_loads_ask_for_the_pinned_commit(monkeypatch):
    asked = []

    def fake_load(repo, config, split, **kwargs):
        asked.append((repo, kwargs.get("revision")))
        return {"text": ["a review"], "label": [4]}

    monkeypatch.setattr("langsae.hub.hf_token", lambda *a: "hf_test")
    monkeypatch.setattr("langsae.hub.go_offline_if_unreachable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert data.load_flores_plus("wuu_Hans", "dev") == ["a review"]
    assert tasks.load_amazon("eng_Latn") == (["a review"], [5])
    pins = [(data.FLORES_PLUS_REPO, data.FLORES_PLUS_REVISION), (tasks.AMAZON, tasks.AMAZON_REVISION)]
    assert asked == pins
    assert data.FLORES_PLUS_REPO == "openlanguagedata/flores_plus"


@pytest.fixture
def empty_offline_hub(monkeypatch, tmp_path):
    """Offline, with empty hub and datasets caches: no revision of anything is cached."""
    from huggingface_hub import constants

    for module, name in ((constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, name, True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr("langsae.hub.hf_token", lambda *a: "hf_test")


@pytest.mark.parametrize(
    "load, repo, revision",
    [
        (lambda: data.load_flores_plus("wuu_Hans", "dev"), data.FLORES_PLUS_REPO, data.FLORES_PLUS_REVISION),
        (lambda: tasks.load_amazon("eng_Latn"), tasks.AMAZON, tasks.AMAZON_REVISION),
    ],
)
def test_a_pinned_revision_not_cached_offline_is_one_line_naming_it(empty_offline_hub, load, repo, revision):
    with pytest.raises(UserError) as e:
        load()
    msg = str(e.value)
    assert "\n" not in msg and repo in msg and revision in msg


def test_data_record_hashes_each_file_with_hashlib_and_names_it_from_the_project_root(tmp_path):
    from langsae import provenance

    texts = load_texts(("eng_Latn", "glg_Latn"), "evaluation", 3)
    outside = tmp_path / "probe.jsonl"
    outside.write_text("{}\n")
    rec = provenance.data_record(None, (texts,), {"qa": ["eng_Latn"], "sentiment": ["eng_Latn"]}, [outside])
    expected = [*texts.files, data.DATA_DIR / "xquad" / "xquad.en.json.gz", outside]

    def name(p):
        return str(outside) if p == outside else str(p.relative_to(data.DATA_DIR.parent))

    assert rec["bundled"] == {name(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in expected}
    assert "data/sib200/glg_Latn.tsv.gz" in rec["bundled"]
    assert rec["hub"] == {tasks.AMAZON: tasks.AMAZON_REVISION}
    outside.write_text("changed\n")  # a file that changes is hashed again, not served from the cache
    again = provenance.data_record(files=[outside])["bundled"][str(outside)]
    assert again == hashlib.sha256(b"changed\n").hexdigest()


def _sha(relative: str) -> str:
    return hashlib.sha256((data.DATA_DIR.parent / relative).read_bytes()).hexdigest()


def test_check_data_meta_records_every_file_it_read_with_its_sha256(tmp_path, monkeypatch):
    from langsae.cli import run_main
    from langsae.stages import check_data

    def not_cached(lang):
        raise tasks.DatasetUnavailable("not cached")

    monkeypatch.setattr(tasks, "load_amazon", not_cached)  # Amazon read nowhere: no hub entry
    out = tmp_path / "run"
    argv = ["--model", "toy", "--languages", "eng_Latn,glg_Latn", "--out-dir", str(out), "--no-tokenizer"]
    assert run_main(check_data.main, argv) == 0
    record = json.loads((out / DATA_CHECKS).read_text())["data"]
    read = [
        "data/flores_deng2025/multilingual_data.jsonl.gz",
        "data/flores_deng2025/multilingual_data_test.jsonl.gz",
        "data/sib200/eng_Latn.tsv.gz",
        "data/sib200/glg_Latn.tsv.gz",
        "data/xquad/xquad.en.json.gz",
    ]
    assert record == {"bundled": {path: _sha(path) for path in read}, "hub": {}}


def test_nu_meta_records_the_selection_files_with_their_sha256(small_toy_nu):
    record = json.loads((small_toy_nu / NU_META).read_text())["data"]
    read = ["data/flores_deng2025/multilingual_data.jsonl.gz", "data/sib200/eng_Latn.tsv.gz"]  # ten, dev
    assert record == {"bundled": {path: _sha(path) for path in read}, "hub": {}}
