"""Stage 4: pairwise synergy of languages' top-1 features, intra- vs inter-cluster, with a permutation test.

For every unordered pair {A, B} of languages at each layer, one condition ablates A's top-1 and
B's top-1 together; on A's texts (and on B's) synergy = ΔAB − ΔA − ΔB, paired per text, with a
joint-bootstrap CI. ΔA and ΔB are Section 5's top-1 conditions, read from its condition store
with Section 5's evaluation texts, N and mode; pairs are computed once and cached there too.
Pairs whose top-1 features coincide (synergy = −ΔA by construction) or whose decoder directions
have |cosine| above --overlap-threshold are flagged, and every summary is given with and
without them. Clusters come from stage 3 (interaction_clusters.json). Writes:
  sae_features/<run>/cluster_synergy.csv            one row per pair, layer and evaluation side
  sae_features/<run>/cluster_synergy_summary.json   per layer: intra, inter, difference (CIs), permutation p, synergy ~ |cosine|
  output/<run>/synergy_intra_inter, synergy_vs_cosine, synergy_pairs (.png, .pdf)
"""

from __future__ import annotations

import sys


from langsae import features, interactions, plots, stats, sweep, synergy
from langsae.artifacts import package_versions, preflight, save_csv, save_json
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.errors import SkippedTask, UserError
from langsae.model import check_layers, model_config
from langsae.provenance import data_record
from langsae.stages import finished


def parse_args(argv):
    p = build_parser(__doc__)
    sweep.add_sweep_args(p, top_k=False, random_draws=False)
    g = p.add_argument_group("synergy")
    g.add_argument("--overlap-threshold", type=float, default=0.9, help="a pair whose top-1 decoder directions have |cosine| above this is flagged overlapping (degenerate)")
    g.add_argument("--permutations", type=int, default=10000, help="random permutations of the languages' cluster labels (sizes kept) for the intra-vs-inter test")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=200)  # cached ablation conditions, CSVs and figures
    n_texts = sweep.check_sweep_args(args, cfg)
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
    print(f"run {cfg.run_name}: {len(pairs)} pairs at layers {sorted(nu.layers)} ({args.mode}) x {n_texts} texts; clusters from stage 3 ({clusters['settings']['distance']}, k={clusters['settings']['k']})")
    result = setup.run(nu, conditions, cfg, args.rows_per_forward)
    print(f"{result.computed} conditions computed, {result.cached} read from the cache")

    effects = synergy.pair_effects(result, pairs, cfg.seed, stats.N_BOOT)
    n_of = {lang: len(setup.evalset.texts_of(lang)) for lang in languages}
    rows = synergy.pair_rows(effects, labels, n_of)
    summary = synergy.summary(effects, labels, languages, args.permutations, cfg.seed)
    fdir = cfg.features_dir
    save_csv(rows, fdir / "cluster_synergy.csv")
    settings = {
        "store": setup.settings, "mode": args.mode, "n_texts": n_texts, "languages": languages, "layers": sorted(nu.layers),
        "overlap_threshold": args.overlap_threshold, "permutations": args.permutations, "seed": cfg.seed,
        "clusters": {"labels": labels, "settings": clusters["settings"]},
    }  # fmt: skip
    order = sorted(range(len(languages)), key=lambda i: (labels[languages[i]], i))
    figures = plots.synergy_intra_inter(summary, cfg.output_dir / "synergy_intra_inter")
    figures += plots.synergy_vs_cosine(rows, cfg.output_dir / "synergy_vs_cosine")
    figures += plots.synergy_pairs(rows, languages, order, cfg.output_dir / "synergy_pairs")
    save_json(
        {"stage": "cluster_synergy", "layers": summary, "settings": settings, "config": cfg.describe(),
         "pair_synergy": "mean of the pair's synergy on A's texts and on B's texts",
         "regression": "pair synergy on |cosine| of the two top-1 decoder directions (scipy.stats.linregress)",
         "permutation_test": "two-sided, intra mean - inter mean, cluster labels permuted over languages (sizes kept), p = (1 + hits) / (1 + n)",
         "bootstrap": {"n_boot": stats.N_BOOT, "alpha": stats.ALPHA, "interval": "percentile", "seed": cfg.seed,
                       "resampling": "sentence ids with replacement, one draw shared by all languages"},
         "n_pairs": len(pairs), "computed": result.computed, "cached": result.cached,
         "figures": [str(f) for f in figures], "data": data_record(cfg, ("evaluation",)),
         "versions": package_versions()},
        fdir / "cluster_synergy_summary.json",
    )  # fmt: skip
    print(synergy.format_summary(summary))
    print(f"results: {fdir / 'cluster_synergy_summary.json'}; figures: {cfg.output_dir}")
    return finished(cfg, result.computed, result.cached, "conditions")


if __name__ == "__main__":
    sys.exit(run_main(main))
