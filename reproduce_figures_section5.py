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

import logging
import sys

from langsae import ablation, features, plots, section5, stats, sweep
from langsae.artifacts import package_versions, save_csv, save_json
from langsae.cli import run_main
from langsae.config import PRESETS, build_parser, resolve
from langsae.data import load_texts
from langsae.errors import UserError
from langsae.model import check_layers, load_model, model_config
from langsae.stages import work

log = logging.getLogger(__name__)

DEFAULT_N_TEXTS = 500  # the paper's; a preset may set its own ("n_eval_texts")


def parse_args(argv):
    p = build_parser(__doc__.split("\n\n")[0])
    g = p.add_argument_group("section 5")
    g.add_argument(
        "--n-texts", type=int, default=None,
        help=f"evaluation texts per language (the first N of the evaluation set); default {DEFAULT_N_TEXTS} (paper), toy preset {PRESETS['toy'].defaults['n_eval_texts']}",
    )  # fmt: skip
    g.add_argument(
        "--mode", choices=ablation.MODES, default="directional",
        help="directional: project the block's residual output off the features' unit decoder directions (paper); "
        "feature: subtract each feature's own contribution a_f(x)·W_dec[f] at the SAE's write point (transcoder-native)",
    )  # fmt: skip
    g.add_argument("--top-k", type=int, default=2, help="ablate each language's top-1..k features alone and all together (2: top1, top2, top1+2)")
    g.add_argument(
        "--random-draws", type=int, default=5,
        help="seeded draws of k random live features per layer, k = 1 and --top-k (control); the control's CI "
        "resamples draws as well as texts, so it needs at least 2 (1 gives a texts-only band); 0 = none",
    )  # fmt: skip
    g.add_argument("--rows-per-forward", type=int, default=64, help="texts x conditions stacked into one forward from the ablated layer (memory vs speed)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    n_texts = args.n_texts if args.n_texts is not None else cfg.preset.defaults.get("n_eval_texts", DEFAULT_N_TEXTS)
    for flag, value, low in (("--n-texts", n_texts, 1), ("--random-draws", args.random_draws, 0), ("--rows-per-forward", args.rows_per_forward, 1)):
        if value < low:
            raise UserError(f"{flag} must be at least {low}")
    if args.random_draws == 1:
        log.warning("one random draw: the random control's interval cannot include the spread between draws (use --random-draws 2 or more)")
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    nu = features.load_nu_results(cfg, cfg.layers, args.top_k)
    layers, languages = sorted(nu.layers), list(cfg.languages)
    conditions = sweep.sweep_conditions(nu, languages, args.mode, args.top_k, args.random_draws, cfg.seed)
    texts = load_texts(cfg.languages, "evaluation", n_texts, cfg.split)
    print(f"run {cfg.run_name}: {len(conditions)} conditions ({args.mode}) at layers {layers} x {len(languages)} languages x {n_texts} texts")

    model, tokenizer = load_model(cfg.preset, cfg.device, cfg.dtype)
    evalset = sweep.build_eval_set(tokenizer, texts)
    d = cfg.describe()
    settings = {
        "model_id": d["model_id"], "sae_release": d["sae_release"], "sae_id_template": d["sae_id_template"],
        "dtype": d["dtype"], "split": cfg.split, "nu_config_hash": nu.meta["config_hash"], "eval_texts": evalset.digest(),
    }  # fmt: skip
    store = sweep.ConditionStore(cfg.features_dir / "ablation", settings)
    result = sweep.run_sweep(
        model, evalset, nu, conditions, store, cfg.batch_size, tokenizer.pad_token_id, args.rows_per_forward, cfg.force
    )

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
        {"stage": "reproduce_figures_section5", "settings": settings, "config": d, "mode": args.mode, "top_k": args.top_k,
         "random_draws": args.random_draws, "n_texts_per_lang": n_texts, "layers": layers, "languages": languages,
         "eval_source": evalset.source, "n_conditions": len(conditions), "seed": cfg.seed,
         "bootstrap": {"n_boot": stats.N_BOOT, "alpha": stats.ALPHA, "interval": "percentile", "seed": cfg.seed,
                       "resampling": "sentence ids with replacement, one draw shared by all languages",
                       "random_control": "draws resampled with replacement as well as sentence ids"},
         "split_seed": cfg.seed, "peak_rule": section5.PEAK_RULE,
         "n_sentence_ids": len(set(evalset.sentence_ids.tolist())),
         "figures": [str(f) for f in figures], "versions": package_versions()},
        fdir / f"section5_meta{suffix}.json",
    )  # fmt: skip
    print(section5.format_summary(summary))
    print(f"results: {fdir / 'ablation_results.csv'}; figures: {cfg.output_dir}")
    return work(result.n_computed, len(conditions) - result.n_computed, "condition")


if __name__ == "__main__":
    sys.exit(run_main(main))
