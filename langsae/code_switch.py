"""Code-switching (the paper's Section 4): does a language's feature respond to a code-switched word?

The probe set (data/code_switch.jsonl, written for this project) has, per item, one sentence in
every language that ends in the same noun (a translation of one English sentence). The texts run:
  prefixed  prefix of language X + noun of language Y, for every X and Y (X == Y: the sentence
            itself; X != Y: a code-switched noun);
  alone     for every prefixed text (X, Y): a neutral one-token start (the tokenizer's BOS where
            it adds one, else `<|endoftext|>`, so the noun is never at position 0, which the
            project leaves out of activation statistics) + the noun's token ids exactly as they
            are in that (X, Y) text. Alone texts are built from token ids, never from text: the
            same noun is tokenised differently after different prefixes (Qwen3: "closed the 窗户"
            ends in `Ġç ª Ĺ æĪ·`, "窗户" on its own is `çªĹæĪ·`; 273 of the probe set's 720
            code-switched texts differ so from the noun tokenised alone), so every
            "after prefix − alone" contrast compares identical token ids, in every pair of languages.
The noun's tokens are found from the tokenizer's offset mapping (tokens whose character span
overlaps the noun's), never by counting tokens: in Japanese, Chinese and Thai there is no space
before the noun, and a token may straddle the prefix's last character and the noun's first.
Such a straddling token counts as a noun token, in the prefixed text and in the alone text cut
from it (reported per text as `straddles`; a token's own leading space, as in " book", is not
straddling).

At every layer each language's rank-r feature (by nu, from the nu stage's saved encoder rows) is
read at the SAE's read point (the MLP input for a transcoder) and averaged over the noun's tokens:
one number per text, layer and feature. From those, per item and language:
  prefix_feature (X's feature on the noun tokens, X = the prefix language):
      same_noun_after_prefix    X's noun after X's prefix
      other_nouns_after_prefix  mean over Y != X of Y's noun after X's prefix
      same_noun_alone           X's noun alone, with the ids it has in X's own sentence
      other_nouns_alone         mean over Y != X of Y's noun alone, with the ids it has after X's prefix
  noun_feature (Y's feature on Y's noun):
      own_noun_after_own_prefix              Y's noun in Y's own sentence
      own_noun_after_foreign_prefix          mean over X != Y of Y's noun after X's prefix
      own_noun_alone                         Y's noun alone, with the ids it has in Y's own sentence
      own_noun_alone_as_after_foreign_prefix mean over X != Y of Y's noun alone, with the ids it
                                             has after X's prefix
and the paired contrasts in CONTRASTS: each "after prefix − alone" contrast subtracts, text by
text, the alone text cut from the very prefixed text it is paired with (same item, X and Y), so
both sides hold identical noun token ids; `same_minus_other_after_prefix` compares different
nouns after one prefix, by design. Intervals resample items (the same draw for every
language: the items are translations, see langsae.stats.JointBootstrap).
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from langsae import stats
from langsae.data import DATA_DIR
from langsae.errors import UserError
from langsae.features import FeatureEncoder
from langsae.forward import MAX_TOKENS, Batch, collect_tokens, make_batches

PROBE_FILE = DATA_DIR / "code_switch.jsonl"
NEUTRAL_TOKEN = "<|endoftext|>"  # Qwen3's document separator: the nearest thing it has to a BOS

CASES = {
    "prefix_feature": (
        "same_noun_after_prefix",
        "other_nouns_after_prefix",
        "same_noun_alone",
        "other_nouns_alone",
    ),
    "noun_feature": (
        "own_noun_after_own_prefix",
        "own_noun_after_foreign_prefix",
        "own_noun_alone",
        "own_noun_alone_as_after_foreign_prefix",
    ),
}
# contrast -> (measure, minuend case, subtrahend case); each is paired item by item
CONTRASTS = {
    "context_on_foreign_nouns": ("prefix_feature", "other_nouns_after_prefix", "other_nouns_alone"),
    "same_minus_other_after_prefix": ("prefix_feature", "same_noun_after_prefix", "other_nouns_after_prefix"),
    "foreign_prefix_effect": (
        "noun_feature",
        "own_noun_after_foreign_prefix",
        "own_noun_alone_as_after_foreign_prefix",
    ),
}
# the contrast whose mean over languages picks the heatmap's layer
EFFECT = "context_on_foreign_nouns"
ALL_LANGUAGES = "mean"  # `language` of a row averaged over languages

# Artifact names, declared once for the stage, its report section and any other reader.
CACHE_DIR = "code_switching"  # in sae_features/<run>/: layer_<L>.pt + layer_<L>_done.json per layer
ITEMS_FILE = "code_switching_items.csv"  # these three and the meta in sae_features/<run>/
RESULTS_FILE = "code_switching_results.csv"
HEATMAP_FILE = "code_switching_heatmap.csv"
META_FILE = "code_switching_meta.json"
# figure stems in output/<run>/ (+ .png/.pdf): one line figure per measure of CASES, and the heatmap
LINE_FIGURES = {measure: f"code_switching_{measure}" for measure in CASES}
HEATMAP_FIGURE = "code_switching_heatmap"


# ----------------------------------------------------------------------------- probe set


@dataclass(frozen=True)
class ProbeSet:
    """prefix[i][lang], noun[i][lang]: item i's sentence in `lang` is prefix + noun; concepts[i] names
    the noun."""

    languages: tuple[str, ...]
    concepts: tuple[str, ...]
    prefix: tuple[dict[str, str], ...]
    noun: tuple[dict[str, str], ...]


def _read_items(path: Path) -> dict[int, dict[str, dict]]:
    """The probe file's rows by item and language, each checked (see load_probe_set)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"code-switching probe set {path} not found")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise UserError(
            f"code-switching probe set {path} has no items; give a JSON-lines file with --probe-file"
        )
    by_item: dict[int, dict[str, dict]] = {}
    for n, r in enumerate(rows, 1):
        s, a, b = r["sentence"], r["noun_start"], r["noun_end"]
        if s != r["prefix"] + r["noun"] or s[a:b] != r["noun"] or b != len(s) or not r["noun"].strip():
            raise UserError(
                f"{path} line {n}: sentence must be prefix + noun, with the noun's character offsets"
            )
        if unicodedata.normalize("NFC", s) != s:
            raise UserError(f"{path} line {n}: text is not in Unicode NFC form")
        if r["lang"] in by_item.setdefault(int(r["item"]), {}):
            raise UserError(f"{path} line {n}: item {r['item']} has {r['lang']} twice")
        by_item[int(r["item"])][r["lang"]] = r
    return by_item


