"""Stage 3: the cross-linguistic interaction matrix, MDS + Ward clusters of its distance, and their stability.

M[i, j] = mean ΔCE on language i's evaluation texts when language j's top features are ablated
(--features, at --layers, combined by --aggregate). These are Section 5's conditions with
Section 5's evaluation texts, N and mode, read from its condition store (sae_features/<run>/ablation/);
whatever is missing is computed and cached. The distance D (--distance) is embedded by metric
MDS, clustered by Ward linkage on the MDS coordinates and cut at --k; the earlier
reproduction's Ward-on-D clusters are printed beside them. Stability: every one of
--stability-boot joint resamples of sentence ids is clustered again. Writes:
  sae_features/<run>/interaction_matrix.csv    per layer and aggregate: eval_lang, ablated_lang, delta_ce, CI (+ random reference rows)
  sae_features/<run>/interaction_clusters.json labels, MDS coordinates, stress, silhouette, co-clustering, ARI, settings
  sae_features/<run>/interaction_meta.json     model, data, settings, versions, conditions computed and read
  output/<run>/interaction_matrix, interaction_mds, interaction_dendrogram, interaction_coclustering (.png, .pdf)
"""

from __future__ import annotations

from typing import Sequence


from langsae import features, interactions, plots, section5, stats, sweep
from langsae.artifacts import package_versions, preflight, save_csv, save_json
from langsae.config import build_parser, resolve
from langsae.errors import SkippedTask, UserError
from langsae.model import check_layers, model_config
from langsae.provenance import data_record
from langsae.stages import Stage, finished
from langsae.verdicts import Claim, Artifacts, Evidence, FREQ_SURE, INCONCLUSIVE, SUPPORTED, combine, frequency_verdict, images, not_run, short, listing, table

DEFAULT_K = 5


