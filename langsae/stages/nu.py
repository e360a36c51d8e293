"""Stage 1: the nu-score of every SAE feature, for every language and layer.

Writes to sae_features/<run>/, per layer L:
  layer_L_indices.pt, layer_L_values.pt  [K_languages, d_sae], features sorted by nu descending
  layer_L_mean_acts.pt                   [K_languages, d_sae], mu (mean activation per language)
  layer_L_top20.json                     readable top-20 per language (nu, mu, Neuronpedia id)
  layer_L_directions.pt                  decoder rows / encoder columns of each language's top-k
                                         features and of a pool of random live control features
  layer_L_done.json                      completion marker with the config hash
and meta.json (languages, layers, model, SAE, data, token counts, versions).
Finished layers with a matching config are skipped (--force recomputes). Runs started at the same time
on the same folder split the layers: each claims as many as one model pass caches (--cache-gb), so a
smaller --cache-gb splits finer, at one more forward pass per share.
"""

from __future__ import annotations

import time

from langsae import distributed, nu
from langsae import feature_figures as ff
from langsae import section5 as s5lib
from langsae.artifacts import config_hash, preflight
from langsae.config import build_parser, resolve
from langsae.data import load_texts
from langsae.errors import UserError
from langsae.features import NU_DEFAULTS, NU_SCRIPT, sae_device
from langsae.forward import tokenize
from langsae.memory import nu_plan
from langsae.model import (
    check_layers,
    check_sae_ids,
    load_model,
    load_sae,
    load_tokenizer,
    model_config,
    neuronpedia_id,
    placement,
    sae_config,
    sae_hook_names,
    sae_hook_points,
)
from langsae.prefetch import Prefetcher
from langsae.stages import Stage, finished, work
from langsae.units import claim_batches, claim_file
from langsae.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    img,
    layer_span,
    listing,
    not_run,
    short,
)

NAME = "nu"  # the stage's one name: its Stage and its meta's "stage"


def parse_args(argv):
    p = build_parser(__doc__)
    d = NU_DEFAULTS  # shared with the hints that remake this stage's results (features.nu_command)
    p.add_argument(
        "--top-k",
        type=int,
        default=d["top_k"],
        help="top features per language whose directions are saved for ablation",
    )
    p.add_argument(
        "--control-pool",
        type=int,
        default=d["control_pool"],
        help="random live features per layer saved for control ablations",
    )
    p.add_argument(
        "--weighting",
        choices=["token", "text"],
        default=d["weighting"],
        help="mu as a mean over tokens (paper) or over texts",
    )
    p.add_argument(
        "--cache-gb",
        type=float,
        default=8.0,
        help="memory for cached SAE inputs; layers beyond it take another model pass",
    )
    return p.parse_args(argv)


