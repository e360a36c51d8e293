"""The lid task's answer parser (`steer_eval.named_language`): whole words only, after NFC and casefold, the
first name wins, the longest at the same start; words that contain a name but are no language name nothing."""

import unicodedata

import pytest

from langsae import steer_eval as se

NAMES = [(code, name) for code, names in se.LANGUAGE_NAMES.items() for name in names]


@pytest.mark.parametrize(
    "answer, named",
    [
        (" Prussian", None),  # the old substring rule read Russian
        (" Thailand", None),
        (" Englishman", None),
        (" Frenchwoman", None),
        (" Portugal", None),
        (" Russia", None),
        (" Deutschland", None),
        (" a Prussian dialect, then Russian", "rus_Cyrl"),
        (" English", "eng_Latn"),
        (" English.", "eng_Latn"),
        (" ENGLISH", "eng_Latn"),
        (" English-language text", "eng_Latn"),  # a hyphen ends a word
        (" French, not English", "fra_Latn"),  # the first language named counts
        (" Englishです", "eng_Latn"),  # kana next to a Latin word is a boundary
        (" 日本語です", "jpn_Jpan"),  # CJK and Thai have no spaces: no boundary needed
        (" 这是中文。", "cmn_Hans"),
        (" 한국어로 쓰여 있습니다", "kor_Hang"),  # a Korean particle attaches to the name
        (" ข้อความนี้เป็นภาษาไทย", "tha_Thai"),
        (" ประเทศไทย", None),  # Thailand
        (" คนไทย", None),  # Thai people
        (" المملكة العربية السعودية", None),  # Saudi Arabia
        (" اللغة العربية", "arb_Arab"),
        (" بالعربية", "arb_Arab"),
        (" a language", None),
        ("", None),
    ],
)
def test_named_language_reads_whole_words(answer, named):
    assert se.named_language(answer) == named


@pytest.mark.parametrize("code, name", NAMES)
@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_every_name_in_both_normal_forms_names_its_language(code, name, form):
    for text in (
        name,
        name.upper(),
        f"The text is written in {name}.",
        f"{name}, not {se.english_name(code)}",
    ):
        assert se.named_language(unicodedata.normalize(form, text)) == code, text


@pytest.mark.parametrize("code, name", NAMES)
def test_a_name_inside_a_spaced_script_word_names_nothing(code, name):
    """A letter glued on either side of a name (in a script that spaces its words) makes another word."""
    if se._joins(name[0]):
        assert se.named_language("x" + name) is None
    if se._joins(name[-1]):
        assert se.named_language(name + "x") is None


def test_vietnamese_in_nfd_is_found():
    nfd = unicodedata.normalize("NFD", "Tiếng Việt")
    assert nfd != unicodedata.normalize("NFC", nfd)  # really decomposed
    assert se.named_language(f" {nfd}") == "vie_Latn"


def test_longest_name_at_the_same_start_wins(monkeypatch):
    monkeypatch.setitem(se.LANGUAGE_NAMES, "xxx_Latn", ("English Creole",))
    both = ["eng_Latn", "xxx_Latn"]
    assert (
        se.named_language(" English Creole", both)
        == se.named_language(" English Creole", both[::-1])
        == "xxx_Latn"
    )
    assert se.named_language(" English, Creole", both) == "eng_Latn"
    assert se.named_language(" Creole English", ["xxx_Latn"]) is None  # only the candidates count
