"""Check the data every stage reads: counts, disjointness, clean and parallel texts, language
identity, token lengths, XQuAD spans, SIB-200 labels, Amazon label balance.

Each check is PASS, WARN or FAIL, printed as one table and written with its evidence to
sae_features/<run>/data_checks.json (stages.write_meta's keys, with status, checks[{name, status,
summary, details}], sets, data_source, data and written). Exits non-zero when any check FAILs.

Sets checked, per language of --languages (all texts, not only the first N):
  selection   the nu stage's texts (--split); evaluation  Section 5's texts (disjoint from selection)
  sib200      SIB-200 topic-classification rows (downstream task), minus the selection sentences by id;
              checked against the selection by text
  xquad       data/xquad/ for the languages XQuAD has (en es ar th vi zh among the paper's): its
              distinct contexts, answer spans and parallel ids
  amazon      mteb/AmazonReviewsClassification (test split) when it is in the local HF cache: the
              sentiment task's stratified sample (--amazon-per-label)
The task sets (sib200, xquad, amazon) cover only some languages; the others are listed, not failed.
Language identity uses py3langid (model in the wheel, offline); token lengths use the preset's
tokenizer when it can be loaded (a WARN otherwise).
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

from langsae import checks, langid, tasks
from langsae.artifacts import preflight
from langsae.config import MODEL_FLAGS, build_parser, resolve
from langsae.data import (
    BUNDLED,
    DATA_DIR,
    PAPER_LANGUAGES,
    SIB_CATEGORIES,
    Texts,
    load_texts,
    read_sib200,
    sib200_languages,
    sib_id,
)
from langsae.errors import UserError
from langsae.forward import tokenize
from langsae.model import load_tokenizer
from langsae.provenance import data_record
from langsae.stages import Stage, finished, write_meta
from langsae.toy import task_text
from langsae.verdicts import Artifacts, cell, not_run

log = logging.getLogger(__name__)

XQUAD_DIR = DATA_DIR / "xquad"
NAME = "check-data"  # the stage's one name: its Stage and its record's "stage"
TASK_SETS = ("sib200", "xquad", "amazon")  # sets that cover only some languages


# the data alone: no model runs, no layer is read and the checks always rerun
UNUSED_FLAGS = ("--layers", "--n-texts-per-lang", *MODEL_FLAGS, "--force")


def parse_args(argv):
    p = build_parser(__doc__, ignored=UNUSED_FLAGS)
    g = p.add_argument_group("data checks")
    g.add_argument(
        "--amazon-per-label",
        type=int,
        default=40,
        help="reviews per star rating in the stratified Amazon sample checked "
        "(the sentiment task's --n-per-label)",
    )
    g.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="skip token lengths (no model files needed; the check is a WARN)",
    )
    return p.parse_args(argv)


def xquad_files(languages) -> dict[str, dict]:
    """XQuAD's SQuAD-layout JSON for each language that XQuAD has, keyed by FLORES+ code."""
    out = {}
    for lang in languages:
        path = XQUAD_DIR / f"xquad.{BUNDLED.get(lang, '-')}.json.gz"
        if path.exists():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                out[lang] = json.load(f)
    return out


def ids_by_origin(name: str, texts: Texts) -> dict[str, dict[str, list[str]]]:
    """A set's sentence ids per language, split by where the languages' texts come from: a mixed set
    (say spa_Latn from Deng's files and glg_Latn from SIB-200) is parallel within each source only."""
    groups: dict[str, dict[str, list[str]]] = {}
    for lang in texts.languages:
        groups.setdefault(texts.origins[lang], {})[lang] = texts.ids[lang]
    return {name if len(groups) == 1 else f"{name} ({origin})": by_lang for origin, by_lang in groups.items()}


def amazon_sample(
    languages, per_label: int, seed: int
) -> tuple[dict[str, list[str]], dict[str, list[int]], str]:
    """(texts, stars 1-5, why absent) of the sentiment task's own stratified sample per language
    (tasks.stratified_sample), from the local HF cache when offline ({} when absent); a language
    with too few reviews of a star keeps all its reviews, so the balance check fails and names it."""
    wanted = [lang for lang in languages if lang in tasks.AMAZON_CONFIGS]
    if not wanted:
        return {}, {}, "no Amazon language among --languages"
    texts, stars = {}, {}
    for lang in wanted:
        try:
            all_texts, all_stars = tasks.load_amazon(lang)
        except tasks.DatasetUnavailable:
            return {}, {}, "not cached"
        try:
            idx = tasks.stratified_sample(all_stars, per_label, seed)
        except UserError:
            idx = range(len(all_stars))
        texts[lang], stars[lang] = [all_texts[i] for i in idx], [all_stars[i] for i in idx]
    return texts, stars, ""


