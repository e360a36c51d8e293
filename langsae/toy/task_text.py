"""The toy's task training lines (issue 18), and the checks that none of them is a measured sentence.

Two tasks, each in the exact prompt the pipeline measures it with, followed by the answer:
  lid    NTREX-128 sentences (the toy's own training source, never measured) in
         `steer_eval.LID_PROMPT`, answered with " <English name>" of the sentence's language;
  topic  SIB-200's train split in `tasks.TOPIC_EXAMPLE`, answered with " <category>", ONLY rows whose
         FLORES sentence is a devtest one (index_id >= 997): Deng et al.'s files hold dev sentences only,
         so the selection and evaluation sets of the dev split stay unseen, and SIB's dev and test rows,
         which the topic task measures, are never taken.
`measured_sets` gathers every sentence a toy run (split dev) measures; `find_leaks` and `leak_check` say
whether any task line holds one of them, by sentence id and by text. A toy trained on these lines must not
be run with --split devtest (`toy_paths.refuse_devtest`): its selection and evaluation sets would then
overlap them.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from langsae import checks
from langsae.data import FLORES_DEV_SIZE, PAPER_LANGUAGES, load_ntrex, load_texts, read_sib200, sib_id
from langsae.steer_eval import LANGUAGE_NAMES, LID_PROMPT
from langsae.tasks import TOPIC_EXAMPLE, TOPIC_INSTRUCTION, XQUAD, _fit, read_xquad
from langsae.toy_paths import TASK_LINES_KEY

LID, TOPIC = "lid", "topic"
# The topic line is the topic task's zero-shot prompt (its instruction, then one example), as measured.
TEMPLATES = {LID: LID_PROMPT, TOPIC: TOPIC_INSTRUCTION + TOPIC_EXAMPLE}
MIN_CONTAINED_CHARS = 20  # shorter measured texts are only matched whole (a few words occur anywhere)
# Devtest train rows left out in every language (parallel lines): FLORES's English sentence 1028 holds
# the whole of sentence 1029, a SIB dev row the topic task measures (found by `leak_check`).
EXCLUDED_TOPIC_IDS = frozenset({"sib:1028"})

TASK_RULE = """\
Task lines (issue 18): per language, in a seeded order (numpy default_rng([seed, 18, task, language
index]) over the candidates), the first N of each task; every line is its task's prompt, then the
answer, then a newline (where generation stops). lid: NTREX-128 sentences (never measured) in
steer_eval.LID_PROMPT, answered " <English name of the language>". topic: SIB-200 rows of SIB's train
split whose FLORES sentence is in devtest (index_id >= 997: 328 per language), minus sib:1028 in every
language (its English text holds all of sib:1029, a SIB dev row), so 327, in the topic task's zero-shot
prompt (tasks.TOPIC_INSTRUCTION + tasks.TOPIC_EXAMPLE), answered " <category>". No line holds a
sentence of a measured set on the dev split: the selection and evaluation sets (Deng et al.'s files,
dev sentences only), SIB-200's dev and test rows (the topic task's items), XQuAD's contexts and
questions; checked by sentence id and by text. A toy trained on them refuses --split devtest, whose
sets are made of devtest sentences."""


@dataclass(frozen=True)
class TaskLine:
    """One training line: `template` of `kind` filled with `sentence`, then `answer` (with its space)."""

    kind: str  # LID or TOPIC
    lang: str
    sentence_id: str  # `ntrex:<row>` (parallel across languages) or `sib:<index_id>`
    sentence: str
    answer: str

    def prompt(self, sentence: str | None = None) -> str:
        return TEMPLATES[self.kind].format(text=self.sentence if sentence is None else sentence)

    @property
    def text(self) -> str:
        return self.line()

    @property
    def ending(self) -> str:
        """What the line teaches to write: the answer, then a newline, where generation stops."""
        return self.answer + "\n"

    def line(self, sentence: str | None = None) -> str:
        return self.prompt(sentence) + self.ending


def task_rule() -> str:
    """The rule that chooses the lines, for build.json and the docs."""
    return TASK_RULE


def _seeded(n_candidates: int, n: int, seed: int, kind: str, lang_index: int) -> list[int]:
    """The first n (-1: all) of a seeded permutation of range(n_candidates)."""
    order = np.random.default_rng([seed, 18, (LID, TOPIC).index(kind), lang_index]).permutation(n_candidates)
    return order.tolist() if n == -1 else order[:n].tolist()


def lid_lines(lang: str, lang_index: int, seed: int, n: int) -> list[TaskLine]:
    """n (-1: all) NTREX sentences of `lang` as LID prompts answered with its English name."""
    sentences = load_ntrex([lang])[lang]
    answer = " " + LANGUAGE_NAMES[lang][0]
    picked = _seeded(len(sentences), n, seed, LID, lang_index)
    return [TaskLine(LID, lang, f"ntrex:{i}", sentences[i], answer) for i in picked]


def topic_candidates(lang: str) -> list:
    """SIB-200 train rows of `lang` on FLORES devtest sentences, but EXCLUDED_TOPIC_IDS, by index_id."""
    rows = [
        r
        for r in read_sib200(lang)
        if r.split == "train"
        and r.index_id >= FLORES_DEV_SIZE
        and sib_id(r.index_id) not in EXCLUDED_TOPIC_IDS
    ]
    return sorted(rows, key=lambda r: r.index_id)


def topic_lines(lang: str, lang_index: int, seed: int, n: int) -> list[TaskLine]:
    """n (-1: all) of `topic_candidates` as topic examples answered with their category."""
    rows = topic_candidates(lang)
    picked = _seeded(len(rows), n, seed, TOPIC, lang_index)
    return [
        TaskLine(TOPIC, lang, sib_id(rows[i].index_id), rows[i].text, " " + rows[i].category) for i in picked
    ]


def task_lines(languages: Sequence[str], seed: int, n_lid: int, n_topic: int) -> dict[str, list[TaskLine]]:
    """Each language's LID lines, then its topic lines (n_*: per language, -1 all, 0 none)."""
    out = {}
    for i, lang in enumerate(languages):
        lid = lid_lines(lang, i, seed, n_lid) if n_lid else []
        out[lang] = lid + (topic_lines(lang, i, seed, n_topic) if n_topic else [])
    return out


