"""Stage 4: pairwise synergy of languages' top-1 features, intra- vs inter-cluster, with a permutation test.

For every unordered pair {A, B} of languages at each layer, one condition ablates A's top-1 and
B's top-1 together; on A's texts (and on B's) synergy = ΔAB − ΔA − ΔB, paired per text, with a
joint-bootstrap CI. ΔA and ΔB are Section 5's top-1 conditions, read from its condition store
with Section 5's evaluation texts, N and mode; pairs are computed once and cached there too.
Pairs whose top-1 features coincide (synergy = −ΔA by construction) or whose decoder directions
have |cosine| above --overlap-threshold are flagged, and every summary is given with and
without them. Clusters come from stage 3 (interaction_clusters.json). Writes:
  sae_features/<run>/cluster_synergy.csv            one row per pair, layer and evaluation side
  sae_features/<run>/cluster_synergy_summary.json   per layer: intra, inter, difference (CIs),
                                                    permutation p, synergy ~ |cosine|
  output/<run>/synergy_intra_inter, synergy_vs_cosine, synergy_pairs (.png, .pdf)
"""

from __future__ import annotations

from langsae import distributed, features, interactions, plots, section5, stats, sweep, synergy
from langsae.artifacts import save_csv
from langsae.config import build_parser
from langsae.errors import SkippedTask, UserError
from langsae.model import check_layers, model_config
from langsae.provenance import data_record
from langsae.stages import Stage, finished, work, write_meta
from langsae.verdicts import (
    INCONCLUSIVE,
    PERMUTATION_ALPHA,
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    Interval,
    images,
    interval_verdict,
    not_run,
    table,
    value_ci,
)

STAGE_NAME = "cluster-synergy"


