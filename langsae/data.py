"""FLORES texts by FLORES+ language code: selection sets choose features, evaluation sets measure them.

The selection set chooses features (nu-scores); the evaluation set measures ablations.
They are disjoint: never measure an ablation on the texts that chose its features.

Where a language's texts come from (the first rule that applies):
1. The paper's ten languages on the dev split: Deng et al.'s own files (data/flores_deng2025/),
   exactly as the paper used them: 100 selection and 897 evaluation sentences per language.
2. Any language in SIB-200 (data/sib200/, 205 languages; the ten too, on devtest): SIB_RULE.
3. Otherwise FLORES+ from the hub (gated, needs a token): the first 100 rows of the split
   select, the rest evaluate.
A mixed set (say the ten plus glg_Latn) takes each language from its own source; sentence ids
(Texts.ids, see SENTENCE_IDS) say which texts are translations of one another.
"""

from __future__ import annotations

import csv
import difflib
import functools
import gzip
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from langsae.errors import UserError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SELECTION_FILE = DATA_DIR / "flores_deng2025" / "multilingual_data.jsonl.gz"
EVALUATION_FILE = DATA_DIR / "flores_deng2025" / "multilingual_data_test.jsonl.gz"
SIB_DIR = DATA_DIR / "sib200"
FLORES_PLUS_REPO = "openlanguagedata/flores_plus"
# The commit every load asks for, so a run says which FLORES+ it read (recorded in each stage's meta).
# Not checked against the hub from here (no access): it is the commit that several public projects pin
# as FLORES+ v4.6. To move it, look up the hub's history and change this line (caches are per revision).
FLORES_PLUS_REVISION = "5fec6c13f9e5a4db2f745d4ec0d7c9721ddc4f06"

# The paper's ten languages, in the bundled files' block order; FLORES+ code -> bundled "lan".
BUNDLED = {
    "eng_Latn": "en",
    "spa_Latn": "es",
    "fra_Latn": "fr",
    "jpn_Jpan": "ja",
    "kor_Hang": "ko",
    "por_Latn": "pt",
    "tha_Thai": "th",
    "vie_Latn": "vi",
    "cmn_Hans": "zh",
    "arb_Arab": "ar",
}
PAPER_LANGUAGES = tuple(BUNDLED)

SELECTION_SIZE = 100  # selection sentences per language, as in the paper's selection file
FLORES_DEV_SIZE = 997  # FLORES-200 dev has 997 sentences; SIB's index_id continues into devtest at 997
SPLITS = ("dev", "devtest")

SIB_RULE = """\
SIB-200 rule: take the language's SIB-200 sentences of the FLORES-200 split asked for (dev:
index_id < 997; devtest: index_id >= 997; SIB's own train/dev/test labels play no part), sorted
by index_id. The selection set is the first 100; the evaluation set is the rest, minus the
sentences of Deng et al.'s selection set (found by exact English text: 10 of them fall there),
so that in a mixed set no language is measured on a sentence that chose the ten's features.
index_id is the same sentence in every language, so these sets are parallel across all SIB
languages. dev: 510 sentences -> 100 selection + 400 evaluation; devtest: 494 -> 100 + 394.
Not excluded, in a mixed set: 64 of the 100 SIB selection sentences are, in translation, in
Deng's evaluation set of the ten (their ids show it); Deng's sets stay exactly the paper's."""

SENTENCE_IDS = """\
Sentence ids (Texts.ids): equal ids are the same sentence, in any language. `sib:<k>` is
FLORES-200 sentence k as SIB-200 numbers it (index_id). Every SIB text has one, and so does
every text of Deng's files whose English sentence is in SIB-200 (exact text; 46 selection and
464 evaluation sentences, the same in all ten languages). The other Deng texts keep ids local
to their file, parallel across the ten: `sel:<row within the language's block>` (the selection
file is parallel in row order) and `eval:<id>` (the evaluation file's own `id`). FLORES+ hub
texts get `hub:<split>:<row>`, parallel among hub languages only."""

MIXED_SOURCES = "parallel within each source; across sources only where sentence ids match"