def trained_lines(build_json: Path) -> dict[str, list[TaskLine]] | None:
    """The task lines a toy build was trained on, rebuilt from its build.json (seed and counts); None for a
    build without task lines or a folder that is not a toy build (a real model's)."""
    try:
        record = json.loads(Path(build_json).read_text())
    except (OSError, ValueError):
        return None
    lines = record.get(TASK_LINES_KEY) if isinstance(record, dict) else None
    if not lines:
        return None
    return task_lines(PAPER_LANGUAGES, record["seed"], lines["lid_per_language"], lines["topic_per_language"])


def task_record(seed: int, n_lid: int, n_topic: int, languages: Sequence[str] = PAPER_LANGUAGES) -> dict:
    """build.json's TASK_LINES_KEY: the rule, the settings and the lines per language and task."""
    lines = task_lines(languages, seed, n_lid, n_topic)
    return {
        "rule": task_rule(),
        "lid_per_language": n_lid,
        "topic_per_language": n_topic,
        "lines": {lang: {k: sum(x.kind == k for x in v) for k in (LID, TOPIC)} for lang, v in lines.items()},
    }


def fit_lines(tokenizer, lines: Sequence[TaskLine], max_tokens: int) -> list[list[int]]:
    """Token ids of each line within max_tokens, cut in its sentence (from its end) so that the prompt's
    question and the answer are always kept: the end of a task line is what it teaches."""
    out = []
    for x in lines:
        text = _fit(tokenizer, x.line, x.sentence, max_tokens, "task line")
        out.append(tokenizer(text)["input_ids"])
    return out


# ----------------------------------------------------------------------------- leak checks


@dataclass(frozen=True)
class Measured:
    """One measured sentence: the set it is in, its language, its sentence id (None: none) and text."""

    set: str
    lang: str
    sentence_id: str | None
    text: str


