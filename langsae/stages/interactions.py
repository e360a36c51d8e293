"""Stage 3: the cross-linguistic interaction matrix, MDS + Ward clusters of its distance, and their stability.

M[i, j] = mean ΔCE on language i's evaluation texts when language j's top features are ablated
(--features, at --layers, combined by --aggregate). These are Section 5's conditions with
Section 5's evaluation texts, N and mode, read from its condition store (sae_features/<run>/ablation/);
whatever is missing is computed and cached. The distance D (--distance) is embedded by metric
MDS, clustered by Ward linkage on the MDS coordinates and cut at --k; the earlier
reproduction's Ward-on-D clusters are printed beside them. Stability: every one of
--stability-boot joint resamples of sentence ids is clustered again. Writes:
  sae_features/<run>/interaction_matrix.csv    per layer and aggregate: eval_lang, ablated_lang, delta_ce,
                                               CI (+ random reference rows)
  sae_features/<run>/interaction_clusters.json labels, MDS coordinates, stress, silhouette, co-clustering,
                                               ARI, settings
  sae_features/<run>/interaction_meta.json     model, data, settings, versions, conditions computed and read
  output/<run>/interaction_matrix, interaction_mds, interaction_dendrogram, interaction_coclustering
                                               (.png, .pdf)
"""

from __future__ import annotations

from typing import Sequence

from langsae import distributed, features, interactions, plots, section5, stats, sweep
from langsae.artifacts import save_csv, save_json
from langsae.config import build_parser
from langsae.errors import SkippedTask, UserError
from langsae.model import check_layers, model_config
from langsae.provenance import data_record
from langsae.stages import Stage, finished, work, write_meta
from langsae.verdicts import (
    FREQ_SURE,
    INCONCLUSIVE,
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    combine,
    frequency_verdict,
    images,
    listing,
    not_run,
    short,
    table,
)

STAGE_NAME = "interactions"
DEFAULT_K = 5


def parse_args(argv):
    p = build_parser(__doc__)
    sweep.add_sweep_args(p, top_k=False)
    g = p.add_argument_group("interactions")
    g.add_argument(
        "--features",
        choices=list(interactions.FEATURE_SETS),
        default="top1+2",
        help="which of each language's top features to ablate",
    )
    g.add_argument(
        "--aggregate",
        default="mean",
        help="how M combines the --layers: mean (the mean over them, as the earlier reproduction), peak "
        "(each ablated language at its held-out peak layer from Section 5; needs its summary), "
        "or a layer number",
    )
    g.add_argument(
        "--distance",
        choices=interactions.DISTANCES,
        default="ratio",
        help="ratio: D_ij = max(0, 1 - (M_ij + M_ji)/(M_ii + M_jj)) (the earlier reproduction's); "
        "profile: correlation distance between the languages' interaction profiles (row and column "
        "of M, divided by M_ii)",
    )
    g.add_argument(
        "--k",
        type=int,
        default=None,
        help=f"number of clusters the Ward tree is cut into; unset: {DEFAULT_K} (the paper's), or one "
        "less than the number of languages when that is smaller",
    )
    g.add_argument(
        "--mds-dims", type=int, default=2, help="dimensions of the metric MDS embedding that Ward clusters"
    )
    g.add_argument(
        "--mds-init",
        type=int,
        default=4,
        help="seeded random starts of the MDS (SMACOF); the lowest stress wins",
    )
    g.add_argument(
        "--stability-boot",
        type=int,
        default=200,
        help="joint resamples of sentence ids, each clustered again (co-clustering, ARI)",
    )
    return p.parse_args(argv)


