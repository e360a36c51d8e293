"""Where each language's texts come from: Deng et al.'s files, bundled SIB-200, or the hub.

The oracles here read the gzipped files directly, not through langsae.data.
"""

import csv
import gzip
import json

import pytest

from langsae import data
from langsae.data import PAPER_LANGUAGES, load_texts, read_sib200, validate_languages
from langsae.errors import UserError

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
    assert ev.by_language["arb_Arab"] == [r["text"] for r in raw_deng(data.EVALUATION_FILE) if r["lan"] == "ar"][:500]


def test_deng_ids_parallel_and_aligned_with_sib(no_hub):
    """Deng ids are the same list in all ten; where an id is sib:<k>, it is SIB's sentence k in that language."""
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