def parse_args(argv):
    p = build_parser(__doc__)
    sweep.add_sweep_args(p, top_k=False)
    g = p.add_argument_group("interactions")
    g.add_argument("--features", choices=list(interactions.FEATURE_SETS), default="top1+2", help="which of each language's top features to ablate")
    g.add_argument(
        "--aggregate", default="mean",
        help="how M combines the --layers: mean (the mean over them, as the earlier reproduction), peak (each ablated "
        "language at its held-out peak layer from Section 5; needs its summary), or a layer number",
    )  # fmt: skip
    g.add_argument(
        "--distance", choices=interactions.DISTANCES, default="ratio",
        help="ratio: D_ij = max(0, 1 - (M_ij + M_ji)/(M_ii + M_jj)) (the earlier reproduction's); profile: correlation "
        "distance between the languages' interaction profiles (row and column of M, divided by M_ii)",
    )  # fmt: skip
    g.add_argument("--k", type=int, default=None, help=f"number of clusters the Ward tree is cut into; unset: {DEFAULT_K} (the paper's), or one less than the number of languages when that is smaller")
    g.add_argument("--mds-dims", type=int, default=2, help="dimensions of the metric MDS embedding that Ward clusters")
    g.add_argument("--mds-init", type=int, default=4, help="seeded random starts of the MDS (SMACOF); the lowest stress wins")
    g.add_argument("--stability-boot", type=int, default=200, help="joint resamples of sentence ids, each clustered again (co-clustering, ARI)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=200)  # cached ablation conditions, clusters, CSVs and figures
    n_texts = sweep.check_sweep_args(args, cfg)
    languages = list(cfg.languages)
    if len(languages) < 3:
        raise SkippedTask("clustering languages needs at least three in --languages")
    if args.k is None:
        args.k = min(DEFAULT_K, len(languages) - 1)
    if not 2 <= args.k < len(languages):
        raise UserError(f"--k must be between 2 and {len(languages) - 1} (one less than the number of languages)")
    for flag, value in (("--mds-dims", args.mds_dims), ("--mds-init", args.mds_init), ("--stability-boot", args.stability_boot)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1")
    aggregate = interactions.parse_aggregate(args.aggregate)
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    ranks = interactions.FEATURE_SETS[args.features]
    nu = features.load_nu_results(cfg, cfg.layers, max(ranks))
    layers = sorted(nu.layers)
    conditions = interactions.interaction_conditions(nu, languages, args.mode, ranks, args.random_draws, cfg.seed)
    setup = sweep.open_sweep(cfg, nu, n_texts)
    peaks = section5.load_peaks(cfg, setup.settings, args.mode, n_texts) if aggregate == "peak" else None
    weights = interactions.layer_weights(aggregate, layers, languages, peaks)
    print(f"run {cfg.run_name}: {len(conditions)} conditions ({args.mode}, {args.features}) at layers {layers} x {len(languages)} languages x {n_texts} texts")
    result = setup.run(nu, conditions, cfg, args.rows_per_forward)
    print(f"{result.computed} conditions computed, {result.cached} read from the cache")

    # aggregate: matrices with CIs, then the point clustering and its stability over resamples
    per_layer = interactions.layer_matrices(result, args.features, len(ranks), cfg.seed, stats.N_BOOT)
    m, rand = per_layer.aggregate(weights)
    d = interactions.DISTANCE_FUNCTIONS[args.distance](m.point)
    if d is None:
        raise UserError(f"the {args.distance} distance is undefined: some language's own ΔCE (diagonal of M) is not positive; try other --layers or --features")
    point = interactions.cluster(d, args.k, args.mds_dims, args.mds_init, cfg.seed)
    previous = interactions.ward_on_distance(d, args.k)
    resampled = interactions.layer_matrices(result, args.features, len(ranks), cfg.seed, args.stability_boot).aggregate(weights)[0]
    stab = interactions.stability(resampled.reps, args.distance, point.labels, args.k, args.mds_dims, args.mds_init, cfg.seed)
    silhouette = interactions.silhouettes(point)
    non_euclidean = interactions.negative_eigen_mass(d)

    fdir, agg_name = cfg.features_dir, str(aggregate)
    n_of = {lang: len(setup.evalset.texts_of(lang)) for lang in languages}
    rows = []
    for k, L in enumerate(layers):
        rows += interactions.matrix_rows(per_layer.m[k], languages, L, args.features, args.mode, n_of)
        if per_layer.random is not None:
            rows += interactions.random_rows(per_layer.random[k], languages, L, len(ranks), args.mode, n_of)
    if not isinstance(aggregate, int):
        rows += interactions.matrix_rows(m, languages, agg_name, args.features, args.mode, n_of)
        if rand is not None:
            rows += interactions.random_rows(rand, languages, agg_name, len(ranks), args.mode, n_of)
    save_csv(rows, fdir / "interaction_matrix.csv", interactions.MATRIX_COLUMNS)
    settings = {
        "store": setup.settings, "mode": args.mode, "n_texts": n_texts, "languages": languages, "features": args.features,
        "layers": layers, "aggregate": agg_name, "peak_layers": peaks, "distance": args.distance, "k": args.k,
        "mds_dims": args.mds_dims, "mds_init": args.mds_init, "stability_boot": args.stability_boot,
        "random_draws": args.random_draws, "seed": cfg.seed,
    }  # fmt: skip
    low, high = m.interval()
    clusters = {
        "languages": languages, "matrix": m.point.tolist(), "matrix_ci_low": low.tolist(), "matrix_ci_high": high.tolist(),
        "distance_kind": args.distance, "distance": d.tolist(), "negative_eigen_mass": non_euclidean,
        "labels": dict(zip(languages, point.labels.tolist())), "mds_coords": dict(zip(languages, point.coords.tolist())),
        "stress": point.stress, "linkage": point.linkage.tolist(), "silhouette": {str(k): v for k, v in silhouette.items()},
        "ward_on_distance_labels": dict(zip(languages, previous.tolist())),
        "co_clustering": stab.co_clustering.tolist(), "ari": stab.ari_summary(), "settings": settings,
    }  # fmt: skip
    save_json(clusters, fdir / interactions.CLUSTERS_FILE)
    figures = plots.interaction_matrix(m, languages, cfg.output_dir / "interaction_matrix", f"{args.features}, {agg_name}, {args.mode}")
    figures += plots.mds_map(point.coords, point.labels, stab.co_clustering, languages, cfg.output_dir / "interaction_mds", point.stress)
    figures += plots.dendrogram(point.linkage, languages, cfg.output_dir / "interaction_dendrogram", args.k)
    figures += plots.co_clustering(stab.co_clustering, languages, cfg.output_dir / "interaction_coclustering", stab.ari_summary())
    save_json(
        {"stage": "cross_linguistic_interactions", "settings": settings, "config": cfg.describe(),
         "eval_source": setup.evalset.source, "n_conditions": len(conditions), "computed": result.computed, "cached": result.cached,
         "bootstrap": {"n_boot": stats.N_BOOT, "alpha": stats.ALPHA, "interval": "percentile", "seed": cfg.seed,
                       "resampling": "sentence ids with replacement, one draw shared by all languages",
                       "random_reference": "draws resampled with replacement as well as sentence ids",
                       "stability_resamples": args.stability_boot},
         "figures": [str(f) for f in figures], "data": data_record(cfg, ("evaluation",)),
         "versions": package_versions()},
        fdir / "interaction_meta.json",
    )  # fmt: skip
    print(interactions.format_clusters(clusters))
    print(f"results: {fdir / interactions.CLUSTERS_FILE}; figures: {cfg.output_dir}")
    return finished(cfg, result.computed, result.cached, "conditions")


# ----------------------------------------------------------------------------- claims and report section


def _co_clustering(a: Artifacts) -> tuple[dict, dict[str, int]] | None:
    c = a.json("interaction_clusters.json")
    return (c, {lang: k for k, lang in enumerate(c["languages"])}) if c else None


def _cluster_evidence(a: Artifacts, lang: str, shares: dict[str, float], how: str, what: str, control: str) -> Evidence:
    """A categorical claim on stage 3's clusters: each pair's share of bootstrap resamples that agrees with it."""
    c, _ = _co_clustering(a)
    figure = a.figure("interaction_mds.png")
    if not shares:
        return Evidence(f"{short(lang)} or the languages it is compared with are not in this run", "-", figure, INCONCLUSIVE)
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
    rivals = ", ".join(f"{short(x)} {co[i[vie]][i[x]]:.2f}" for x in ("tha_Thai", "kor_Hang") if x in i) or "-"
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


def _rows_of(names: Sequence[str], matrix: Sequence[Sequence[float]]) -> list[tuple]:
    return [(x, *(f"{v:.2f}" for v in row)) for x, row in zip(names, matrix)]


def interactions_section(a: Artifacts) -> list[str]:
    title = "Stage 3: cross-linguistic interactions and clusters"
    c = a.json("interaction_clusters.json")
    if c is None:
        return not_run(title, a, "interactions", "python cross_linguistic_interactions.py")
    st = c["settings"]
    lines = [f"## {title}", "", f"M from {st['features']} at layers {st['layers']} ({st['aggregate']}), {st['mode']} ablation, {st['n_texts']} texts per "
             f"language; distance `{c['distance_kind']}` (negative eigenvalue mass {c['negative_eigen_mass']:.3f}); metric MDS stress {c['stress']:.3f}; "
             f"Ward on the MDS coordinates cut at k={st['k']}; stability over {c['ari']['n_resamples']} resamples: mean ARI {c['ari']['mean']:.2f} "
             f"[{c['ari']['q05']:.2f}, {c['ari']['q95']:.2f}].", ""]  # fmt: skip
    groups = sorted({g for g in c["labels"].values()})
    ward_d = c.get("ward_on_distance_labels", {})
    lines += table(["cluster", "languages (Ward on MDS)", "silhouette by k"], [
        (g, ", ".join(short(x) for x, y in c["labels"].items() if y == g), ", ".join(f"{k}: {v:.2f}" for k, v in c["silhouette"].items()) if i == 0 else "")
        for i, g in enumerate(groups)
    ])  # fmt: skip
    if ward_d:
        lines += ["Ward run directly on D (the earlier reproduction's): " + "; ".join(
            ", ".join(short(x) for x, y in ward_d.items() if y == g) for g in sorted(set(ward_d.values()))), ""]
    names = [short(x) for x in c["languages"]]
    lines += [f"Share of the {c['ari']['n_resamples']} resamples in which two languages share a cluster:", ""]
    lines += table(["", *names], _rows_of(names, c["co_clustering"]))
    return lines + images(a, ["interaction_matrix.png", "interaction_mds.png", "interaction_coclustering.png", "interaction_dendrogram.png"])


CLAIMS = (
    Claim(7, "Vietnamese clusters with EN/ES/FR/PT rather than with Thai or Korean", "seed reproduction", vietnamese_clusters),
    Claim(8, "Arabic is isolated (a cluster of its own)", "seed reproduction", arabic_isolated),
)

STAGE = Stage(
    "interactions",
    "cross_linguistic_interactions.py",
    "Sec. 5, clusters of the earlier reproduction",
    main,
    claims=CLAIMS,
    report=interactions_section,
    meta="interaction_meta.json",
)