def probe_languages(path: Path = PROBE_FILE) -> tuple[str, ...]:
    """The languages every item of the probe set has, sorted."""
    items = list(_read_items(path).values())
    return tuple(sorted(set.intersection(*(set(it) for it in items)))) if items else ()


def load_probe_set(path: Path = PROBE_FILE, languages: Sequence[str] | None = None) -> ProbeSet:
    """Read and check the probe set; every item must have every language asked for (default: all in the file).

    Each row: item, concept, gloss_en, lang, sentence, prefix, noun, noun_start, noun_end, with
    sentence == prefix + noun and sentence[noun_start:noun_end] == noun (NFC text).
    """
    by_item = _read_items(path)
    in_file = sorted({lang for item in by_item.values() for lang in item})
    languages = tuple(languages) if languages is not None else tuple(in_file)
    for i, item in sorted(by_item.items()):
        missing = [lang for lang in languages if lang not in item]
        if missing:
            raise UserError(
                f"code-switching item {i} has no {', '.join(missing)} in {path}; "
                f"its languages: {', '.join(sorted(item))}"
            )
    items = [by_item[i] for i in sorted(by_item)]
    return ProbeSet(
        languages,
        tuple(next(iter(it.values()))["concept"] for it in items),
        tuple({lang: it[lang]["prefix"] for lang in languages} for it in items),
        tuple({lang: it[lang]["noun"] for lang in languages} for it in items),
    )


@dataclass(frozen=True)
class Probe:
    """One text to run: item's noun in `noun_lang` after `prefix_lang`'s prefix (text[noun_start:noun_end]
    is the noun), or, when `alone`, that noun's token ids cut out of this very text and put after the
    neutral start (see tokenize_probes): the text is what the alone ids come from, not what runs."""

    item: int
    prefix_lang: str
    noun_lang: str
    text: str
    noun_start: int
    noun_end: int
    alone: bool = False


def build_probes(ps: ProbeSet) -> list[Probe]:
    """Every prefixed text (item x prefix language x noun language), then the alone text cut from each."""
    probes = []
    for i in range(len(ps.concepts)):
        for x in ps.languages:
            for y in ps.languages:
                p, n = ps.prefix[i][x], ps.noun[i][y]
                probes.append(Probe(i, x, y, p + n, len(p), len(p) + len(n)))
    return probes + [dataclasses.replace(p, alone=True) for p in probes]


# ----------------------------------------------------------------------------- tokens


def adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def neutral_start(tokenizer) -> tuple[list[int], str]:
    """(ids to put before a noun standing alone, what they are): the BOS where the tokenizer adds one to
    every text (as it does to the prefixed ones), else the one token NEUTRAL_TOKEN (or the EOS token if
    the vocabulary lacks it)."""
    if adds_bos(tokenizer):
        return [tokenizer.bos_token_id], f"the tokenizer's BOS {tokenizer.bos_token!r}"
    tid = tokenizer.convert_tokens_to_ids(NEUTRAL_TOKEN)
    if tid is not None and tid != tokenizer.unk_token_id:
        return [tid], repr(NEUTRAL_TOKEN)
    if tokenizer.eos_token_id is None:
        raise UserError(
            "the tokenizer has no BOS, no <|endoftext|> and no EOS token to start a noun standing alone"
        )
    return [tokenizer.eos_token_id], f"the EOS token {tokenizer.eos_token!r}"


def overlapping_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of tokens whose character span [s, e) (non-empty) overlaps [start, end)."""
    return [t for t, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


@dataclass(frozen=True)
class ProbeTokens:
    """token_ids[j] of probe j, noun_positions[j] its noun's token positions (never 0),
    straddles[j] whether its first noun token also covers a non-space character before the noun
    (a byte-level token's own leading space does not count; an alone probe has its text's flag)."""

    token_ids: list[list[int]]
    noun_positions: list[list[int]]
    straddles: list[bool]


def tokenize_probes(tokenizer, probes: Sequence[Probe]) -> ProbeTokens:
    """Tokenise each probe's text as `forward.tokenize` does and find its noun's tokens by offset mapping.
    An alone probe is then the neutral start + exactly those noun token ids (a straddling token
    included), so it holds the very ids its prefixed text has, whatever the tokenizer does at the
    boundary."""
    start_ids, _ = neutral_start(tokenizer)
    ids_all, positions, straddles = [], [], []
    for p in probes:
        enc = tokenizer(p.text, truncation=True, max_length=MAX_TOKENS, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        pos = overlapping_tokens(offsets, p.noun_start, p.noun_end)
        if not pos or pos[0] == 0:
            raise UserError(f"the noun of {p.text!r} has no tokens after position 0 (offsets {offsets})")
        straddles.append(bool(p.text[offsets[pos[0]][0] : p.noun_start].strip()))
        if p.alone:
            n = len(start_ids)
            ids, pos = start_ids + [ids[q] for q in pos], list(range(n, n + len(pos)))
        ids_all.append(ids)
        positions.append(pos)
    return ProbeTokens(ids_all, positions, straddles)


# ----------------------------------------------------------------------------- activations


@torch.no_grad()
def noun_activations(
    model, tokens: ProbeTokens, encoders: dict[int, FeatureEncoder], batch_size: int, pad_id: int
) -> dict[int, torch.Tensor]:
    """{layer: [n_probes, k] fp32}: each encoder's features averaged over each probe's noun tokens.

    One forward pass over the distinct probes (the shared engine, `forward.collect_tokens`; many alone
    texts repeat: a noun's ids are the same after most prefixes), keeping only noun tokens, at every
    layer's SAE read point (`encoder.read`).
    """
    distinct: dict[tuple, int] = {}
    pairs = zip(tokens.token_ids, tokens.noun_positions)
    which = [distinct.setdefault((tuple(ids), tuple(pos)), len(distinct)) for ids, pos in pairs]
    token_ids = [list(ids) for ids, _ in distinct]
    noun_mask = []
    for ids, pos in distinct:
        m = torch.zeros(len(ids), dtype=torch.bool)
        m[list(pos)] = True
        noun_mask.append(m)

    def keep(batch: Batch) -> torch.Tensor:
        mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        for row, j in enumerate(batch.indices):
            mask[row, : len(noun_mask[j])] = noun_mask[j]
        return mask

    batches = make_batches(token_ids, batch_size, pad_id)
    points = {str(L): enc.read for L, enc in encoders.items()}
    acts, text = collect_tokens(model, batches, points, keep, "forward (code-switching probes)")
    n = len(token_ids)
    count = torch.bincount(text, minlength=n).float()
    out = {}
    for L, enc in encoders.items():
        a = enc(acts[str(L)].to(enc.W_enc.device)).cpu()  # [n_tokens, k]
        out[L] = (torch.zeros(n, a.shape[1]).index_add_(0, text, a) / count[:, None])[which]
    return out


# ----------------------------------------------------------------------------- measures


def per_item_values(
    acts: np.ndarray, probes: Sequence[Probe], languages: Sequence[str], n_items: int
) -> dict[str, np.ndarray]:
    """Every case of CASES from one layer's noun activations, per item and language.

    acts: [n_probes, K], column k = language k's feature. Returns {case: [n_items, K]}, column =
    the prefix language (prefix_feature cases) or the noun language (noun_feature cases).
    """
    K = len(languages)
    li = {lang: k for k, lang in enumerate(languages)}
    # [after prefix | alone, item, prefix lang X, noun lang Y, feature]; alone: the ids of (X, Y)'s noun
    texts = np.full((2, n_items, K, K, K), np.nan)
    for j, p in enumerate(probes):
        texts[int(p.alone), p.item, li[p.prefix_lang], li[p.noun_lang]] = acts[j]
    k = np.arange(K)
    off = ~np.eye(K, dtype=bool)  # [X, Y]: X != Y
    # [item, X, Y]: X's feature (own) or Y's feature (noun) on Y's noun with the ids it has after X's prefix
    own_pre, own_alone = (t[:, k, :, k].transpose(1, 0, 2) for t in texts)
    noun_pre, noun_alone = (t[:, :, k, k] for t in texts)
    return {
        "same_noun_after_prefix": own_pre[:, k, k],
        "other_nouns_after_prefix": (own_pre * off).sum(2) / (K - 1),
        "same_noun_alone": own_alone[:, k, k],
        "other_nouns_alone": (own_alone * off).sum(2) / (K - 1),
        "own_noun_after_own_prefix": noun_pre[:, k, k],
        "own_noun_after_foreign_prefix": (noun_pre * off).sum(1) / (K - 1),
        "own_noun_alone": noun_alone[:, k, k],
        "own_noun_alone_as_after_foreign_prefix": (noun_alone * off).sum(1) / (K - 1),
    }


def pair_matrices(
    acts: np.ndarray, probes: Sequence[Probe], languages: Sequence[str], n_items: int
) -> dict[str, np.ndarray]:
    """Heatmap data of one layer: {"prefix_feature" | "noun_feature": [n_items, X, Y]}, the prefix
    language X's (or the noun language Y's) feature on Y's noun after X's prefix."""
    K = len(languages)
    li = {lang: k for k, lang in enumerate(languages)}
    out = {m: np.full((n_items, K, K), np.nan) for m in CASES}
    for j, p in enumerate(probes):
        if not p.alone:
            x, y = li[p.prefix_lang], li[p.noun_lang]
            out["prefix_feature"][p.item, x, y] = acts[j, x]
            out["noun_feature"][p.item, x, y] = acts[j, y]
    return out


@dataclass
class Measures:
    """Every case and contrast at every layer, resampled over items jointly for all languages.

    by_name[name]: Resampled with point [K, n_layers] (languages x layers) and reps [n_boot, K, n_layers];
    names: the cases of CASES and the contrasts of CONTRASTS.
    """

    layers: list[int]
    languages: tuple[str, ...]
    by_name: dict[str, stats.Resampled]
    n_items: int


def measures(
    values: dict[int, dict[str, np.ndarray]], languages: Sequence[str], seed: int, n_boot: int = stats.N_BOOT
) -> Measures:
    """values[layer][case]: [n_items, K] (from `per_item_values`). One bootstrap plan over items, shared by
    every language, layer and case, so contrasts and means over languages stay paired."""
    layers = sorted(values)
    K = len(languages)
    n_items = next(iter(values[layers[0]].values())).shape[0]
    item_ids = np.repeat(np.arange(n_items), K)
    groups = np.tile(np.arange(K), n_items)
    plan = stats.JointBootstrap(item_ids, groups, K, seed, n_boot)
    names = [c for cases in CASES.values() for c in dict.fromkeys(cases)]
    cols = np.stack(
        [np.stack([values[L][c].reshape(-1) for L in layers], axis=1) for c in names], axis=1
    )  # [N, C, layers]
    res = plan.means(cols.reshape(len(item_ids), -1))
    point = res.point.reshape(K, len(names), len(layers))
    reps = res.reps.reshape(res.reps.shape[0], K, len(names), len(layers))
    by_name = {c: stats.Resampled(point[:, i], reps[:, :, i]) for i, c in enumerate(names)}
    for name, (_, a, b) in CONTRASTS.items():
        by_name[name] = by_name[a] - by_name[b]
    return Measures(layers, tuple(languages), by_name, n_items)


def measure_of(name: str) -> str:
    return (
        next(m for m, cases in CASES.items() if name in cases)
        if name not in CONTRASTS
        else CONTRASTS[name][0]
    )


def effect_layer(m: Measures) -> tuple[int, dict[int, float]]:
    """The layer where EFFECT, averaged over languages, is largest (on all items: it only picks the
    heatmap's layer; every layer's value and CI is in the results table), and how often each layer
    wins across bootstrap replicates."""
    mean = m.by_name[EFFECT].mean(axis=0)  # point [layers], reps [n_boot, layers]
    best = m.layers[int(np.nanargmax(mean.point))]
    freq = stats.argmax_frequency(mean)
    return best, {L: float(f) for L, f in zip(m.layers, freq)}


def result_rows(m: Measures, features: dict[int, list[int]]) -> list[dict]:
    """The results table: one row per layer x measure x case (or contrast) x language, plus the mean over
    languages (language "mean"). features[layer][k]: language k's feature id."""
    rows = []
    for name, r in m.by_name.items():
        kind = "contrast" if name in CONTRASTS else "case"
        low, high = r.interval()
        mean = r.mean(axis=0)
        mlow, mhigh = mean.interval()
        for li, L in enumerate(m.layers):
            for k, lang in enumerate(m.languages):
                rows.append(
                    {
                        "layer": L,
                        "measure": measure_of(name),
                        "kind": kind,
                        "case": name,
                        "language": lang,
                        "feature": features[L][k],
                        "value": float(r.point[k, li]),
                        "ci_low": float(low[k, li]),
                        "ci_high": float(high[k, li]),
                        "n_items": m.n_items,
                    }
                )
            rows.append(
                {
                    "layer": L,
                    "measure": measure_of(name),
                    "kind": kind,
                    "case": name,
                    "language": ALL_LANGUAGES,
                    "feature": "",
                    "value": float(mean.point[li]),
                    "ci_low": float(mlow[li]),
                    "ci_high": float(mhigh[li]),
                    "n_items": m.n_items,
                }
            )
    return rows


