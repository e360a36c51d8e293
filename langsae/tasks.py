"""Downstream tasks: their data, prompts and per-item scoring.

- qa: XQuAD (bundled, data/xquad/), generation, SQuAD v1.1 EM/F1 and a language-aware F1.
- sentiment: Amazon reviews (`mteb/AmazonReviewsClassification`, never bundled), stratified by
  label; scored by generation (first digit of the answer) and by the log-likelihood of the five
  ratings; accuracy and QWK.
- topic: SIB-200 (bundled), log-likelihood of the seven label names after a few examples from
  SIB's train split; accuracy and macro-F1.
Item ids are parallel across languages where the data is (`xquad:<question id>`, `sib:<index_id>`),
so the statistics resample an item in every language at once; Amazon reviews are not parallel.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from langsae import metrics
from langsae.data import DATA_DIR, SIB_CATEGORIES, Texts, read_sib200, sib_file, sib_id
from langsae.errors import UserError

log = logging.getLogger(__name__)

TASKS = ("qa", "sentiment", "topic")
XQUAD_DIR = DATA_DIR / "xquad"
XQUAD = {  # FLORES+ code -> XQuAD file code (ISO 639-1)
    "eng_Latn": "en",
    "spa_Latn": "es",
    "arb_Arab": "ar",
    "tha_Thai": "th",
    "vie_Latn": "vi",
    "cmn_Hans": "zh",
    "deu_Latn": "de",
    "ell_Grek": "el",
    "hin_Deva": "hi",
    "ron_Latn": "ro",
    "rus_Cyrl": "ru",
    "tur_Latn": "tr",
}
AMAZON = "mteb/AmazonReviewsClassification"
# The commit every load asks for (recorded in the downstream meta): the one MTEB itself pins for this
# dataset (mteb's AmazonReviewsClassification task). Caches are per revision: fetch this one.
AMAZON_REVISION = "6b5d328eaae8ef408dd7d775040245cf86f92e9d"
AMAZON_CONFIGS = {
    "eng_Latn": "en",
    "spa_Latn": "es",
    "fra_Latn": "fr",
    "jpn_Jpan": "ja",
    "cmn_Hans": "zh",
    "deu_Latn": "de",
}
RATINGS = (1, 2, 3, 4, 5)

# The prompts; PROMPT_VERSION is part of every cache key, so editing a prompt invalidates old results.
PROMPT_VERSION = 2  # 2: answers stop at every EOS id the model lists (Qwen3's <|endoftext|> ran on before)
QA_INSTRUCTION = "Answer the question with a short span copied from the context.\n\n"
QA_EXAMPLE = "Context: {context}\nQuestion: {question}\nAnswer:"
SENTIMENT_PROMPT = "Review: {review}\nRating (1 to 5 stars):"
TOPIC_INSTRUCTION = "Topic of each sentence, one of: " + ", ".join(SIB_CATEGORIES) + ".\n\n"
TOPIC_EXAMPLE = "Sentence: {text}\nTopic:"
MIN_CONTEXT_TOKENS = 32  # below this a truncated context is useless: refuse instead


class DatasetUnavailable(UserError):
    """A task's data is neither bundled nor cached and the hub cannot be reached (the pipeline may skip
    the task)."""


@dataclass(frozen=True)
class Item:
    """One evaluation item: `prompt` (text the model continues), `gold` (answers list, rating 1-5 or
    topic name), and `choices` (continuations scored by log-likelihood; empty for generation only)."""

    id: str
    prompt: str
    gold: object
    choices: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


def available_languages(task: str) -> tuple[str, ...]:
    if task == "qa":
        return tuple(XQUAD)
    if task == "sentiment":
        return tuple(AMAZON_CONFIGS)
    from langsae.data import sib200_languages

    return sib200_languages()


# ----------------------------------------------------------------------------- truncation


def _fit(tokenizer, build, text: str, max_tokens: int, what: str) -> str:
    """build(text) -> prompt; the longest prefix of `text` (in tokens) whose prompt fits in max_tokens."""
    fixed = len(tokenizer(build(""))["input_ids"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    budget = max_tokens - fixed
    if budget < min(MIN_CONTEXT_TOKENS, len(ids)):
        raise UserError(
            f"--max-prompt-tokens {max_tokens} leaves {budget} tokens for the {what}; "
            "raise it (or lower --shots)"
        )
    while True:
        kept = text if len(ids) <= budget else tokenizer.decode(ids[:budget])
        prompt = build(kept)
        over = len(tokenizer(prompt)["input_ids"]) - max_tokens
        if over <= 0:
            return prompt
        budget -= over  # token boundaries moved at the joins; cut that much more
        if budget < 1:
            raise UserError(
                f"--max-prompt-tokens {max_tokens} leaves no room for the {what}; raise it (or lower --shots)"
            )


# ----------------------------------------------------------------------------- QA: XQuAD


def read_xquad(lang: str) -> list[dict]:
    """Every XQuAD question of a language in file order: {id, article, context, question, answers}.
    Contexts are kept exactly (some begin with U+FEFF, which `answer_start` counts)."""
    if lang not in XQUAD:
        raise UserError(f"XQuAD has no {lang}; it has {', '.join(XQUAD)}")
    with gzip.open(XQUAD_DIR / f"xquad.{XQUAD[lang]}.json.gz", "rt", encoding="utf-8") as f:
        data = json.load(f)["data"]
    return [
        {
            "id": qa["id"],
            "article": a,
            "context": p["context"],
            "question": qa["question"],
            "answers": [x["text"] for x in qa["answers"]],
        }
        for a, article in enumerate(data)
        for p in article["paragraphs"]
        for qa in p["qas"]
    ]


def qa_items(tokenizer, lang: str, n_items: int, shots: int, max_prompt_tokens: int) -> list[Item]:
    """The first n_items questions (the same in every language). Shots: the first question of each
    of the next `shots` articles (other articles, the same ones in every language). Only the
    item's own context is truncated (from its end) to fit max_prompt_tokens; the question never is."""
    rows = read_xquad(lang)
    if n_items > len(rows):
        raise UserError(f"--n-items {n_items}: XQuAD has {len(rows)} questions")
    first_of_article = {}
    for r in rows:
        first_of_article.setdefault(r["article"], r)
    n_articles = len(first_of_article)
    if shots >= n_articles:
        raise UserError(f"--shots {shots}: XQuAD has {n_articles} articles")
    items = []
    for r in rows[:n_items]:
        examples = [first_of_article[(r["article"] + s) % n_articles] for s in range(1, shots + 1)]
        prefix = QA_INSTRUCTION + "".join(
            QA_EXAMPLE.format(context=e["context"], question=e["question"]) + f" {e['answers'][0]}\n\n"
            for e in examples
        )

        def build(context: str, r=r, prefix=prefix) -> str:
            return prefix + QA_EXAMPLE.format(context=context, question=r["question"])

        prompt = _fit(tokenizer, build, r["context"], max_prompt_tokens, "context")
        items.append(
            Item(f"xquad:{r['id']}", prompt, r["answers"], meta={"truncated": r["context"] not in prompt})
        )
    return items