def measured_sets(languages: Sequence[str]) -> list[Measured]:
    """Every sentence a toy run on the dev split measures in `languages`: the selection and Section 5's
    evaluation sets (Deng et al.'s two files), SIB-200's dev and test rows, XQuAD contexts and questions."""
    out = []
    for which in ("selection", "evaluation"):
        texts = load_texts(tuple(languages), which, -1, "dev")
        for lang in languages:
            out += [Measured(which, lang, s, t) for s, t in zip(texts.ids[lang], texts.by_language[lang])]
    for lang in languages:
        out += [
            Measured(f"sib200:{r.split}", lang, sib_id(r.index_id), r.text)
            for r in read_sib200(lang)
            if r.split != "train"
        ]
        if lang in XQUAD:
            rows = read_xquad(lang)
            contexts = dict.fromkeys(r["context"] for r in rows)
            out += [Measured("xquad:context", lang, None, c) for c in contexts]
            out += [Measured("xquad:question", lang, f"xquad:{r['id']}", r["question"]) for r in rows]
    return out


def _norm(text: str) -> str:
    """NFC, runs of whitespace (U+FEFF too) as one space, no outer whitespace: how texts are compared."""
    return " ".join(unicodedata.normalize("NFC", text).replace("\ufeff", " ").split())


def find_leaks(lines: Iterable[TaskLine], measured: Sequence[Measured]) -> list[dict]:
    """Every task line that holds a measured sentence: the same sentence id, the same text (any
    language), a measured text inside the line, or the line's sentence inside a measured text (the same
    language; texts of MIN_CONTAINED_CHARS or more). One dict per line and reason."""
    lines = list(lines)
    by_id = {m.sentence_id: m for m in measured if m.sentence_id is not None}
    by_text = {_norm(m.text): m for m in measured}
    leaks = []

    def leak(line: TaskLine, m: Measured, how: str) -> None:
        leaks.append(
            {
                "line": f"{line.kind}/{line.lang}/{line.sentence_id}",
                "set": m.set,
                "language": m.lang,
                "sentence_id": m.sentence_id,
                "by": how,
                "text": checks._snippet(m.text),
            }
        )

    for line in lines:
        if line.sentence_id in by_id:
            leak(line, by_id[line.sentence_id], "id")
        if _norm(line.sentence) in by_text:
            leak(line, by_text[_norm(line.sentence)], "text")
    for lang in dict.fromkeys(line.lang for line in lines):
        _contained(lang, [x for x in lines if x.lang == lang], [m for m in measured if m.lang == lang], leak)
    return leaks


def _contained(lang: str, lines: list[TaskLine], measured: list[Measured], leak) -> None:
    """Containment either way within one language, by searching one joined string per side."""
    sep = "\x00"  # in no text
    line_texts = [_norm(x.text) for x in lines]
    measured_texts = [_norm(m.text) for m in measured]
    joined_lines, joined_measured = sep.join(line_texts), sep.join(measured_texts)
    for m, text in zip(measured, measured_texts):
        if len(text) >= MIN_CONTAINED_CHARS and text in joined_lines:
            for x, t in zip(lines, line_texts):
                if text in t and _norm(x.sentence) != text:  # equal texts are reported "by text"
                    leak(x, m, "measured text inside the line")
    for x in lines:
        s = _norm(x.sentence)
        if len(s) >= MIN_CONTAINED_CHARS and s in joined_measured:
            for m, text in zip(measured, measured_texts):
                if s in text and s != text:
                    leak(x, m, "line's sentence inside a measured text")


def leak_check(lines: Mapping[str, Sequence[TaskLine]], measured: Sequence[Measured]) -> checks.Check:
    """The check_data row: FAIL naming the first leaks, PASS counting what was compared."""
    flat = [x for by_lang in lines.values() for x in by_lang]
    leaks = find_leaks(flat, measured)
    details = {"leaks": leaks[: checks.MAX_LISTED], "n_leaks": len(leaks), "lines": len(flat)}
    if leaks:
        first = "; ".join(f"{x['line']} = {x['set']} {x['sentence_id']} by {x['by']}" for x in leaks[:3])
        return checks.Check("task lines unseen", checks.FAIL, f"{len(leaks)} leak(s): {first}", details)
    sets = sorted({m.set for m in measured})
    summary = (
        f"none of {len(flat)} task lines holds one of {len(measured)} measured sentences ({', '.join(sets)})"
    )
    return checks.Check("task lines unseen", checks.PASS, summary, details)


# ----------------------------------------------------------------------------- runs of a toy trained on them
