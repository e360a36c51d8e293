"""Data checks: each takes data already in memory and returns one `Check` (PASS, WARN or FAIL).

The checks are pure functions so that each can be run on small constructed bad data; the
loading of the real sets lives in check_data.py. Sets are dicts `{set name: {language: [texts]}}`
(or ids), with set names such as "selection", "evaluation", "sib200".
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence

META_FILE = "data_checks.json"  # the check_data stage's record: every check with its evidence
PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
_ORDER = {PASS: 0, WARN: 1, FAIL: 2}
MAX_LISTED = 50  # rows listed per problem in the JSON (counts are always complete)
LANGID_PASS = 0.90  # agreement at or above: PASS
LANGID_FAIL = 0.50  # agreement below: FAIL (a mislabelled block agrees ~0); in between: WARN
MIN_TOKENS = 2  # a text with fewer tokens predicts no next token (no ΔCE) and has no statistic token

Sets = Mapping[str, Mapping[str, Sequence[str]]]


@dataclass
class Check:
    """One check's outcome: `summary` is one line for the table; `details` is JSON-able evidence."""

    name: str
    status: str
    summary: str
    details: dict = field(default_factory=dict)


def worst(statuses: Sequence[str]) -> str:
    return max(statuses, key=_ORDER.__getitem__, default=PASS)