def score_qa(answer: str, gold: Sequence[str], lang: str) -> dict:
    return {
        "em": metrics.squad_em(answer, gold),
        "f1": metrics.squad_f1(answer, gold),
        "lang_f1": metrics.language_f1(answer, gold, XQUAD[lang]),
    }


def answer_text(generated: str) -> str:
    """The answer: the generated text before its first newline, stripped."""
    return generated.split("\n", 1)[0].strip()


# ----------------------------------------------------------------------------- sentiment: Amazon reviews


def cache_help(lang: str) -> str:
    config = AMAZON_CONFIGS[lang]
    return (
        f"the sentiment task needs {AMAZON} at revision {AMAZON_REVISION} ('{config}', test split), which is "
        "not in the local Hugging Face cache and the hub cannot be reached; on a machine with hub access run "
        f"`python -c \"import datasets; datasets.load_dataset('{AMAZON}', '{config}', split='test', "
        f"revision='{AMAZON_REVISION}')\"` and copy its HF_HOME datasets cache here, "
        "or leave sentiment out (--tasks qa,topic)"
    )


def load_amazon(lang: str) -> tuple[list[str], list[int]]:
    """Review texts and star ratings 1-5 of a language's test split at AMAZON_REVISION, through
    `datasets.load_dataset` (the local cache when offline). Raises DatasetUnavailable when it cannot
    be had."""
    if lang not in AMAZON_CONFIGS:
        raise UserError(f"{AMAZON} has no {lang}; it has {', '.join(AMAZON_CONFIGS)}")
    import datasets

    from langsae.hub import go_offline_if_unreachable

    go_offline_if_unreachable()
    try:
        ds = datasets.load_dataset(AMAZON, AMAZON_CONFIGS[lang], split="test", revision=AMAZON_REVISION)
    except Exception as e:  # connection, cache and file errors come in many types
        raise DatasetUnavailable(cache_help(lang)) from e
    return list(ds["text"]), [int(x) + 1 for x in ds["label"]]  # labels 0-4 are 1-5 stars


