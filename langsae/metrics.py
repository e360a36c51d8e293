"""Downstream metrics: SQuAD v1.1 EM/F1, a language-aware F1, rating parsing, and accuracy,
quadratic weighted kappa and macro-F1 under bootstrap weights.

The text metrics are our own implementation of the official rules (written out here so that
every normalisation step is visible and tested):
- SQuAD v1.1 (`squad_em`, `squad_f1`): lower-case, drop ASCII punctuation, drop the articles
  a/an/the, collapse whitespace; F1 over whitespace tokens (multiset overlap); the maximum over
  the gold answers. As in the official script, F1 is 0 when nothing overlaps, even when both
  sides normalise to nothing (EM is then 1).
- language-aware F1 (`language_f1`): MLQA's evaluation for the languages it covers (Unicode
  punctuation, per-language articles, and for Chinese its mixed segmentation: every CJK
  character is a token, runs of other characters are split on whitespace); characters for
  Thai and Japanese, which write no spaces between words (MLQA has neither); whitespace tokens
  after MLQA's normalisation without articles for any other language.
The bootstrap versions take per-replicate item weights w [R, n] (how often each item was drawn)
and return one value per replicate [R]; w = ones([1, n]) gives the value on the data.
"""

from __future__ import annotations

import re
import string
import sys
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Sequence

import numpy as np

# ----------------------------------------------------------------------------- SQuAD v1.1

_ASCII_PUNCT = frozenset(string.punctuation)


def squad_normalize(s: str) -> str:
    """The official SQuAD v1.1 `normalize_answer`."""
    s = "".join(ch for ch in s.lower() if ch not in _ASCII_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(pred: list[str], gold: list[str]) -> float:
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_em(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    p = squad_normalize(prediction)
    return float(any(p == squad_normalize(g) for g in golds))


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """Max over gold answers of the whitespace-token F1 after `squad_normalize`."""
    p = squad_normalize(prediction).split()
    return max(_token_f1(p, squad_normalize(g).split()) for g in golds)


# ----------------------------------------------------------------------------- language-aware F1

MLQA_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",  # MLQA's pattern as published: it removes every ال, not only the article
}
CHARACTER_LANGS = ("th", "ja")
MIXED_SEGMENTATION_LANGS = ("zh",)
_CJK = re.compile(r"[\u4e00-\u9fa5]")  # MLQA's range


@lru_cache(maxsize=1)
def _unicode_punct() -> frozenset[str]:
    """Every Unicode punctuation character (categories P*) plus ASCII punctuation, as MLQA."""
    return (
        frozenset(chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P"))
        | _ASCII_PUNCT
    )


def mixed_segmentation(text: str) -> list[str]:
    """MLQA's Chinese tokens: each CJK character (or punctuation mark) alone, other runs split on
    whitespace."""
    punct = _unicode_punct()
    out, run = [], ""
    for ch in text:
        if _CJK.search(ch) or ch in punct:
            out += run.split()
            run = ""
            out.append(ch)
        else:
            run += ch
    return out + run.split()


def language_tokens(text: str, lang: str) -> list[str]:
    """Tokens of `text` for the language-aware F1; lang is an ISO 639-1 code (en, zh, th, ...)."""
    punct = _unicode_punct()
    s = "".join(ch for ch in text.lower() if ch not in punct)
    if lang in MLQA_ARTICLES:
        s = re.sub(MLQA_ARTICLES[lang], " ", s)
    if lang in MIXED_SEGMENTATION_LANGS:
        return [t for t in mixed_segmentation(s) if t.strip()]
    if lang in CHARACTER_LANGS:
        return [ch for ch in s if not ch.isspace()]
    return s.split()


def language_f1(prediction: str, golds: Sequence[str], lang: str) -> float:
    """Max over gold answers of the token F1 over `language_tokens`."""
    p = language_tokens(prediction, lang)
    return max(_token_f1(p, language_tokens(g, lang)) for g in golds)


# ----------------------------------------------------------------------------- ratings


def parse_rating(text: str, labels: Sequence[int] = (1, 2, 3, 4, 5)) -> int | None:
    """The first digit in `text` if it is one of `labels`, else None (unparseable: never mapped to a
    label)."""
    m = re.search(r"\d", text)
    if m is None:
        return None
    value = int(m.group())
    return value if value in labels else None


# ----------------------------------------------------------------------------- weighted (bootstrap) metrics


def weighted_mean(w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per replicate, the mean of per-item values weighted by draw counts: w [R, n], values [n] -> [R]."""
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return w @ np.asarray(values, dtype=np.float64) / w.sum(axis=1)


def weighted_confusion(
    w: np.ndarray, gold: np.ndarray, pred: np.ndarray, labels: Sequence[int]
) -> np.ndarray:
    """Confusion counts per replicate [R, K, K] (rows gold, columns prediction, in `labels` order).
    Items whose gold or prediction is not a label (e.g. unparseable, -1) are left out."""
    index = {lab: k for k, lab in enumerate(labels)}
    K = len(labels)
    g = np.array([index.get(int(x), -1) for x in gold])
    p = np.array([index.get(int(x), -1) for x in pred])
    ok = (g >= 0) & (p >= 0)
    onehot = np.zeros((len(g), K * K))
    onehot[np.flatnonzero(ok), g[ok] * K + p[ok]] = 1.0
    return (np.asarray(w, dtype=np.float64) @ onehot).reshape(-1, K, K)


def qwk_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of each confusion matrix [R, K, K] -> [R], with the labels fixed
    (a class absent from both sides still sets the distances: sklearn's cohen_kappa_score with
    `labels=` and weights="quadratic"). NaN when the expected disagreement is 0."""
    K = confusion.shape[-1]
    i = np.arange(K)
    W = (i[:, None] - i[None, :]) ** 2
    total = confusion.sum(axis=(1, 2))
    expected = confusion.sum(axis=2)[:, :, None] * confusion.sum(axis=1)[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = expected / total[:, None, None]
        return 1.0 - (W * confusion).sum(axis=(1, 2)) / (W * expected).sum(axis=(1, 2))


def macro_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Unweighted mean over all K labels of each label's F1 = 2 tp / (gold + predicted), 0 for a label
    neither side has (sklearn's f1_score with fixed `labels`, average="macro", zero_division=0): [R]."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 0.0)
    return f1.mean(axis=1)


def weighted_accuracy(w: np.ndarray, gold: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Share of items with pred == gold per replicate (an unparseable prediction counts as wrong): [R]."""
    return weighted_mean(w, (np.asarray(gold) == np.asarray(pred)).astype(np.float64))
