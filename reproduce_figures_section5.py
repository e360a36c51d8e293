"""Stage 2 (Section 5): ΔCE when ablating each language's top features, per layer (Figures 5, 6).

Reads the nu stage's saved feature directions (sae_features/<run>/layer_L_directions.pt) and
measures every condition on the evaluation texts (disjoint from the selection texts):
each language's top-1..k features singly and together, k random live features (seeded draws
from the saved control pool), at each layer, on every language's texts. Writes:
  sae_features/<run>/ablation_results.csv     one row per condition x evaluation language
  sae_features/<run>/ablation/                per-text CEs: baseline once, each condition keyed by a config hash
  sae_features/<run>/figure5_data.csv, figure6_data.csv, section5_summary.csv, section5_meta.json
  output/<run>/figure5.{png,pdf}, figure6.{png,pdf}   (feature mode: figure5_feature.*, ...)
Finished conditions are skipped on a rerun (--force recomputes).
"""

from __future__ import annotations

import sys

from langsae import features, plots, section5, stats, sweep
from langsae.artifacts import package_versions, preflight, save_csv, save_json
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.model import check_layers, model_config
from langsae.provenance import data_record
from langsae.stages import finished


def parse_args(argv):
    p = build_parser(__doc__)
    sweep.add_sweep_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=200)  # cached sweep conditions, CSVs and figures
    n_texts = sweep.check_sweep_args(args, cfg)
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    nu = features.load_nu_results(cfg, cfg.layers, args.top_k)
    layers, languages = sorted(nu.layers), list(cfg.languages)
    conditions = sweep.sweep_conditions(nu, languages, args.mode, args.top_k, args.random_draws, cfg.seed)
    setup = sweep.open_sweep(cfg, nu, n_texts)
    evalset, settings = setup.evalset, setup.settings
    print(f"run {cfg.run_name}: {len(conditions)} conditions ({args.mode}) at layers {layers} x {len(languages)} languages x {n_texts} texts")
    result = setup.run(nu, conditions, cfg, args.rows_per_forward)
    print(f"{result.computed} conditions computed, {result.cached} read from the cache")

    suffix = "" if args.mode == "directional" else f"_{args.mode}"
    fdir = cfg.features_dir
    section5.write_results(section5.results_rows(result, cfg.seed), fdir / "ablation_results.csv", args.mode)
    fig5 = section5.figure5_rows(result, languages, layers, args.top_k, cfg.seed)
    fig6 = section5.figure6_rows(result, languages, layers, args.top_k, cfg.seed)
    summary = section5.summary_rows(result, languages, layers, args.top_k, cfg.seed)
    save_csv(fig5, fdir / f"figure5_data{suffix}.csv")
    if fig6:
        save_csv(fig6, fdir / f"figure6_data{suffix}.csv")
    save_csv(summary, fdir / f"section5_summary{suffix}.csv")
    peaks = {r["language"]: r["peak_layer"] for r in summary}
    figures = plots.figure5(fig5, languages, cfg.output_dir / f"figure5{suffix}", args.mode, peaks)
    if fig6:
        figures += plots.figure6(fig6, languages, cfg.output_dir / f"figure6{suffix}", args.mode, peaks)
    save_json(
        {"stage": "reproduce_figures_section5", "settings": settings, "config": cfg.describe(), "mode": args.mode, "top_k": args.top_k,
         "random_draws": args.random_draws, "n_texts_per_lang": n_texts, "layers": layers, "languages": languages,
         "eval_source": evalset.source, "n_conditions": len(conditions), "seed": cfg.seed,
         "bootstrap": {"n_boot": stats.N_BOOT, "alpha": stats.ALPHA, "interval": "percentile", "seed": cfg.seed,
                       "resampling": "sentence ids with replacement, one draw shared by all languages",
                       "random_control": "draws resampled with replacement as well as sentence ids"},
         "split_seed": cfg.seed, "peak_rule": section5.PEAK_RULE,
         "n_sentence_ids": len(set(evalset.sentence_ids.tolist())),
         "figures": [str(f) for f in figures], "data": data_record(cfg, ("evaluation",)),
         "versions": package_versions()},
        fdir / f"section5_meta{suffix}.json",
    )  # fmt: skip
    print(section5.format_summary(summary))
    print(f"results: {fdir / 'ablation_results.csv'}; figures: {cfg.output_dir}")
    return finished(cfg, result.computed, result.cached, "conditions")


if __name__ == "__main__":
    sys.exit(run_main(main))