# FLORES+ language codes (ISO 639-3 + ISO 15924), for validation and "did you mean".
FLORES_PLUS_CODES = frozenset(
    """
ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn als_Latn amh_Ethi apc_Arab arb_Arab
arb_Latn arg_Latn ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl
bam_Latn ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn brx_Deva bug_Latn
bul_Cyrl cat_Latn ceb_Latn ces_Latn chv_Cyrl cjk_Latn ckb_Arab cmn_Hans cmn_Hant crh_Latn cym_Latn dan_Latn
dar_Cyrl deu_Latn dgo_Deva dik_Latn dyu_Latn dzo_Tibt ekk_Latn ell_Grek eng_Latn epo_Latn eus_Latn ewe_Latn
fao_Latn fij_Latn fil_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn gaz_Latn gla_Latn gle_Latn glg_Latn
gom_Deva grn_Latn gug_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva hne_Deva hrv_Latn hun_Latn hye_Armn
ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan kaa_Latn kab_Latn kac_Latn kam_Latn kan_Knda
kas_Arab kas_Deva kat_Geor kaz_Cyrl kbp_Latn kea_Latn khk_Cyrl khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn
kmr_Latn knc_Arab knc_Latn kon_Latn kor_Hang ktu_Latn lao_Laoo lij_Latn lim_Latn lin_Latn lit_Latn lld_Latn
lmo_Latn ltg_Latn ltz_Latn lua_Latn lug_Latn luo_Latn lus_Latn lvs_Latn mag_Deva mai_Deva mal_Mlym mar_Deva
mfe_Latn mhr_Cyrl min_Arab min_Latn mkd_Cyrl mlt_Latn mni_Beng mni_Mtei mos_Latn mri_Latn mya_Mymr myv_Cyrl
nld_Latn nno_Latn nob_Latn npi_Deva nqo_Nkoo nso_Latn nus_Latn nya_Latn oci_Latn ory_Orya pag_Latn pan_Guru
pap_Latn pbt_Arab pes_Arab plt_Latn pol_Latn por_Latn prs_Arab quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn
san_Deva sat_Olck scn_Latn shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn sna_Latn snd_Arab snd_Deva som_Latn
sot_Latn spa_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn szl_Latn tam_Taml taq_Latn taq_Tfng
tat_Cyrl tel_Telu tgk_Cyrl tha_Thai tir_Ethi tpi_Latn tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn
tyv_Cyrl tzm_Tfng uig_Arab ukr_Cyrl umb_Latn urd_Arab uzn_Latn uzs_Arab vec_Latn vie_Latn vmw_Latn war_Latn
wol_Latn wuu_Hans xho_Latn ydd_Hebr yor_Latn yue_Hant zgh_Tfng zsm_Latn zul_Latn
""".split()
)
# SIB-200 names its files by FLORES-200 code; FLORES+ renamed these four languages.
SIB_TO_FLORES_PLUS = {
    "zho_Hans": "cmn_Hans",
    "zho_Hant": "cmn_Hant",
    "est_Latn": "ekk_Latn",
    "tgl_Latn": "fil_Latn",
}
FLORES_PLUS_TO_SIB = {v: k for k, v in SIB_TO_FLORES_PLUS.items()}
SIB_CATEGORIES = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)

# Names users bring from FLORES-200 or ISO 639-1.
ALIASES = {**SIB_TO_FLORES_PLUS, **{v: k for k, v in BUNDLED.items()}}


def validate_languages(codes: list[str]) -> list[str]:
    """Check FLORES+ codes; an unknown one is a one-line error that lists close matches."""
    if not codes:
        raise UserError("--languages is empty; give comma-separated FLORES+ codes such as eng_Latn,fra_Latn")
    out = []
    for code in codes:
        if code in FLORES_PLUS_CODES:
            out.append(code)
            continue
        close = difflib.get_close_matches(code, FLORES_PLUS_CODES, n=4, cutoff=0.5)
        close += [c for c in FLORES_PLUS_CODES if c.lower() == code.lower() and c not in close]
        if code in ALIASES:
            close.insert(0, ALIASES[code])
        hint = f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""
        raise UserError(f"unknown language code {code!r} (FLORES+ codes look like eng_Latn){hint}")
    if len(set(out)) != len(out):
        raise UserError("--languages lists a language twice")
    return out