def task_sources(task: str, languages) -> tuple[list[Path], dict[str, str]]:
    """The bundled files and the hub datasets (repo -> revision) that a task's items of `languages` read
    (the topic task's selection-set exclusions aside: those are the selection texts' own files)."""
    languages = list(languages)
    if task == "qa":
        return [XQUAD_DIR / f"xquad.{XQUAD[lang]}.json.gz" for lang in languages], {}
    if task == "sentiment":
        return [], {AMAZON: AMAZON_REVISION} if languages else {}
    if task == "topic":
        return [sib_file(lang) for lang in languages], {}
    raise ValueError(task)


def stratified_sample(
    labels: Sequence[int], n_per_label: int, seed: int, classes: Sequence[int] = RATINGS
) -> list[int]:
    """Indices of n_per_label items of each class, drawn without replacement (seeded per class),
    in class order and then file order. The files are sorted by label, so never take the first N."""
    labels = np.asarray(labels)
    out = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < n_per_label:
            raise UserError(f"--n-per-label {n_per_label}: class {c} has only {len(pool)} items")
        out += sorted(
            np.random.default_rng([seed, int(c)]).choice(pool, size=n_per_label, replace=False).tolist()
        )
    return out


def sentiment_items(tokenizer, lang: str, n_per_label: int, seed: int, max_prompt_tokens: int) -> list[Item]:
    texts, labels = load_amazon(lang)
    items = []
    for i in stratified_sample(labels, n_per_label, seed):
        prompt = _fit(
            tokenizer,
            lambda review: SENTIMENT_PROMPT.format(review=review),
            texts[i],
            max_prompt_tokens,
            "review",
        )
        items.append(
            Item(f"amazon:{AMAZON_CONFIGS[lang]}:{i}", prompt, labels[i], tuple(f" {r}" for r in RATINGS))
        )
    return items


# ----------------------------------------------------------------------------- topic: SIB-200


def selection_exclusions(selection: Texts, lang: str) -> tuple[set[str], set[str]]:
    """(sentence ids, texts) of the nu selection set that topic items must avoid in `lang`."""
    ids = {sid for sids in selection.ids.values() for sid in sids}
    return ids, set(selection.by_language.get(lang, []))


def topic_items(lang: str, shots: int, seed: int, selection: Texts, n_items: int = -1) -> list[Item]:
    """SIB-200's test and dev rows (SIB's own splits) minus every sentence of the nu selection set
    (by sentence id in any language, and by text), in index_id order; `shots` examples from SIB's
    train split, seeded by index_id so they are the same sentences in every language. n_items: the
    first N of those items (-1 = all)."""
    rows = read_sib200(lang)
    train = sorted((r for r in rows if r.split == "train"), key=lambda r: r.index_id)
    if shots > len(train):
        raise UserError(f"--topic-shots {shots}: SIB-200 has {len(train)} train sentences")
    pick = sorted(np.random.default_rng([seed, 200]).choice(len(train), size=shots, replace=False).tolist())
    prefix = TOPIC_INSTRUCTION + "".join(
        TOPIC_EXAMPLE.format(text=train[i].text) + f" {train[i].category}\n\n" for i in pick
    )
    taken_ids, taken_texts = selection_exclusions(selection, lang)
    items = []
    for r in sorted(rows, key=lambda r: r.index_id):
        if r.split == "train" or sib_id(r.index_id) in taken_ids or r.text in taken_texts:
            continue
        items.append(
            Item(
                sib_id(r.index_id),
                prefix + TOPIC_EXAMPLE.format(text=r.text),
                r.category,
                tuple(f" {c}" for c in SIB_CATEGORIES),
            )
        )
    if n_items > len(items):
        raise UserError(
            f"--n-topic-items {n_items}: {lang} has {len(items)} SIB-200 items outside the selection set"
        )
    return items if n_items == -1 else items[:n_items]