def heatmap_rows(
    pairs: dict[str, np.ndarray], languages: Sequence[str], layer: int, seed: int, n_boot: int = stats.N_BOOT
) -> list[dict]:
    """Per prefix language X and noun language Y at one layer: mean over items of each measure's
    feature on Y's noun after X's prefix, with a CI over items. pairs: from `pair_matrices`."""
    rows = []
    n_items, K, _ = pairs["prefix_feature"].shape
    plan = stats.JointBootstrap(np.arange(n_items), np.zeros(n_items, dtype=int), 1, seed, n_boot)
    for measure, mat in pairs.items():
        r = plan.means(mat.reshape(n_items, K * K))[0]
        low, high = r.interval()
        for x in range(K):
            for y in range(K):
                q = x * K + y
                rows.append(
                    {
                        "layer": layer,
                        "measure": measure,
                        "prefix_lang": languages[x],
                        "noun_lang": languages[y],
                        "value": float(r.point[q]),
                        "ci_low": float(low[q]),
                        "ci_high": float(high[q]),
                        "n_items": n_items,
                    }
                )
    return rows


def item_rows(
    acts: dict[int, torch.Tensor],
    probes: Sequence[Probe],
    tokens: ProbeTokens,
    ps: ProbeSet,
    features: dict[int, list[int]],
) -> list[dict]:
    """Per-text values behind every number: one row per layer x probe x feature language (the prefix's
    and the noun's). `text` is after_prefix or alone; an alone row's prefix_lang names the text its
    noun ids were cut from, so (item, prefix_lang, noun_lang) finds both sides of a pair, and
    noun_token_ids shows they hold the same ids."""
    li = {lang: k for k, lang in enumerate(ps.languages)}
    rows = []
    for L in sorted(acts):
        a = acts[L].numpy()
        for j, p in enumerate(probes):
            noun_ids = " ".join(str(tokens.token_ids[j][q]) for q in tokens.noun_positions[j])
            for lang in dict.fromkeys([p.prefix_lang, p.noun_lang]):
                rows.append(
                    {
                        "layer": L,
                        "item": p.item,
                        "concept": ps.concepts[p.item],
                        "text": "alone" if p.alone else "after_prefix",
                        "prefix_lang": p.prefix_lang,
                        "noun_lang": p.noun_lang,
                        "feature_lang": lang,
                        "feature": features[L][li[lang]],
                        "activation": float(a[j, li[lang]]),
                        "noun_token_ids": noun_ids,
                        "n_noun_tokens": len(tokens.noun_positions[j]),
                        "straddles": int(tokens.straddles[j]),
                    }
                )
    return rows