@dataclass(frozen=True)
class Texts:
    """Texts grouped by language, in the order of `languages`, with a sentence id per text."""

    languages: tuple[str, ...]
    by_language: dict[str, list[str]]
    source: str  # where they came from, for metadata
    ids: dict[str, list[str]] = field(default_factory=dict)  # parallel to by_language; see SENTENCE_IDS
    origins: dict[str, str] = field(
        default_factory=dict
    )  # language -> DENG, SIB or HUB; ids are parallel within one origin
    files: tuple[Path, ...] = ()  # the bundled files they were read from (source_files)
    hub: dict[str, str] = field(default_factory=dict)  # hub dataset -> the revision read

    def flat(self) -> tuple[list[str], list[int]]:
        """All texts in one list, and the language index of each."""
        texts, lang_ids = [], []
        for i, lang in enumerate(self.languages):
            texts += self.by_language[lang]
            lang_ids += [i] * len(self.by_language[lang])
        return texts, lang_ids

    def flat_ids(self) -> list[str]:
        """The sentence id of each text of `flat()`, in the same order."""
        return [sid for lang in self.languages for sid in self.ids[lang]]


# ----------------------------------------------------------------------------- SIB-200


class SibRow(NamedTuple):
    """One row of a SIB-200 file."""

    split: str  # SIB's own topic-classification split (train/dev/test), not FLORES's
    index_id: int  # FLORES-200 sentence: 0-996 dev, 997-2008 devtest; the same sentence in every language
    category: str  # one of SIB_CATEGORIES
    text: str  # exactly as stored (a few begin or end with spaces)


def sib_file(lang: str) -> Path:
    """The bundled SIB-200 file of a FLORES+ code (which may not exist: see sib200_languages)."""
    return SIB_DIR / f"{FLORES_PLUS_TO_SIB.get(lang, lang)}.tsv.gz"


def sib200_languages() -> tuple[str, ...]:
    """FLORES+ codes of the bundled SIB-200 languages, sorted."""
    names = (p.name.removesuffix(".tsv.gz") for p in SIB_DIR.glob("*.tsv.gz"))
    return tuple(sorted(SIB_TO_FLORES_PLUS.get(n, n) for n in names))


def read_sib200(lang: str) -> list[SibRow]:
    """Every row of one language's SIB-200 file (FLORES+ code, e.g. cmn_Hans), in file order."""
    path = sib_file(lang)
    if not path.exists():
        raise UserError(f"{lang} is not in the bundled SIB-200 ({SIB_DIR}); see sib200_languages()")
    # The files are CSV-quoted (a text containing a quote is wrapped in quotes): split("\t") would be wrong.
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return [
            SibRow(r["split"], int(r["index_id"]), r["category"], r["text"])
            for r in csv.DictReader(f, delimiter="\t")
        ]


def sib_id(index_id: int) -> str:
    """The sentence id of FLORES-200 sentence `index_id` (SIB numbering), the same in every language."""
    return f"sib:{index_id}"


def _in_split(index_id: int, split: str) -> bool:
    return index_id < FLORES_DEV_SIZE if split == "dev" else index_id >= FLORES_DEV_SIZE


def _sib_index_by_text(lang: str) -> dict[str, int]:
    """Text -> index_id, for texts that occur once (a repeated text names no single sentence)."""
    rows = read_sib200(lang)
    counts = Counter(r.text for r in rows)
    return {r.text: r.index_id for r in rows if counts[r.text] == 1}


def _load_sib(languages: list[str], which: str, split: str) -> dict[str, tuple[list[str], list[str]]]:
    """Texts and ids by SIB_RULE."""
    out = {}
    for lang in languages:
        rows = sorted(
            (r for r in read_sib200(lang) if _in_split(r.index_id, split)), key=lambda r: r.index_id
        )
        if which == "selection":
            rows = rows[:SELECTION_SIZE]
        else:
            taken = _deng_selection_sib_ids()
            rows = [r for r in rows[SELECTION_SIZE:] if sib_id(r.index_id) not in taken]
        out[lang] = [r.text for r in rows], [sib_id(r.index_id) for r in rows]
    return out


# ----------------------------------------------------------------------------- Deng et al.'s files


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _deng_path(which: str) -> Path:
    return SELECTION_FILE if which == "selection" else EVALUATION_FILE


def _deng_blocks(path: Path) -> dict[str, list[tuple[str, str]]]:
    """One Deng file's rows per bundled `lan`, as (file-local sentence id, text), in file order."""
    blocks: dict[str, list[tuple[str, str]]] = {}
    for r in _read_jsonl_gz(path):
        block = blocks.setdefault(r["lan"], [])
        # The evaluation file numbers its sentences (the same "id" in all ten languages); the
        # selection file does not, but its language blocks are parallel row by row.
        block.append((f"eval:{r['id']}" if "id" in r else f"sel:{len(block)}", r["text"]))
    return blocks