def _snippet(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def counts(sets: Sets, languages: Sequence[str], task_sets: Collection[str] = ()) -> Check:
    """Texts per language in each set: FAIL when a language has none; WARN when counts differ
    across languages (the sets are meant to be parallel). A set named in `task_sets` covers only
    the languages it has a key for (a task's data covers some languages); the others are listed
    under `not_covered`, and only a covered language with no texts FAILs."""
    table = {
        name: {
            lang: len(by_lang.get(lang, ())) for lang in languages if name not in task_sets or lang in by_lang
        }
        for name, by_lang in sets.items()
    }
    details = {
        "counts": table,
        "not_covered": {
            name: [lang for lang in languages if lang not in sets[name]] for name in sets if name in task_sets
        },
    }
    empty = [f"{name}/{lang}" for name, row in table.items() for lang, n in row.items() if n == 0]
    uneven = [name for name, row in table.items() if len(set(row.values())) > 1]
    if empty:
        return Check("counts", FAIL, f"no texts for {', '.join(empty[:5])}", details)
    if uneven:
        return Check("counts", WARN, f"counts differ across languages in {', '.join(uneven)}", details)
    return Check(
        "counts",
        PASS,
        "; ".join(f"{name} {next(iter(row.values()), 0)}/language" for name, row in table.items()),
        details,
    )


def disjoint(reference: str, sets: Sets) -> Check:
    """No text of set `reference` (e.g. selection) appears, in the same language, in any other set
    (exact text after stripping outer whitespace): features are never measured on the texts that
    chose them."""
    ref = sets[reference]
    overlaps = []
    for name, by_lang in sets.items():
        if name == reference:
            continue
        for lang, texts in by_lang.items():
            chosen = {t.strip() for t in ref.get(lang, ())}
            shared = [t for t in texts if t.strip() in chosen]
            if shared:
                overlaps.append(
                    {
                        "set": name,
                        "language": lang,
                        "n": len(shared),
                        "examples": [_snippet(t) for t in shared[:3]],
                    }
                )
    others = ", ".join(n for n in sets if n != reference)
    if overlaps:
        where = ", ".join(f"{o['set']}/{o['language']} ({o['n']})" for o in overlaps[:5])
        return Check("disjoint", FAIL, f"{reference} texts also in {where}", {"overlaps": overlaps})
    return Check("disjoint", PASS, f"{reference} shares no text with {others}", {"overlaps": []})


def clean_texts(sets: Sets) -> Check:
    """No empty (or whitespace-only) texts and no text twice within one language of one set."""
    problems = []
    for name, by_lang in sets.items():
        for lang, texts in by_lang.items():
            empty = [i for i, t in enumerate(texts) if not t.strip()]
            dup = [t for t, n in Counter(texts).items() if n > 1]
            if empty:
                problems.append(
                    {
                        "set": name,
                        "language": lang,
                        "problem": "empty",
                        "n": len(empty),
                        "rows": empty[:MAX_LISTED],
                    }
                )
            if dup:
                problems.append(
                    {
                        "set": name,
                        "language": lang,
                        "problem": "duplicate",
                        "n": len(dup),
                        "examples": [_snippet(t) for t in dup[:3]],
                    }
                )
    if problems:
        where = ", ".join(f"{p['n']} {p['problem']} in {p['set']}/{p['language']}" for p in problems[:5])
        return Check("clean texts", FAIL, where, {"problems": problems})
    return Check("clean texts", PASS, "no empty texts, no duplicates", {"problems": []})


def parallel_ids(ids: Mapping[str, Mapping[str, Sequence[str]]]) -> Check:
    """Within each set, every language lists the same sentence ids in the same order (the sets are
    translations of one another; joint bootstraps and paired comparisons rely on it)."""
    bad = []
    for name, by_lang in ids.items():
        langs = list(by_lang)
        if not langs:
            continue
        first = list(by_lang[langs[0]])
        for lang in langs[1:]:
            other = list(by_lang[lang])
            if other != first:
                pos = next(
                    (i for i, (a, b) in enumerate(zip(first, other)) if a != b), min(len(first), len(other))
                )
                bad.append(
                    {
                        "set": name,
                        "language": lang,
                        "against": langs[0],
                        "first_difference": pos,
                        "lengths": [len(first), len(other)],
                    }
                )
    if bad:
        b = bad[0]
        return Check(
            "parallel ids",
            FAIL,
            f"{b['set']}: {b['language']} and {b['against']} differ at row {b['first_difference']}",
            {"mismatches": bad},
        )
    return Check("parallel ids", PASS, f"ids align across languages in {', '.join(ids)}", {"mismatches": []})


def language_identity(
    sets: Sets, identify: Callable[[list[str]], list[str | None]], covered: Callable[[str], bool]
) -> Check:
    """Share of each language's texts that the offline identifier assigns to that language.

    PASS at >= LANGID_PASS for every covered language, FAIL below LANGID_FAIL for any (a
    mislabelled or swapped block), else WARN; languages the identifier does not know are listed.
    Every disagreeing row is listed (set, language, row, what it looks like, text)."""
    agreement, rows, uncovered = {}, [], set()
    for name, by_lang in sets.items():
        for lang, texts in by_lang.items():
            if not covered(lang):
                uncovered.add(lang)
                continue
            found = identify(list(texts))
            agreement.setdefault(name, {})[lang] = sum(f == lang for f in found) / max(len(found), 1)
            rows += [
                {"set": name, "language": lang, "row": i, "identified": f, "text": _snippet(t)}
                for i, (f, t) in enumerate(zip(found, texts))
                if f != lang
            ]
    shares = [(a, f"{name}/{lang}") for name, row in agreement.items() for lang, a in row.items()]
    details = {
        "agreement": agreement,
        "not_covered": sorted(uncovered),
        "disagreeing_rows": rows,
        "n_disagreeing": len(rows),
    }
    low = sorted(s for s in shares if s[0] < LANGID_PASS)
    status = FAIL if any(a < LANGID_FAIL for a, _ in shares) else WARN if (low or uncovered) else PASS
    summary = (
        f"lowest agreement {min(shares)[0]:.1%} ({min(shares)[1]}); {len(rows)} rows disagree"
        if shares
        else "no covered language"
    )
    if low:
        summary += "; below {:.0%}: {}".format(LANGID_PASS, ", ".join(f"{w} {a:.0%}" for a, w in low[:4]))
    if uncovered:
        summary += f"; not covered: {', '.join(sorted(uncovered))}"
    return Check("language identity", status, summary, details)


def token_lengths(
    sets: Sets, tokenize: Callable[[list[str]], list[list[int]]] | None, unavailable: str = ""
) -> Check:
    """Tokens per text per language with the preset's tokenizer; texts under MIN_TOKENS FAIL
    (they give no ΔCE and no ν statistic). WARN when the tokenizer is not available."""
    if tokenize is None:
        return Check("token lengths", WARN, f"skipped: tokenizer not available ({unavailable})", {})
    table, short = {}, []
    for name, by_lang in sets.items():
        for lang, texts in by_lang.items():
            n = [len(ids) for ids in tokenize(list(texts))]
            if n:
                table.setdefault(name, {})[lang] = {
                    "min": min(n),
                    "median": statistics.median(n),
                    "max": max(n),
                    "mean": sum(n) / len(n),
                }
            short += [
                {"set": name, "language": lang, "row": i, "tokens": k, "text": _snippet(t)}
                for i, (k, t) in enumerate(zip(n, texts))
                if k < MIN_TOKENS
            ]
    details = {"lengths": table, "short_texts": short[:MAX_LISTED], "n_short": len(short)}
    if short:
        return Check(
            "token lengths",
            FAIL,
            f"{len(short)} texts under {MIN_TOKENS} tokens "
            f"(first: {short[0]['set']}/{short[0]['language']} row {short[0]['row']})",
            details,
        )
    medians = [v["median"] for row in table.values() for v in row.values()]
    return Check(
        "token lengths",
        PASS,
        f"every text has >= {MIN_TOKENS} tokens; medians {min(medians):g}-{max(medians):g}",
        details,
    )


def xquad_items(squad: dict) -> list[dict]:
    """The question items of one XQuAD file (SQuAD v1.1 layout), each with its context."""
    return [
        {"id": qa["id"], "context": p["context"], "question": qa["question"], "answers": qa["answers"]}
        for article in squad["data"]
        for p in article["paragraphs"]
        for qa in p["qas"]
    ]


def xquad(files: Mapping[str, dict]) -> Check:
    """Every answer span matches its context at `answer_start` (the context kept exactly as stored,
    a leading BOM included: XQuAD's offsets count it), and the question ids are the same, in the
    same order, in every language."""
    if not files:
        return Check("xquad", WARN, "skipped: no XQuAD file for these languages", {})
    bad_spans, n = [], 0
    ids = {}
    for lang, squad in files.items():
        items = xquad_items(squad)
        ids[lang] = [it["id"] for it in items]
        for it in items:
            for a in it["answers"]:
                n += 1
                s = a["answer_start"]
                if it["context"][s : s + len(a["text"])] != a["text"]:
                    bad_spans.append(
                        {
                            "language": lang,
                            "id": it["id"],
                            "answer": a["text"],
                            "answer_start": s,
                            "at_offset": it["context"][s : s + len(a["text"])],
                        }
                    )
    order = parallel_ids({"xquad": ids})
    details = {
        "n_answers": n,
        "bad_spans": bad_spans[:MAX_LISTED],
        "n_bad_spans": len(bad_spans),
        "questions": {lang: len(v) for lang, v in ids.items()},
        "id_mismatches": order.details["mismatches"],
    }
    if bad_spans or order.status == FAIL:
        why = [f"{len(bad_spans)} of {n} answer spans do not match their offset"] if bad_spans else []
        why += [order.summary] if order.status == FAIL else []
        return Check("xquad", FAIL, "; ".join(why), details)
    return Check("xquad", PASS, f"{n} answer spans match; ids parallel in {', '.join(files)}", details)


def sib_labels(rows: Mapping[str, Sequence], categories: Sequence[str]) -> Check:
    """SIB-200 label counts per SIB split and language: FAIL when a split lacks a label, or when a
    language's counts differ from another's (the same sentences carry the same label everywhere)."""
    table = {}
    for lang, rs in rows.items():
        by_split: dict[str, Counter] = {}
        for r in rs:
            by_split.setdefault(r.split, Counter())[r.category] += 1
        table[lang] = {s: {c: c_.get(c, 0) for c in categories} for s, c_ in sorted(by_split.items())}
    if not table:
        return Check("sib200 labels", WARN, "skipped: no SIB-200 language", {})
    problems = [
        f"{lang}/{s} has no {c!r}"
        for lang, t in table.items()
        for s, cs in t.items()
        for c, k in cs.items()
        if k == 0
    ]
    first = next(iter(table))
    problems += [f"{lang} counts differ from {first}'s" for lang, t in table.items() if t != table[first]]
    unknown = sorted({r.category for rs in rows.values() for r in rs} - set(categories))
    problems += [f"unknown label {u!r}" for u in unknown]
    if problems:
        return Check("sib200 labels", FAIL, "; ".join(problems[:4]), {"counts": table, "problems": problems})
    summary = "; ".join(f"{s} " + "/".join(str(k) for k in cs.values()) for s, cs in table[first].items())
    return Check(
        "sib200 labels", PASS, f"same in every language: {summary}", {"counts": table, "problems": []}
    )


def label_balance(labels: Mapping[str, Sequence[int]], classes: Sequence[int]) -> Check:
    """After stratified sampling, each language has the same count of every class."""
    if not labels:
        return Check(
            "amazon balance",
            WARN,
            "skipped: Amazon reviews not in the local cache (offline) or no Amazon language",
            {},
        )
    table = {
        lang: {int(c): int(Counter(int(x) for x in v).get(c, 0)) for c in classes}
        for lang, v in labels.items()
    }
    uneven = [lang for lang, t in table.items() if len(set(t.values())) > 1]
    if uneven:
        return Check("amazon balance", FAIL, f"labels unbalanced in {', '.join(uneven)}", {"counts": table})
    return Check(
        "amazon balance",
        PASS,
        f"{next(iter(next(iter(table.values())).values()))} per label in {', '.join(table)}",
        {"counts": table},
    )


def format_table(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status  summary", "-" * (width + 40)]
    lines += [f"{c.name:<{width}}  {c.status:<6}  {c.summary}" for c in checks]
    return "\n".join(lines)
