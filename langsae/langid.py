"""Offline language identification, answering in FLORES+ codes.

py3langid (a maintained repackaging of langid.py, Lui & Baldwin 2012) ships its 97-language
model inside the wheel, so it runs with no download and no network. Its labels are ISO 639-1
codes; `LABEL_TO_FLORES` maps them to FLORES+ codes (one table, tested for every paper
language). A label without an entry maps to None: "some language this project does not name".
The identifier always chooses among all 97 languages, so a mislabelled text shows up as the
language it really is rather than the closest of the expected ones.
"""

from __future__ import annotations

import functools
from typing import Iterable

# py3langid label -> FLORES+ code. Its model (0.4) tells Mandarin (zh; the paper's data is
# Simplified, cmn_Hans) from Wu and Cantonese, and calls about 5% of FLORES Mandarin sentences Wu.
LABEL_TO_FLORES = {
    "en": "eng_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "pt": "por_Latn",
    "ja": "jpn_Jpan",
    "zh": "cmn_Hans",
    "ko": "kor_Hang",
    "th": "tha_Thai",
    "vi": "vie_Latn",
    "ar": "arb_Arab",
    "de": "deu_Latn",
    "it": "ita_Latn",
    "nl": "nld_Latn",
    "ru": "rus_Cyrl",
    "gl": "glg_Latn",
    "ca": "cat_Latn",
    "hi": "hin_Deva",
    "tr": "tur_Latn",
    "el": "ell_Grek",
    "ro": "ron_Latn",
    "wuu": "wuu_Hans",
    "yue": "yue_Hant",
    "ary": "ary_Arab",
    "arz": "arz_Arab",
}
FLORES_TO_LABEL = {v: k for k, v in LABEL_TO_FLORES.items()}


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def labels() -> tuple[str, ...]:
    """Every label the shipped model can answer."""
    return tuple(_identifier().nb_classes)


def covers(code: str) -> bool:
    """True when the identifier can recognise this FLORES+ language (it has a label that maps to it)."""
    label = FLORES_TO_LABEL.get(code)
    return label is not None and label in labels()


def identify(texts: Iterable[str]) -> list[str | None]:
    """The FLORES+ code of each text's most likely language (None: a language outside the table)."""
    ident = _identifier()
    return [LABEL_TO_FLORES.get(ident.classify(t)[0]) for t in texts]