def score_layers(cfg, args, pending, chash, tokenizer, flat_texts, lang_ids) -> list[int]:
    """Score those of the `pending` layers not done yet; return those this process computed.

    Layers are claimed (langsae.units, one claim file per layer) before anything runs, at most as many
    at a time as one forward pass caches (--cache-gb), so concurrent runs of this stage split the layers
    and the model runs only for layers this process holds; it is loaded only once one is claimed. Layers
    another live process holds are waited for at the end (and taken over if it dies). A layer's results
    depend on no other layer (the cached inputs are read-only hooks on the same batches), so any split
    gives byte-identical files."""
    sae_cfgs = {L: sae_config(cfg.preset, L) for L in pending}  # hook names, without the weights
    token_ids = tokenize(tokenizer, flat_texts)
    hidden = model_config(cfg.preset).hidden_size
    bytes_per_layer = nu.count_statistic_tokens(token_ids) * hidden * cfg.dtype.itemsize
    per_pass = max(1, int(args.cache_gb * 2**30 // max(bytes_per_layer, 1)))
    computed, model = [], None

    def is_done(L):  # with --force, only what this process wrote counts as done
        return L in computed or (not cfg.force and nu.layer_done(cfg.features_dir, L, chash))

    def load(L):  # runs in the prefetcher's thread; load_sae is looked up at call time (tests wrap it)
        return load_sae(cfg.preset, L, sae_device(cfg, model, L), cfg.dtype)  # on its layer's device

    def claim_of(L):
        return claim_file(cfg.features_dir, f"layer_{L}")

    for group in claim_batches(pending, claim_of, is_done, most=per_pass, share=distributed.rank_share):
        if model is None:
            model, _ = load_model(cfg.preset, cfg.device, cfg.dtype, tokenizer, **placement(cfg))
        # The prefetcher starts after the model is loaded because the SAE loader points
        # huggingface_hub's process-wide cache settings at the preset's cache while it runs.
        # The first transcoder is then read during the forward pass, each next one while the
        # one before it encodes.
        with Prefetcher(group, load, "SAE layer") as saes:
            reads = {L: sae_hook_points(sae_cfgs[L])[0] for L in group}
            pad = tokenizer.pad_token_id
            inputs = nu.collect_sae_inputs(model, token_ids, lang_ids, reads, cfg.batch_size, pad)
            n_langs = len(cfg.languages)
            weights = nu.token_weights(inputs.token_lang, inputs.token_text, n_langs, args.weighting)
            token_counts = dict(zip(cfg.languages, inputs.token_lang.bincount(minlength=n_langs).tolist()))
            for L in group:
                t0 = time.time()
                sae = saes.take(L)  # each SAE is loaded once per run, in the prefetcher's thread
                t_wait = time.time() - t0
                layer = nu.score_layer(
                    sae,
                    inputs.by_layer.pop(L),
                    weights,
                    L,
                    cfg.languages,
                    args.top_k,
                    args.control_pool,
                    cfg.seed + L,
                    sae_hook_names(sae_cfgs[L]),
                    neuronpedia_id(cfg.preset, L),
                )
                del sae  # before the next take: then at most one more SAE is in memory, the one being read
                done = {
                    "config_hash": chash,
                    "layer": L,
                    "sae_id": cfg.sae_id(L),
                    **layer.summary,
                    "token_counts": token_counts,
                }
                nu.save_layer(cfg.features_dir, L, layer.files, layer.top20, done)
                computed.append(L)
                shared = list(layer.summary["shared_top5"].values())
                print(
                    f"layer {L}: done in {time.time() - t0:.1f}s (waited {t_wait:.1f}s for its SAE); "
                    f"top-5 shared with another language: {shared}"
                )
            del inputs
    return computed


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=500)  # per layer indices, values, mu [K, d_sae]: up to tens of MB for Qwen3
    plan = nu_plan(cfg, NAME, args.cache_gb)  # before any load: refused in one line when it cannot fit
    if len(cfg.languages) < 2:
        raise UserError("nu-scores compare languages: give at least two in --languages")
    if args.top_k < 1 or args.control_pool < 0:
        raise UserError("--top-k must be at least 1 and --control-pool at least 0")
    n_model_layers = model_config(cfg.preset).num_hidden_layers
    layers = check_layers(cfg.layers, n_model_layers)
    check_sae_ids(cfg.preset, layers)
    texts = load_texts(cfg.languages, "selection", cfg.n_texts_per_lang, cfg.split)
    flat_texts, lang_ids = texts.flat()
    # before the weights: the position-0 rule depends on it and enters the hash
    tokenizer = load_tokenizer(cfg.preset)
    settings = {
        **cfg.key(),
        "texts_sha": config_hash({"t": flat_texts}),
        "data_source": texts.source,
        "weighting": args.weighting,
        "position_0": nu.position_0_rule(tokenizer),
        "top_k": args.top_k,
        "control_pool": args.control_pool,
        "seed": cfg.seed,
    }
    chash = config_hash(settings)
    pending = [L for L in layers if cfg.force or not nu.layer_done(cfg.features_dir, L, chash)]
    done = len(layers) - len(pending)
    print(f"run {cfg.run_name}: {done} of {len(layers)} layers already done -> {cfg.features_dir}")

    # every layer, not only the pending ones: under torchrun a rank's share must not depend on timing
    computed = score_layers(cfg, args, layers, chash, tokenizer, flat_texts, lang_ids) if pending else []
    computed = distributed.gathered(computed)  # by every rank under torchrun
    if distributed.after_share():
        return work(len(computed), len(layers) - len(computed), "layer")

    # the key holds the model's content identity; its name or path goes into the meta for people only
    made = {**settings, "model_id": cfg.preset.model_id}
    meta = nu.write_meta(cfg.features_dir, NAME, made, chash, texts, n_model_layers, plan.record())
    print(f"{nu.META_FILE}: {len(meta['layers'])} layers; top-1 in no other language's top-5, per layer:")
    for L in meta["layers"]:
        excl, shared = meta["exclusive_top1"][str(L)], list(meta["shared_top5"][str(L)].values())
        print(f"  layer {L:>2}: {sum(excl.values())}/{len(excl)}  shared top-5 {shared}")
    return finished(cfg, len(computed), len(layers) - len(computed), "layer")


# ----------------------------------------------------------------------------- claims and report section


def exclusive_top1(a: Artifacts) -> Evidence | None:
    """At the layer where most held-out peaks lie (else 10), each language's top-1 is in no other top-5."""
    meta = a.json(nu.META_FILE)
    if meta is None or "exclusive_top1" not in meta:
        return None
    peak = s5lib.modal_peak(a)
    layer = 10 if peak is None else peak
    excl = meta["exclusive_top1"].get(str(layer))
    figure = a.figure(f"{ff.SUBDIR}/{ff.OVERLAP}.png")
    if excl is None:
        computed = layer_span(meta["layers"])
        return Evidence(f"layer {layer} has no ν results (layers {computed})", "-", figure, INCONCLUSIVE)
    n, yes = len(excl), sum(excl.values())
    shared = ", ".join(short(lang) for lang, v in excl.items() if not v) or "none"
    verdict = SUPPORTED if yes == n else NOT_SUPPORTED if yes <= n / 2 else INCONCLUSIVE
    where = "no Section 5 yet" if peak is None else "most common held-out peak"
    by_layer = [
        (f"L{L}", sum(v.values()), f"{sum(v.values())}/{len(v)}") for L, v in meta["exclusive_top1"].items()
    ]
    numbers = f"layer {layer} ({where}): exclusive top-1 for {yes}/{n}; shared: {shared}"
    return Evidence(numbers, f"by layer: {listing(by_layer, ', ')}", figure, verdict)


def nu_section(a: Artifacts) -> list[str]:
    meta = a.json(nu.META_FILE)
    if meta is None:
        return not_run("Stage 1: ν-scores", a, None, f"python {NU_SCRIPT}")
    position_0 = meta.get("position_0", "")
    lines = [
        "## Stage 1: ν-scores",
        "",
        f"{len(meta['layers'])} layers, d_sae {meta.get('d_sae')}, position 0 {position_0}.",
        "",
        "| layer | languages with an exclusive top-1 "
        "| top-5 features shared with another language, per language |",
        "|---|---|---|",
    ]
    for L in meta["layers"] if "exclusive_top1" in meta and "shared_top5" in meta else []:
        excl, shared = meta["exclusive_top1"][str(L)], meta["shared_top5"][str(L)]
        by_lang = ", ".join(f"{short(k)} {v}" for k, v in shared.items())
        lines.append(f"| {L} | {sum(excl.values())}/{len(excl)} | {by_lang} |")
    lines.append("")
    for name in feature_figures(a):
        lines += img(a, f"{ff.SUBDIR}/{name}", name.removesuffix(".png"))
    table = f"{ff.SUBDIR}/{ff.TOP_FEATURES}"
    if a.figure(table):
        lines += [f"Top features per layer and language, with Neuronpedia links: [{table}]({table})", ""]
    return lines


def feature_figures(a: Artifacts) -> list[str]:
    """The plots stage's figures (png names) in report order: Figure 1 at whichever layer it was
    drawn, the layer-wise ones, then the specificity heatmaps."""
    folder = a.output_dir / ff.SUBDIR
    pngs = sorted(p.name for p in folder.glob("*.png")) if folder.exists() else []

    def at_some_layer(stem: str) -> list[str]:
        return [n for n in pngs if n.startswith(stem.format(layer=""))]

    every_layer = [f"{stem}.png" for stem in (ff.OVERLAP, ff.TOP1, ff.DISTRIBUTIONS)]
    return at_some_layer(ff.FIGURE1) + every_layer + at_some_layer(ff.SPECIFICITY)


def header_rows(a: Artifacts) -> list[tuple[str, str]]:
    """The ν stage's rows in the report's table of what made the run."""
    meta = a.json(nu.META_FILE) or {}
    cfg = meta.get("config", {})
    settings = ", ".join(
        f"{k} {cfg[k]}" for k in ("weighting", "top_k", "control_pool", "dtype", "seed") if k in cfg
    )
    return [
        ("data (selection)", meta.get("data_source", "-")),
        ("languages", ", ".join(meta.get("languages", []))),
        ("ν layers", meta.get("layers", "-")),
        ("ν settings", settings or "-"),
    ]


CLAIMS = (
    Claim(
        6,
        "Each language's top-1 feature is its own (in no other language's top-5) at the dominant layer",
        "docs/method.md (shared-feature trap)",
        exclusive_top1,
    ),
)

STAGE = Stage(
    NAME,
    NU_SCRIPT,
    "ν-score, Fig. 1",
    main,
    claims=CLAIMS,
    report=nu_section,
    meta=nu.META_FILE,
    header=header_rows,
)
