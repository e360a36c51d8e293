"""The language identifier's label table, and that it recognises every paper language offline."""

from langsae import langid
from langsae.data import PAPER_LANGUAGES, load_texts


def test_every_paper_language_has_a_label_the_model_knows():
    assert set(PAPER_LANGUAGES) <= set(langid.LABEL_TO_FLORES.values())
    assert all(langid.covers(code) for code in PAPER_LANGUAGES)
    assert not langid.covers("nus_Latn")  # no label: nothing to compare with


def test_table_is_one_to_one_and_uses_real_labels():
    assert len(set(langid.LABEL_TO_FLORES.values())) == len(langid.LABEL_TO_FLORES)
    assert set(langid.LABEL_TO_FLORES) <= set(langid.labels())


def test_identifies_each_paper_language_on_its_own_selection_texts():
    texts = load_texts(PAPER_LANGUAGES, "selection", 20)
    for lang in PAPER_LANGUAGES:
        found = langid.identify(texts.by_language[lang])
        assert sum(f == lang for f in found) >= 16, (lang, found)


def test_unlisted_language_is_none():
    # Hungarian is in the model (label hu) but not in the table
    assert "hu" in langid.labels() and "hu" not in langid.LABEL_TO_FLORES
    assert langid.identify(
        ["A magyar nyelv az uráli nyelvcsalád tagja, a finnugor nyelvek közé tartozik."]
    ) == [None]
