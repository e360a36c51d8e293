"""FLORES texts: the paper's bundled selection/evaluation sets, or FLORES+ from the hub.

The selection set chooses features (nu-scores); the evaluation set measures ablations.
They are disjoint: never measure an ablation on the texts that chose its features.
"""

from __future__ import annotations

import difflib
import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from langsae.errors import UserError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SELECTION_FILE = DATA_DIR / "flores_deng2025" / "multilingual_data.jsonl.gz"
EVALUATION_FILE = DATA_DIR / "flores_deng2025" / "multilingual_data_test.jsonl.gz"
FLORES_PLUS_REPO = "openlanguagedata/flores_plus"

# The paper's ten languages, in the bundled files' block order; FLORES+ code -> bundled "lan".
BUNDLED = {
    "eng_Latn": "en", "spa_Latn": "es", "fra_Latn": "fr", "jpn_Jpan": "ja", "kor_Hang": "ko",
    "por_Latn": "pt", "tha_Thai": "th", "vie_Latn": "vi", "cmn_Hans": "zh", "arb_Arab": "ar",
}  # fmt: skip
PAPER_LANGUAGES = tuple(BUNDLED)

# FLORES+ language codes (ISO 639-3 + ISO 15924), for validation and "did you mean".
FLORES_PLUS_CODES = frozenset("""
ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn als_Latn amh_Ethi apc_Arab arb_Arab
arb_Latn ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl bam_Latn
ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl cat_Latn
ceb_Latn ces_Latn cjk_Latn ckb_Arab cmn_Hans cmn_Hant crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn
dzo_Tibt ekk_Latn ell_Grek eng_Latn epo_Latn eus_Latn ewe_Latn fao_Latn fij_Latn fil_Latn fin_Latn fon_Latn
fra_Latn fur_Latn fuv_Latn gaz_Latn gla_Latn gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr
hin_Deva hne_Deva hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan
kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab kas_Deva kat_Geor kaz_Cyrl kbp_Latn kea_Latn khk_Cyrl khm_Khmr
kik_Latn kin_Latn kir_Cyrl kmb_Latn kmr_Latn knc_Arab knc_Latn kon_Latn kor_Hang lao_Laoo lij_Latn lim_Latn
lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn lua_Latn lug_Latn luo_Latn lus_Latn lvs_Latn mag_Deva mai_Deva
mal_Mlym mar_Deva min_Arab min_Latn mkd_Cyrl mlt_Latn mni_Beng mos_Latn mri_Latn mya_Mymr nld_Latn nno_Latn
nob_Latn npi_Deva nso_Latn nus_Latn nya_Latn oci_Latn ory_Orya pag_Latn pan_Guru pap_Latn pbt_Arab pes_Arab
plt_Latn pol_Latn por_Latn prs_Arab quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Olck scn_Latn
shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn srd_Latn srp_Cyrl
ssw_Latn sun_Latn swe_Latn swh_Latn szl_Latn tam_Taml taq_Latn taq_Tfng tat_Cyrl tel_Telu tgk_Cyrl tha_Thai
tir_Ethi tpi_Latn tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn
urd_Arab uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant zgh_Tfng zsm_Latn
zul_Latn
""".split())
# Names users bring from FLORES-200 or ISO 639-1.
ALIASES = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant", **{v: k for k, v in BUNDLED.items()}}


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
    """Texts grouped by language, in the order of `languages`.

    ids[lang][i] is the sentence id of by_language[lang][i]: translations of one sentence carry
    the same id in every language, so statistics can resample sentences jointly across languages.
    """

    languages: tuple[str, ...]
    by_language: dict[str, list[str]]
    source: str  # where they came from, for metadata
    ids: dict[str, list[str]] = field(default_factory=dict)  # parallel to by_language

    def flat(self) -> tuple[list[str], list[int]]:
        """All texts in one list, and the language index of each."""
        texts, lang_ids = [], []
        for i, lang in enumerate(self.languages):
            texts += self.by_language[lang]
            lang_ids += [i] * len(self.by_language[lang])
        return texts, lang_ids

    def flat_ids(self) -> list[str]:
        """The sentence id of every text, in the order of flat()."""
        return [sid for lang in self.languages for sid in self.ids[lang]]


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _first_n(texts: list[str], n: int, lang: str, source: str) -> list[str]:
    if n == -1:
        return texts
    if n > len(texts):
        raise UserError(f"asked for {n} texts of {lang} but {source} has only {len(texts)}")
    return texts[:n]


