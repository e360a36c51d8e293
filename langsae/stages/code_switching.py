"""Code-switching (Section 4): a language's feature on a code-switched noun, at every layer.

Runs the project's probe set (data/code_switch.jsonl: per item, one sentence per language ending in
the same noun) with every prefix language X and every noun language Y, and, for each such text, its
noun alone: a neutral one-token start + the noun's token ids exactly as they are in that text (cut
from its ids, never retokenised), so every "after prefix − alone" contrast compares identical ids.
At every layer it reads each language's top feature (the nu stage's saved
encoder rows, at the SAE's read point: the MLP input for a transcoder) on the noun's tokens, found
by offset mapping. Writes:
  sae_features/<run>/code_switching/layer_L.pt     per-probe noun activations (cache, keyed by a config
                                                   hash; layer_L_done.json: its size and SHA-256, checked
                                                   on reuse)
  sae_features/<run>/code_switching_items.csv      per layer x probe x feature language (every number's
                                                   source)
  sae_features/<run>/code_switching_results.csv    per layer x case/contrast x language, 95% CI over items
  sae_features/<run>/code_switching_heatmap.csv    prefix language x noun language at the layer of largest
                                                   effect
  sae_features/<run>/code_switching_meta.json
  output/<run>/code_switching_prefix_feature.*, code_switching_noun_feature.*, code_switching_heatmap.*
Cached layers are reused on a rerun (--force recomputes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from langsae import code_switch, distributed, features, plots, stats
from langsae import section5 as s5lib
from langsae.artifacts import (
    cached_sha256,
    config_hash,
    preflight,
    read_json,
    read_torch,
    save_csv,
    save_json,
    save_torch,
)
from langsae.config import build_parser, resolve
from langsae.errors import CorruptArtifact, SkippedTask, UserError
from langsae.model import check_layers, load_model, load_tokenizer, model_config, placement
from langsae.provenance import data_record
from langsae.stages import Stage, finished, work, write_meta
from langsae.units import claim_batches, claim_file
from langsae.verdicts import (
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    combine,
    images,
    interval_verdict,
    listing,
    not_run,
    short,
    table,
    value_ci,
)

log = logging.getLogger(__name__)

STAGE_NAME = "code-switching"


def parse_args(argv):
    p = build_parser(__doc__)
    g = p.add_argument_group("code switching")
    g.add_argument(
        "--rank",
        type=int,
        default=1,
        help="follow each language's feature at this nu rank (1 = top-1, the paper's)",
    )
    g.add_argument(
        "--probe-file",
        type=Path,
        default=code_switch.PROBE_FILE,
        help="the probe set: JSON lines {item, concept, gloss_en, lang, sentence, prefix, noun, "
        "noun_start, noun_end}",
    )
    return p.parse_args(argv)


REMAKE = "code_switching.py --force"  # never shown: a cache file that cannot be read is recomputed


def cache_marker(path: Path) -> Path:
    """The done marker of a layer's cache file: its config hash and the file's size and SHA-256."""
    return path.with_name(f"{path.stem}_done.json")


def save_cached_layer(path: Path, chash: str, entry: dict) -> None:
    """Write a layer's cache file, then its marker (last: the layer is done), so that a file damaged
    later, even silently (same size), fails verification and is recomputed."""
    record = save_torch({"config_hash": chash, **entry}, path)
    save_json({"config_hash": chash, "file": record}, cache_marker(path))


def cached_layer(path: Path, chash: str) -> torch.Tensor | None:
    """A layer's cached activations when made with this config; None (recompute) when absent, stale,
    without a marker (older caches) or failing its marker's record: a truncated or damaged cache file
    is logged and remade, never a traceback."""
    if not path.exists() or not cache_marker(path).exists():
        return None
    try:
        done = read_json(cache_marker(path), REMAKE)
        if not isinstance(done, dict) or done.get("config_hash") != chash:
            return None
        d = read_torch(path, REMAKE, done.get("file"))
    except CorruptArtifact as e:
        log.warning("code switching cache %s is %s; recomputing that layer", e.path, e.state)
        return None
    ok = isinstance(d, dict) and d.get("config_hash") == chash and isinstance(d.get("acts"), torch.Tensor)
    return d["acts"] if ok else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=100)  # probe activations per layer and CSVs/figures: a few MB for Qwen3
    if args.rank < 1:
        raise UserError("--rank must be at least 1")
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    covered = code_switch.probe_languages(args.probe_file)
    languages = [lang for lang in cfg.languages if lang in covered]
    left_out = [lang for lang in cfg.languages if lang not in covered]
    if len(languages) < 2:
        raise SkippedTask(
            f"code switching needs two of --languages in the probe set {args.probe_file}; "
            f"it has {', '.join(covered)}"
        )
    if left_out:
        log.warning(
            "code switching: %s not in the probe set; measuring %s", ", ".join(left_out), ", ".join(languages)
        )
    ps = code_switch.load_probe_set(args.probe_file, languages)
    nu = features.load_nu_results(cfg, cfg.layers, args.rank)
    layers = sorted(nu.layers)
    feats = {L: [nu.layers[L].top(lang, [args.rank])[0] for lang in languages] for L in layers}

    tokenizer = load_tokenizer(cfg.preset)
    probes = code_switch.build_probes(ps)
    tokens = code_switch.tokenize_probes(tokenizer, probes)
    settings = {
        **cfg.model_settings(),
        "nu_config_hash": nu.meta["config_hash"],
        "languages": languages,
        "rank": args.rank,
        "probe_file_sha256": cached_sha256(args.probe_file),  # data_record below reuses it
        "neutral_start": code_switch.neutral_start(tokenizer)[1],
        # what actually runs: a change in how probes are built or tokenised invalidates the cache too
        "probe_tokens": config_hash(
            {
                "ids": tokens.token_ids,
                "noun_positions": tokens.noun_positions,
                "alone": [p.alone for p in probes],  # alone texts: noun ids cut from each prefixed text
            }
        ),
    }
    chash = config_hash(settings)
    cdir = cfg.features_dir / code_switch.CACHE_DIR
    acts: dict[int, torch.Tensor] = {}

    def is_done(L):  # reads a finished layer once; with --force only what this process computed counts
        if L not in acts and not cfg.force and (a := cached_layer(cdir / f"layer_{L}.pt", chash)) is not None:
            acts[L] = a
        return L in acts

    todo = [L for L in layers if not is_done(L)]
    print(
        f"run {cfg.run_name}: {len(ps.concepts)} items x {len(languages)} languages, {len(probes)} texts; "
        f"layers {layers} ({len(todo)} to compute, {len(layers) - len(todo)} cached)"
    )
    computed, model = [], None
    # Layers are claimed (langsae.units) so that concurrent runs split them: one forward serves the layers
    # this process holds, the model loads only once one is held, and layers a live other process holds are
    # waited for and read from its cache files.
    claim_of = lambda L: claim_file(cdir, f"layer_{L}")  # noqa: E731
    for group in claim_batches(layers, claim_of, is_done, share=distributed.rank_share):
        if model is None:
            model, tokenizer = load_model(cfg.preset, cfg.device, cfg.dtype, tokenizer, **placement(cfg))
        encoders = {
            L: nu.layers[L].encoder(
                feats[L], features.sae_device(cfg, model, L), features.encoder_sae(cfg, nu.layers[L], model)
            )
            for L in group
        }
        pad = tokenizer.pad_token_id
        for L, a in code_switch.noun_activations(model, tokens, encoders, cfg.batch_size, pad).items():
            save_cached_layer(cdir / f"layer_{L}.pt", chash, {"layer": L, "features": feats[L], "acts": a})
            acts[L], computed = a, computed + [L]
    computed = distributed.gathered(computed)  # by every rank under torchrun
    if distributed.after_share():
        return work(len(computed), len(layers) - len(computed), "layer")
    for L in set(layers) - set(acts):  # under torchrun: the other ranks' layers, from their cache files
        acts[L] = cached_layer(cdir / f"layer_{L}.pt", chash)

    n_items = len(ps.concepts)
    values = {L: code_switch.per_item_values(acts[L].numpy(), probes, languages, n_items) for L in layers}
    m = code_switch.measures(values, languages, cfg.seed)
    best, wins = code_switch.effect_layer(m)
    fdir = cfg.features_dir
    results = code_switch.result_rows(m, feats)
    heat = code_switch.heatmap_rows(
        code_switch.pair_matrices(acts[best].numpy(), probes, languages, n_items), languages, best, cfg.seed
    )
    tables = {
        code_switch.ITEMS_FILE: code_switch.item_rows(acts, probes, tokens, ps, feats),
        code_switch.RESULTS_FILE: results,
        code_switch.HEATMAP_FILE: heat,
    }
    # each file's size and SHA-256, for the meta: a reader can tell these files from others
    outputs = {name: save_csv(rows, fdir / name) for name, rows in tables.items()}
    out = cfg.output_dir
    figures = []
    for measure, cases in code_switch.CASES.items():
        stem = out / code_switch.LINE_FIGURES[measure]
        figures += plots.code_switching_lines(results, languages, measure, cases, stem)
    figures += plots.code_switching_heatmap(heat, languages, best, out / code_switch.HEATMAP_FIGURE)
    bootstrap = stats.bootstrap_record(
        cfg.seed, "items with replacement, one draw shared by all languages and layers"
    )
    write_meta(
        fdir / code_switch.META_FILE,
        cfg,
        STAGE_NAME,
        settings,
        figures,
        config_hash=chash,
        layers=layers,
        languages=languages,
        languages_not_in_probe_set=left_out,
        features={str(L): dict(zip(languages, f)) for L, f in feats.items()},
        items=list(ps.concepts),
        n_texts=len(probes),
        probe_file=str(args.probe_file),
        noun_tokens="tokens whose character span overlaps the noun's (offset mapping); a token straddling "
        "the prefix and the noun counts (items.csv: straddles)",
        alone_texts="one per prefixed text (X, Y): the neutral start + that text's noun token ids, "
        "cut from its ids (never retokenised), so each after-prefix − alone contrast "
        "compares identical ids; items.csv: text alone, prefix_lang = the text cut from",
        cases=code_switch.CASES,
        contrasts=code_switch.CONTRASTS,
        heatmap_layer=best,
        heatmap_layer_rule=f"largest mean over languages of {code_switch.EFFECT}, on all items",
        heatmap_layer_bootstrap_wins={str(L): w for L, w in wins.items()},
        bootstrap=bootstrap,
        n_straddling_nouns=sum(s for s, p in zip(tokens.straddles, probes) if not p.alone),
        outputs=outputs,
        data=data_record(files=(args.probe_file,)),
    )
    mean_effect = [
        r
        for r in results
        if r["case"] == code_switch.EFFECT
        and r["language"] == code_switch.ALL_LANGUAGES
        and r["layer"] == best
    ]
    if mean_effect:
        r = mean_effect[0]
        ci = f"{r['value']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]"
        print(f"layer {best}: {code_switch.EFFECT} (mean over languages) = {ci}")
    print(f"results: {fdir / code_switch.RESULTS_FILE}; figures: {out}")
    return finished(cfg, len(computed), len(layers) - len(computed), "layer")


# ----------------------------------------------------------------------------- claims and report section


def code_switching_claim(a: Artifacts) -> Evidence | None:
    """X's top feature on nouns of other languages after X's prefix, minus the same nouns alone (paired
    by item; each alone text holds the very noun token ids of the prefixed text it is cut from), per
    language at the layer where most of Section 5's held-out peaks lie: a layer chosen
    without the probe items. Before Section 5 (or when code switching did not measure that layer),
    the layer of the largest mean effect, which is chosen on the same items and said so."""
    rows, meta = a.csv(code_switch.RESULTS_FILE), a.json(code_switch.META_FILE)
    if not rows or meta is None:
        return None
    effect = [r for r in rows if r["case"] == code_switch.EFFECT]
    peak = s5lib.modal_peak(a)
    if peak is not None and any(r["layer"] == str(peak) for r in effect):
        layer, how = str(peak), "most common held-out peak"
    else:
        layer, how = str(meta["heatmap_layer"]), "largest mean effect, chosen on these items"
    at = [r for r in effect if r["layer"] == layer and r["language"] != code_switch.ALL_LANGUAGES]
    verdicts = [interval_verdict(value_ci(r)) for r in at]
    spread = listing([(short(r["language"]), value_ci(r).value, str(value_ci(r))) for r in at])
    n_items = at[0]["n_items"] if at else "?"
    above = f"{verdicts.count(SUPPORTED)}/{len(at)} above 0"
    numbers = f"layer {layer} ({how}; {n_items} items): {above}: {spread}"
    means = (r for r in effect if r["layer"] == layer and r["language"] == code_switch.ALL_LANGUAGES)
    mean = next((value_ci(r) for r in means), None)
    control = f"vs the same noun ids alone; mean {mean}"  # every layer and language: in the section
    figure = a.figure(f"{code_switch.LINE_FIGURES['prefix_feature']}.png")
    return Evidence(numbers, control, figure, combine(verdicts, "most"))


def code_switching_section(a: Artifacts) -> list[str]:
    title = "Code switching (Section 4)"
    rows, meta = a.csv(code_switch.RESULTS_FILE), a.json(code_switch.META_FILE)
    if not rows or meta is None:
        return not_run(title, a, STAGE_NAME, f"python {STAGE.script}")
    contrasts = [r for r in rows if r["kind"] == "contrast" and r["language"] == code_switch.ALL_LANGUAGES]
    layers = sorted({int(r["layer"]) for r in contrasts})
    names = list(dict.fromkeys(r["case"] for r in contrasts))
    by_layer = [
        (L, *(value_ci(next(r for r in contrasts if r["case"] == n and int(r["layer"]) == L)) for n in names))
        for L in layers
    ]
    lines = [
        f"## {title}",
        "",
        f"Mean over languages of each paired contrast, {contrasts[0]['n_items']} items; "
        f"heatmap layer {meta['heatmap_layer']} "
        f"({meta['heatmap_layer_rule']}). Each alone text is the neutral start + the noun token ids of the "
        "code-switched text it is paired with, so after prefix − alone compares identical ids.",
        "",
    ]
    lines += table(["layer", *names], by_layer)
    effect = [
        r for r in rows if r["case"] == code_switch.EFFECT and r["language"] != code_switch.ALL_LANGUAGES
    ]
    langs = list(dict.fromkeys(r["language"] for r in effect))
    by = {(r["layer"], r["language"]): value_ci(r) for r in effect}
    lines += ["Per language: X's feature on foreign nouns after X's prefix − the same nouns alone.", ""]
    per_layer = [(L, *(by.get((str(L), x), "-") for x in langs)) for L in layers]
    lines += table(["layer", *map(short, langs)], per_layer)
    stems = [*code_switch.LINE_FIGURES.values(), code_switch.HEATMAP_FIGURE]
    return lines + images(a, [f"{stem}.png" for stem in stems])


CLAIMS = (
    Claim(
        12,
        "The prefix language's top feature stays active on a noun in another language (code-switching)",
        "paper (Sec. 4)",
        code_switching_claim,
    ),
)

STAGE = Stage(
    STAGE_NAME,
    "code_switching.py",
    "Sec. 4",
    main,
    claims=CLAIMS,
    report=code_switching_section,
    meta=code_switch.META_FILE,
)