def parse_args(argv):
    p = build_parser(__doc__)
    sweep.add_sweep_args(p, top_k=False, random_draws=False)
    g = p.add_argument_group("synergy")
    g.add_argument(
        "--overlap-threshold",
        type=float,
        default=0.9,
        help="a pair whose top-1 decoder directions have |cosine| above this is flagged overlapping "
        "(degenerate)",
    )
    g.add_argument(
        "--permutations",
        type=int,
        default=10000,
        help="random permutations of the languages' cluster labels (sizes kept) for the intra-vs-inter test",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, n_texts, plan = sweep.start(args, STAGE_NAME)
    languages = list(cfg.languages)
    if len(languages) < 3:
        raise SkippedTask("intra- vs inter-cluster synergy needs at least three languages in --languages")
    if args.permutations < 1 or not 0 <= args.overlap_threshold <= 1:
        raise UserError("--permutations must be at least 1 and --overlap-threshold between 0 and 1")
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    nu = features.load_nu_results(cfg, cfg.layers, 1)
    interactions.require_clusters(cfg, args.mode, n_texts)
    pairs = synergy.language_pairs(nu, languages, args.overlap_threshold)
    conditions = synergy.pair_conditions(nu, languages, args.mode, pairs)
    setup = sweep.open_sweep(cfg, nu, n_texts)
    clusters = interactions.load_clusters(cfg, setup.settings, args.mode, n_texts)
    labels = {lang: int(clusters["labels"][lang]) for lang in languages}
    print(
        f"run {cfg.run_name}: {len(pairs)} pairs at layers {sorted(nu.layers)} ({args.mode}) x {n_texts} "
        f"texts; clusters from stage 3 ({clusters['settings']['distance']}, k={clusters['settings']['k']})"
    )
    result = setup.run(nu, conditions, cfg, args.rows_per_forward)
    if distributed.after_share():
        return work(result.computed, result.cached, "conditions")

    effects = synergy.pair_effects(result, pairs, cfg.seed, stats.N_BOOT)
    n_of = {lang: len(setup.evalset.texts_of(lang)) for lang in languages}
    rows = synergy.pair_rows(effects, labels, n_of)
    summary = synergy.summary(effects, labels, languages, args.permutations, cfg.seed)
    fdir = cfg.features_dir
    save_csv(rows, fdir / synergy.PAIRS_FILE)
    settings = {
        "store": setup.settings,
        "mode": args.mode,
        "n_texts": n_texts,
        "languages": languages,
        "layers": sorted(nu.layers),
        "overlap_threshold": args.overlap_threshold,
        "permutations": args.permutations,
        "seed": cfg.seed,
        "clusters": {"labels": labels, "settings": clusters["settings"]},
    }
    order = sorted(range(len(languages)), key=lambda i: (labels[languages[i]], i))
    out = cfg.output_dir
    figures = plots.synergy_intra_inter(summary, out / synergy.INTRA_INTER_FIGURE)
    figures += plots.synergy_vs_cosine(rows, out / synergy.COSINE_FIGURE)
    figures += plots.synergy_pairs(rows, languages, order, out / synergy.PAIRS_FIGURE)
    write_meta(
        fdir / synergy.SUMMARY_FILE,
        cfg,
        STAGE_NAME,
        settings,
        figures,
        memory_plan=plan.record(),
        layers=summary,
        pair_synergy=synergy.PAIR_SYNERGY,
        regression=synergy.REGRESSION,
        permutation_test=synergy.PERMUTATION_TEST,
        bootstrap=stats.bootstrap_record(cfg.seed, section5.RESAMPLING),
        n_pairs=len(pairs),
        computed=result.computed,
        cached=result.cached,
        data=data_record(cfg, ("evaluation",)),
    )
    print(synergy.format_summary(summary))
    print(f"results: {fdir / synergy.SUMMARY_FILE}; figures: {cfg.output_dir}")
    return finished(cfg, result.computed, result.cached, "conditions")


# ----------------------------------------------------------------------------- claims and report section


def intra_subadditive(a: Artifacts) -> Evidence | None:
    """Pooled over layers, without the pairs that share (or nearly share) a top-1 feature, whose
    sub-additivity is built in: intra-cluster synergy below zero and below the inter-cluster pairs'.
    The regression on |cosine| and the per-layer numbers are in the stage's section."""
    s = a.json(synergy.SUMMARY_FILE)
    if s is None:
        return None
    w = s["layers"]["all_layers"]

    def part(which: str, key: str) -> Interval:
        return value_ci(w[which][key])

    clean, full = w["without_degenerate"], w["with_degenerate"]
    n_intra = clean["intra"]["n_pairs"]
    without, with_ = part("without_degenerate", "intra"), part("with_degenerate", "intra")
    inter = part("without_degenerate", "inter")
    verdict = interval_verdict(without, inter, -1) if n_intra else INCONCLUSIVE
    if verdict == SUPPORTED and not clean["permutation_p"] < PERMUTATION_ALPHA:
        # the sentence bootstrap holds the pairs fixed; which languages share a cluster is tested
        # by permutation
        verdict = INCONCLUSIVE
    numbers = (
        f"intra-cluster synergy, pooled over layers, without degenerate pairs: {without} "
        f"({n_intra} pair-layers); with them: {with_} ({full['intra']['n_pairs']})"
    )
    control = f"inter-cluster pairs: {inter}; permutation p = {clean['permutation_p']:.3g}"
    return Evidence(numbers, control, a.figure(f"{synergy.COSINE_FIGURE}.png"), verdict)


def _given_cos(d: dict) -> str:
    g = d.get("intra_given_cosine")  # absent from summaries written before it existed
    return "n/a" if g is None else f"{g['coefficient']:+.3f}, permutation p = {g['permutation_p']:.3g}"


def cluster_synergy_section(a: Artifacts) -> list[str]:
    title = "Stage 4: intra- vs inter-cluster synergy"
    s = a.json(synergy.SUMMARY_FILE)
    if s is None:
        return not_run(title, a, STAGE_NAME, f"python {synergy.SCRIPT}")
    rows = []
    for layer, w in s["layers"].items():
        for which in ("with_degenerate", "without_degenerate"):
            d = w[which]
            iv = {k: value_ci(d[k]) for k in ("intra", "inter", "difference")}
            pairs = which.replace("_", " ")
            if which == "with_degenerate":
                pairs += f" ({w['n_same_feature']} share a top-1, {w['n_overlapping']} overlap)"
            n_intra, n_inter = d["intra"]["n_pairs"], d["inter"]["n_pairs"]
            slope = f"{d['regression']['slope']:+.3f} (r {d['regression']['r']:+.2f})"
            intra, inter = f"{iv['intra']} ({n_intra})", f"{iv['inter']} ({n_inter})"
            p = f"{d['permutation_p']:.3g}"
            rows.append((layer, pairs, intra, inter, iv["difference"], p, slope, _given_cos(d)))
    lines = [
        f"## {title}",
        "",
        "Synergy = ΔAB − ΔA − ΔB of two languages' top-1 features, per pair the mean of its two sides; "
        "degenerate pairs share their top-1 feature or have decoder |cosine| above the threshold (their "
        "sub-additivity is built in).",
        "",
    ]
    lines += table(
        [
            "layer",
            "pairs",
            "intra [95% CI] (n)",
            "inter [95% CI] (n)",
            "intra − inter",
            "permutation p",
            "slope on abs(cos)",
            "intra beyond abs(cos), p",
        ],
        rows,
    )
    return lines + images(a, [f"{name}.png" for name in synergy.FIGURES])


CLAIMS = (
    Claim(
        9,
        "Intra-cluster language pairs are sub-additive (more than inter-cluster pairs)",
        "seed reproduction",
        intra_subadditive,
    ),
)

STAGE = Stage(
    STAGE_NAME,
    synergy.SCRIPT,
    "Sec. 5 synergy, across language pairs",
    main,
    claims=CLAIMS,
    report=cluster_synergy_section,
    meta=synergy.SUMMARY_FILE,
)