def xquad_contexts(files: dict[str, dict]) -> dict[str, list[str]]:
    """Each language's distinct XQuAD contexts, in file order (questions repeat across a few items,
    so the contexts are the task's texts checked for counts, leaks, duplicates and language)."""
    return {
        lang: list(dict.fromkeys(item["context"] for item in checks.xquad_items(squad)))
        for lang, squad in files.items()
    }


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=20)  # a JSON report of the data checks
    if args.amazon_per_label < 1:
        raise UserError("--amazon-per-label must be at least 1")
    langs = cfg.languages
    selection = load_texts(langs, "selection", -1, cfg.split)
    evaluation = load_texts(langs, "evaluation", -1, cfg.split)
    chosen = {sid for lang in langs for sid in selection.ids[lang]}
    sib_langs = [lang for lang in langs if lang in set(sib200_languages())]
    sib_rows = {lang: read_sib200(lang) for lang in sib_langs}
    sib_task = {
        lang: [r for r in rows if sib_id(r.index_id) not in chosen] for lang, rows in sib_rows.items()
    }
    xquad = xquad_files(langs)
    amazon_texts, amazon, amazon_why = amazon_sample(langs, args.amazon_per_label, cfg.seed)
    texts = {
        "selection": selection.by_language,
        "evaluation": evaluation.by_language,
        "sib200": {lang: [r.text for r in rows] for lang, rows in sib_task.items()},
    }
    texts |= {
        name: by_lang
        for name, by_lang in (("xquad", xquad_contexts(xquad)), ("amazon", amazon_texts))
        if by_lang
    }
    ids = {
        **ids_by_origin("selection", selection),
        **ids_by_origin("evaluation", evaluation),
        "sib200": {lang: [sib_id(r.index_id) for r in rows] for lang, rows in sib_task.items()},
    }

    tok, why = None, "--no-tokenizer"
    if not args.no_tokenizer:
        try:
            tokenizer = load_tokenizer(cfg.preset)
            tok = lambda t: tokenize(tokenizer, t)  # noqa: E731 - the pipeline's own tokenisation
        except UserError as e:
            why = str(e)

    print(f"run {cfg.run_name}: checking {len(langs)} languages ({cfg.split})")
    results = [
        checks.counts(texts, langs, task_sets=TASK_SETS),
        checks.disjoint("selection", texts),
        checks.clean_texts(texts),
        checks.parallel_ids(ids),
        checks.language_identity(texts, langid.identify, langid.covers),
        checks.token_lengths({"selection": texts["selection"], "evaluation": texts["evaluation"]}, tok, why),
        checks.xquad(xquad),
        checks.sib_labels(sib_rows, SIB_CATEGORIES),
        checks.label_balance(amazon, range(1, 6)),
    ]
    if amazon_why and not amazon:
        results[-1].summary += f" ({amazon_why})"
    trained = task_text.trained_lines(Path(cfg.preset.model_id).parent / "build.json")
    if trained is not None:  # a toy trained on task lines: none of them may be a text any stage measures
        results.append(task_text.leak_check(trained, task_text.measured_sets(PAPER_LANGUAGES)))
    status = checks.worst([c.status for c in results])
    path = cfg.features_dir / checks.META_FILE
    settings = {
        "amazon_per_label": args.amazon_per_label,
        "no_tokenizer": args.no_tokenizer,
        "seed": cfg.seed,
    }
    write_meta(
        path,
        cfg,
        NAME,
        settings,
        [],
        status=status,
        checks=[vars(c) for c in results],
        sets={k: {lang: len(v) for lang, v in s.items()} for k, s in texts.items()},
        data_source=selection.source,
        data=data_record(cfg, (selection, evaluation), {"qa": xquad, "topic": sib_rows, "sentiment": amazon}),
        written=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    print(checks.format_table(results))
    print(f"details: {path}")
    failed = [c.name for c in results if c.status == checks.FAIL]
    if failed:
        raise UserError(f"data check(s) failed: {', '.join(failed)}; the evidence is in {path}")
    return finished(cfg, len(results), 0, "check")


# ----------------------------------------------------------------------------- claims and report section


def data_section(a: Artifacts) -> list[str]:
    record = a.json(checks.META_FILE)
    if record is None:
        return not_run("Data checks", a, None, "python check_data.py")
    lines = [
        "## Data checks",
        "",
        f"Overall: **{record['status']}** (details in `{checks.META_FILE}`).",
        "",
        "| check | status | summary |",
        "|---|---|---|",
    ]
    lines += [f"| {c['name']} | {c['status']} | {cell(c['summary'])} |" for c in record["checks"]]
    return lines + [""]


STAGE = Stage(
    NAME,
    "check_data.py",
    "(data checks)",
    main,
    report=data_section,
    meta=checks.META_FILE,
)