def uses_bundled(languages: tuple[str, ...], split: str) -> bool:
    return split == "dev" and all(lang in BUNDLED for lang in languages)


def load_texts(languages: tuple[str, ...], which: str, n_per_lang: int, split: str = "dev") -> Texts:
    """Selection (`which="selection"`) or evaluation (`which="evaluation"`) texts per language.

    The paper's ten languages on the dev split come from the bundled files. Any other
    language set comes from FLORES+ on the hub, where the first 100 rows of the split are
    the selection set and the rest the evaluation set (same sizes as the bundled files).
    """
    if which not in ("selection", "evaluation"):
        raise ValueError(which)
    if uses_bundled(languages, split):
        path = SELECTION_FILE if which == "selection" else EVALUATION_FILE
        rows = _read_jsonl_gz(path)
        by_lang, ids = {}, {}
        for lang in languages:
            mine = [r for r in rows if r["lan"] == BUNDLED[lang]]
            by_lang[lang] = _first_n([r["text"] for r in mine], n_per_lang, lang, path.name)
            # the evaluation file's ids are parallel across languages; the selection file has
            # none, but its language blocks are in the same sentence order
            ids[lang] = [str(r["id"]) if "id" in r else f"sel:{k}" for k, r in enumerate(mine)][: len(by_lang[lang])]
        return Texts(tuple(languages), by_lang, f"bundled:{path.name}", ids)
    by_lang, ids = {}, {}
    start = 0 if which == "selection" else 100
    for lang in languages:
        rows = load_flores_plus(lang, split)
        texts = rows[:100] if which == "selection" else rows[100:]
        by_lang[lang] = _first_n(texts, n_per_lang, lang, f"FLORES+ {split} ({which})")
        ids[lang] = [f"{split}:{start + k}" for k in range(len(by_lang[lang]))]  # FLORES+ rows are parallel
    return Texts(tuple(languages), by_lang, f"hub:{FLORES_PLUS_REPO}:{split}:{which}", ids)


def load_flores_plus(lang: str, split: str) -> list[str]:
    """One language's texts from the gated FLORES+ dataset, in row order."""
    from langsae.hub import hf_token, hub_error_message

    token = hf_token()
    if token is None:
        raise UserError(
            f"{lang} is not bundled and {FLORES_PLUS_REPO} is gated: set HF_TOKEN or put "
            "[huggingface] token = hf_... in secrets.ini (accept the dataset's terms on the hub first)"
        )
    import datasets

    try:
        ds = datasets.load_dataset(FLORES_PLUS_REPO, lang, split=split, token=token)
    except Exception as e:  # datasets raises many types for network/auth problems
        raise UserError(hub_error_message(f"dataset {FLORES_PLUS_REPO} ({lang}, {split})", e)) from e
    return list(ds["text"])


# NTREX-128 (news, translated from one English source): the toy model's training text.
# FLORES is kept for selection and evaluation, so the toy never trains on what it is measured on.
NTREX_DIR = DATA_DIR / "ntrex128"
NTREX_NAMES = {
    "eng_Latn": "eng-US", "spa_Latn": "spa", "fra_Latn": "fra", "por_Latn": "por-BR", "jpn_Jpan": "jpn",
    "cmn_Hans": "zho-CN", "kor_Hang": "kor", "tha_Thai": "tha", "vie_Latn": "vie", "arb_Arab": "arb",
}  # fmt: skip


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