def _to_sib_ids(blocks: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """File-local id -> `sib:<index_id>`, for sentences whose English text is in SIB-200.

    Matching the English block is enough: the file-local ids are parallel across the ten
    (checked in the tests on a second language).
    """
    english = _sib_index_by_text("eng_Latn")
    return {local: sib_id(english[text]) for local, text in blocks["en"] if text in english}


@functools.lru_cache(maxsize=1)
def _deng_selection_sib_ids() -> frozenset[str]:
    """Ids of Deng's selection sentences that SIB-200 also has (46): kept out of SIB evaluation sets."""
    return frozenset(_to_sib_ids(_deng_blocks(SELECTION_FILE)).values())


def _load_deng(languages: list[str], which: str, split: str) -> dict[str, tuple[list[str], list[str]]]:
    """The paper's texts in file order, with ids by SENTENCE_IDS."""
    blocks = _deng_blocks(_deng_path(which))
    canonical = _to_sib_ids(blocks)
    out = {}
    for lang in languages:
        block = blocks[BUNDLED[lang]]
        out[lang] = [text for _, text in block], [canonical.get(local, local) for local, _ in block]
    return out


# ----------------------------------------------------------------------------- FLORES+ on the hub

TOKEN_HELP = (
    "set HF_TOKEN or put [huggingface] token = hf_... in secrets.ini "
    "(accept the dataset's terms on the hub first)"
)


def _not_bundled(languages: list[str], why: str) -> str:
    return (
        f"not bundled (in neither Deng et al.'s files nor SIB-200): {', '.join(languages)}; "
        f"these need the gated hub dataset {FLORES_PLUS_REPO} at revision {FLORES_PLUS_REVISION}: {why}"
    )


def _load_hub(languages: list[str], which: str, split: str) -> dict[str, tuple[list[str], list[str]]]:
    """FLORES+ for languages bundled nowhere; one error line names every language that fails."""
    from langsae.hub import hf_token

    if hf_token() is None:
        raise UserError(_not_bundled(languages, TOKEN_HELP))
    out, failed, first_error = {}, [], None
    for lang in languages:
        try:
            rows = load_flores_plus(lang, split)
        except UserError as e:  # keep going: the error should name every language that fails
            failed.append(lang)
            first_error = first_error or e
            continue
        rows = list(enumerate(rows))
        part = rows[:SELECTION_SIZE] if which == "selection" else rows[SELECTION_SIZE:]
        out[lang] = [text for _, text in part], [f"hub:{split}:{i}" for i, _ in part]
    if failed:
        cause = first_error.__cause__ or first_error
        why = (
            f"loading failed ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0][:160] if str(cause) else ''})"
        )
        raise UserError(
            _not_bundled(failed, f"{why}; offline, it must already be in the local Hugging Face cache")
        )
    return out


def load_flores_plus(lang: str, split: str) -> list[str]:
    """One language's texts from the gated FLORES+ dataset, in row order."""
    from langsae.hub import hf_token, hub_error_message

    token = hf_token()
    if token is None:
        raise UserError(f"{lang} is not bundled and {FLORES_PLUS_REPO} is gated: {TOKEN_HELP}")
    import datasets

    try:
        ds = datasets.load_dataset(
            FLORES_PLUS_REPO, lang, split=split, revision=FLORES_PLUS_REVISION, token=token
        )
    except Exception as e:  # datasets raises many types for network/auth problems
        what = f"dataset {FLORES_PLUS_REPO} at revision {FLORES_PLUS_REVISION} ({lang}, {split})"
        raise UserError(hub_error_message(what, e)) from e
    return list(ds["text"])


# ----------------------------------------------------------------------------- selection and evaluation sets

DENG, SIB, HUB = "deng2025", "sib200", "hub"
# The hub goes first: its errors should come before any other work.
_LOADERS = {HUB: _load_hub, DENG: _load_deng, SIB: _load_sib}


def text_origin(lang: str, split: str) -> str:
    """DENG, SIB or HUB: where `lang`'s texts come from on `split` (the module docstring's rules)."""
    if split == "dev" and lang in BUNDLED:
        return DENG
    return SIB if sib_file(lang).exists() else HUB


def uses_bundled(languages: tuple[str, ...], split: str) -> bool:
    """True when every language comes from the paper's own files."""
    return all(text_origin(lang, split) == DENG for lang in languages)


def _source_label(origin: str, which: str, split: str) -> str:
    if origin == DENG:
        return f"bundled:{_deng_path(which).name}"
    if origin == SIB:
        return f"sib200:{split}:{which}"
    return f"hub:{FLORES_PLUS_REPO}:{split}:{which}"


def _describe(origins: dict[str, str], which: str, split: str) -> str:
    """`Texts.source`: one label per source; a mixed set names each source's languages."""
    groups = {o: [lang for lang, og in origins.items() if og == o] for o in dict.fromkeys(origins.values())}
    if len(groups) == 1:
        return _source_label(next(iter(groups)), which, split)
    parts = [f"{_source_label(o, which, split)}[{','.join(langs)}]" for o, langs in groups.items()]
    return f"{' + '.join(parts)} ({MIXED_SOURCES})"


def _first_n(texts: list[str], n: int, lang: str, source: str) -> list[str]:
    if n == -1:
        return texts
    if n > len(texts):
        raise UserError(f"asked for {n} texts of {lang} but {source} has only {len(texts)}")
    return texts[:n]


def load_texts(languages: tuple[str, ...], which: str, n_per_lang: int, split: str = "dev") -> Texts:
    """Selection (`which="selection"`) or evaluation (`which="evaluation"`) texts per language.

    Each language comes from its own source (module docstring); `n_per_lang` takes the first N
    of each (-1 = all). Languages bundled nowhere need the hub: without it, one error names them all.
    """
    if which not in ("selection", "evaluation"):
        raise ValueError(which)
    if split not in SPLITS:
        raise ValueError(split)
    origins = {lang: text_origin(lang, split) for lang in languages}
    loaded = {}
    for origin, loader in _LOADERS.items():
        group = [lang for lang in languages if origins[lang] == origin]
        if group:
            loaded.update(loader(group, which, split))
    by_lang, ids = {}, {}
    for lang in languages:
        texts, sids = loaded[lang]
        by_lang[lang] = _first_n(texts, n_per_lang, lang, _source_label(origins[lang], which, split))
        ids[lang] = sids[: len(by_lang[lang])]
    files, hub = source_files(languages, which, split)
    return Texts(tuple(languages), by_lang, _describe(origins, which, split), ids, origins, tuple(files), hub)


def source_files(languages, which: str, split: str) -> tuple[list[Path], dict[str, str]]:
    """The bundled files and the hub datasets (repo -> revision) that `load_texts(languages, which, n,
    split)` reads, whatever n: Deng's file and SIB's English (for sentence ids); a SIB language's
    file, plus Deng's selection file and SIB's English when evaluating (SIB_RULE's exclusions)."""
    files, hub = [], {}
    for lang in languages:
        origin = text_origin(lang, split)
        if origin == DENG:
            files += [_deng_path(which), sib_file("eng_Latn")]
        elif origin == SIB:
            files.append(sib_file(lang))
            if which == "evaluation":
                files += [SELECTION_FILE, sib_file("eng_Latn")]
        else:
            hub[FLORES_PLUS_REPO] = FLORES_PLUS_REVISION
    return list(dict.fromkeys(files)), hub


# NTREX-128 (news, translated from one English source): the toy model's training text.
# FLORES is kept for selection and evaluation, so the toy never trains on what it is measured on.
NTREX_DIR = DATA_DIR / "ntrex128"
NTREX_NAMES = {
    "eng_Latn": "eng-US",
    "spa_Latn": "spa",
    "fra_Latn": "fra",
    "por_Latn": "por-BR",
    "jpn_Jpan": "jpn",
    "cmn_Hans": "zho-CN",
    "kor_Hang": "kor",
    "tha_Thai": "tha",
    "vie_Latn": "vie",
    "arb_Arab": "arb",
}


def ntrex_file(lang: str) -> Path:
    """The bundled NTREX-128 file of a FLORES+ language code."""
    if lang not in NTREX_NAMES:
        raise UserError(f"no bundled NTREX-128 text for {lang}; bundled: {', '.join(NTREX_NAMES)}")
    return NTREX_DIR / f"newstest2019-ref.{NTREX_NAMES[lang]}.txt.gz"


def load_ntrex(languages) -> dict[str, list[str]]:
    """NTREX-128 sentences per FLORES+ language code, in file order, blank lines dropped."""
    out = {}
    for lang in languages:
        with gzip.open(ntrex_file(lang), "rt", encoding="utf-8") as f:
            out[lang] = [line.strip() for line in f if line.strip()]
    return out