def _check_args(args, languages: list[str]) -> None:
    """Refuse what cannot be clustered, before any model is loaded; --k unset becomes its default."""
    if len(languages) < 3:
        raise SkippedTask("clustering languages needs at least three in --languages")
    if args.k is None:
        args.k = min(DEFAULT_K, len(languages) - 1)
    if not 2 <= args.k < len(languages):
        raise UserError(
            f"--k must be between 2 and {len(languages) - 1} (one less than the number of languages)"
        )
    for flag, value in (
        ("--mds-dims", args.mds_dims),
        ("--mds-init", args.mds_init),
        ("--stability-boot", args.stability_boot),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1")


def _matrix_rows(per_layer, m, rand, aggregate, layers, languages, args, n_ranks: int, n_of) -> list[dict]:
    """interaction_matrix.csv: M (and the random reference) at each layer, then aggregated over
    them unless the aggregate is one layer."""
    rows = []
    for k, L in enumerate(layers):
        rows += interactions.matrix_rows(per_layer.m[k], languages, L, args.features, args.mode, n_of)
        if per_layer.random is not None:
            rows += interactions.random_rows(per_layer.random[k], languages, L, n_ranks, args.mode, n_of)
    if not isinstance(aggregate, int):
        rows += interactions.matrix_rows(m, languages, str(aggregate), args.features, args.mode, n_of)
        if rand is not None:
            rows += interactions.random_rows(rand, languages, str(aggregate), n_ranks, args.mode, n_of)
    return rows


def main(argv=None):
    args = parse_args(argv)
    cfg, n_texts, plan = sweep.start(args, STAGE_NAME)
    languages = list(cfg.languages)
    _check_args(args, languages)
    aggregate = interactions.parse_aggregate(args.aggregate)
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    ranks = interactions.FEATURE_SETS[args.features]
    nu = features.load_nu_results(cfg, cfg.layers, max(ranks))
    layers = sorted(nu.layers)
    conditions = interactions.interaction_conditions(
        nu, languages, args.mode, ranks, args.random_draws, cfg.seed
    )
    setup = sweep.open_sweep(cfg, nu, n_texts)
    peaks = section5.load_peaks(cfg, setup.settings, args.mode, n_texts) if aggregate == "peak" else None
    weights = interactions.layer_weights(aggregate, layers, languages, peaks)
    print(
        f"run {cfg.run_name}: {len(conditions)} conditions ({args.mode}, {args.features}) at layers "
        f"{layers} x {len(languages)} languages x {n_texts} texts"
    )
    result = setup.run(nu, conditions, cfg, args.rows_per_forward)
    if distributed.after_share():
        return work(result.computed, result.cached, "conditions")

    # aggregate: matrices with CIs, then the point clustering and its stability over resamples
    per_layer = interactions.layer_matrices(result, args.features, len(ranks), cfg.seed, stats.N_BOOT)
    m, rand = per_layer.aggregate(weights)
    d = interactions.DISTANCE_FUNCTIONS[args.distance](m.point)
    if d is None:
        raise UserError(
            f"the {args.distance} distance is undefined: some language's own ΔCE (diagonal of M) is not "
            "positive; try other --layers or --features"
        )
    point = interactions.cluster(d, args.k, args.mds_dims, args.mds_init, cfg.seed)
    previous = interactions.ward_on_distance(d, args.k)
    resampled = interactions.layer_matrices(
        result, args.features, len(ranks), cfg.seed, args.stability_boot
    ).aggregate(weights)[0]
    stab = interactions.stability(
        resampled.reps, args.distance, point.labels, args.k, args.mds_dims, args.mds_init, cfg.seed
    )
    silhouette = interactions.silhouettes(point)
    non_euclidean = interactions.negative_eigen_mass(d)

    fdir, agg_name = cfg.features_dir, str(aggregate)
    n_of = {lang: len(setup.evalset.texts_of(lang)) for lang in languages}
    rows = _matrix_rows(per_layer, m, rand, aggregate, layers, languages, args, len(ranks), n_of)
    save_csv(rows, fdir / interactions.MATRIX_FILE, interactions.MATRIX_COLUMNS)
    settings = {
        "store": setup.settings,
        "mode": args.mode,
        "n_texts": n_texts,
        "languages": languages,
        "features": args.features,
        "layers": layers,
        "aggregate": agg_name,
        "peak_layers": peaks,
        "distance": args.distance,
        "k": args.k,
        "mds_dims": args.mds_dims,
        "mds_init": args.mds_init,
        "stability_boot": args.stability_boot,
        "random_draws": args.random_draws,
        "seed": cfg.seed,
    }
    low, high = m.interval()
    clusters = {
        "languages": languages,
        "matrix": m.point.tolist(),
        "matrix_ci_low": low.tolist(),
        "matrix_ci_high": high.tolist(),
        "distance_kind": args.distance,
        "distance": d.tolist(),
        "negative_eigen_mass": non_euclidean,
        "labels": dict(zip(languages, point.labels.tolist())),
        "mds_coords": dict(zip(languages, point.coords.tolist())),
        "stress": point.stress,
        "linkage": point.linkage.tolist(),
        "silhouette": {str(k): v for k, v in silhouette.items()},
        "ward_on_distance_labels": dict(zip(languages, previous.tolist())),
        "co_clustering": stab.co_clustering.tolist(),
        "ari": stab.ari_summary(),
        "settings": settings,
    }
    save_json(clusters, fdir / interactions.CLUSTERS_FILE)
    out = cfg.output_dir
    what = f"{args.features}, {agg_name}, {args.mode}"
    figures = plots.interaction_matrix(m, languages, out / interactions.MATRIX_FIGURE, what)
    co = stab.co_clustering
    figures += plots.mds_map(
        point.coords, point.labels, co, languages, out / interactions.MDS_FIGURE, point.stress
    )
    figures += plots.dendrogram(point.linkage, languages, out / interactions.DENDROGRAM_FIGURE, args.k)
    figures += plots.co_clustering(co, languages, out / interactions.COCLUSTERING_FIGURE, stab.ari_summary())
    bootstrap = stats.bootstrap_record(
        cfg.seed,
        section5.RESAMPLING,
        random_reference=section5.RANDOM_RESAMPLING,
        stability_resamples=args.stability_boot,
    )
    write_meta(
        fdir / interactions.META_FILE,
        cfg,
        STAGE_NAME,
        settings,
        figures,
        memory_plan=plan.record(),
        eval_source=setup.evalset.source,
        n_conditions=len(conditions),
        computed=result.computed,
        cached=result.cached,
        bootstrap=bootstrap,
        data=data_record(cfg, ("evaluation",)),
    )
    print(interactions.format_clusters(clusters))
    print(f"results: {fdir / interactions.CLUSTERS_FILE}; figures: {cfg.output_dir}")
    return finished(cfg, result.computed, result.cached, "conditions")


# ----------------------------------------------------------------------------- claims and report section


def _co_clustering(a: Artifacts) -> tuple[dict, dict[str, int]] | None:
    c = a.json(interactions.CLUSTERS_FILE)
    return (c, {lang: k for k, lang in enumerate(c["languages"])}) if c else None


def _cluster_evidence(
    a: Artifacts, lang: str, shares: dict[str, float], how: str, what: str, control: str
) -> Evidence:
    """A categorical claim on stage 3's clusters: each pair's share of bootstrap resamples that agrees
    with it."""
    c, _ = _co_clustering(a)
    figure = a.figure(f"{interactions.MDS_FIGURE}.png")
    if not shares:
        missing = f"{short(lang)} or the languages it is compared with are not in this run"
        return Evidence(missing, "-", figure, INCONCLUSIVE)
    n = c["ari"]["n_resamples"]
    point = ", ".join(short(x) for x, g in c["labels"].items() if g == c["labels"][lang])
    verdicts = [frequency_verdict(s) for s in shares.values()]
    spread = listing([(short(x), s, f"{s:.2f}") for x, s in shares.items()], ", ")
    sure = f"{verdicts.count(SUPPORTED)}/{len(shares)}"
    numbers = f"{what} (k={c['settings']['k']}), in ≥ {FREQ_SURE:.0%} of {n} resamples: {sure}; {spread}"
    numbers += f"; point cluster of {short(lang)}: {point}"
    return Evidence(numbers, control, figure, combine(verdicts, how))


def vietnamese_clusters(a: Artifacts) -> Evidence | None:
    got = _co_clustering(a)
    if got is None:
        return None
    c, i = got
    vie, co = "vie_Latn", c["co_clustering"]
    if vie not in i:
        return _cluster_evidence(a, vie, {}, "every", "", "-")
    shares = {x: co[i[vie]][i[x]] for x in ("eng_Latn", "spa_Latn", "fra_Latn", "por_Latn") if x in i}
    rivals = ", ".join(f"{short(x)} {co[i[vie]][i[x]]:.2f}" for x in ("tha_Thai", "kor_Hang") if x in i)
    rivals = rivals or "-"
    control = f"with tha/kor: {rivals}; mean ARI, resamples vs point clusters {c['ari']['mean']:.2f}"
    return _cluster_evidence(a, vie, shares, "every", "vie shares a cluster with", control)


def arabic_isolated(a: Artifacts) -> Evidence | None:
    got = _co_clustering(a)
    if got is None:
        return None
    c, i = got
    arb, co = "arb_Arab", c["co_clustering"]
    shares = {x: 1 - co[i[arb]][k] for x, k in i.items() if x != arb} if arb in i else {}
    control = f"mean ARI of the resamples vs the point clusters {c['ari']['mean']:.2f}"
    return _cluster_evidence(a, arb, shares, "every", "arb apart from", control)


def _groups(labels: dict[str, int]) -> list[tuple[int, str]]:
    """Each cluster number with its languages (short names, in the labels' order)."""
    return [
        (g, ", ".join(short(x) for x, y in labels.items() if y == g)) for g in sorted(set(labels.values()))
    ]


def _rows_of(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> list[tuple]:
    return [(x, *(f"{v:.2f}" for v in row)) for x, row in zip(names, matrix)]


def interactions_section(a: Artifacts) -> list[str]:
    title = "Stage 3: cross-linguistic interactions and clusters"
    c = a.json(interactions.CLUSTERS_FILE)
    if c is None:
        return not_run(title, a, STAGE_NAME, f"python {interactions.STAGE3_SCRIPT}")
    st, ari = c["settings"], c["ari"]
    lines = [
        f"## {title}",
        "",
        f"M from {st['features']} at layers {st['layers']} ({st['aggregate']}), {st['mode']} ablation, "
        f"{st['n_texts']} texts per language; distance `{c['distance_kind']}` (negative eigenvalue mass "
        f"{c['negative_eigen_mass']:.3f}); metric MDS stress {c['stress']:.3f}; Ward on the MDS coordinates "
        f"cut at k={st['k']}; stability over {ari['n_resamples']} resamples: mean ARI {ari['mean']:.2f} "
        f"[{ari['q05']:.2f}, {ari['q95']:.2f}].",
        "",
    ]
    silhouette = ", ".join(f"{k}: {v:.2f}" for k, v in c["silhouette"].items())
    groups = _groups(c["labels"])
    rows = [(g, members, silhouette if i == 0 else "") for i, (g, members) in enumerate(groups)]
    lines += table(["cluster", "languages (Ward on MDS)", "silhouette by k"], rows)
    ward_d = c.get("ward_on_distance_labels", {})
    if ward_d:
        earlier = "; ".join(members for _, members in _groups(ward_d))
        lines += [f"Ward run directly on D (the earlier reproduction's): {earlier}", ""]
    names = [short(x) for x in c["languages"]]
    lines += [f"Share of the {c['ari']['n_resamples']} resamples in which two languages share a cluster:", ""]
    lines += table(["", *names], _rows_of(names, c["co_clustering"]))
    shown = (
        interactions.MATRIX_FIGURE,
        interactions.MDS_FIGURE,
        interactions.COCLUSTERING_FIGURE,
        interactions.DENDROGRAM_FIGURE,
    )
    return lines + images(a, [f"{name}.png" for name in shown])


CLAIMS = (
    Claim(
        7,
        "Vietnamese clusters with EN/ES/FR/PT rather than with Thai or Korean",
        "seed reproduction",
        vietnamese_clusters,
    ),
    Claim(8, "Arabic is isolated (a cluster of its own)", "seed reproduction", arabic_isolated),
)

STAGE = Stage(
    STAGE_NAME,
    interactions.STAGE3_SCRIPT,
    "Sec. 5, clusters of the earlier reproduction",
    main,
    claims=CLAIMS,
    report=interactions_section,
    meta=interactions.META_FILE,
)
