"""Stage 6 figures of the ν stage's features, from its artifacts alone (no model load).

Writes to output/<run>/features/:
  figure1_layer<L>.{png,pdf}       paper Figure 1: ν of each language's top-k features vs random live
                                   features, at --layer
  nu_distributions.{png,pdf}       ν over all features, per language and layer (log counts)
  top1_nu_by_layer.{png,pdf}       the top-1 ν of each language across layers
  topk_overlap.{png,pdf}           Jaccard of the languages' top-k sets per layer, and how many languages
                                   have a top-1 in no other language's top-k (the shared-feature trap)
  specificity_layer<L>.{png,pdf}   μ of each language's top-k features measured in every language
  top_features.md                  per layer and language: top features, ν, μ, Neuronpedia link
Needs `python compute_nu_scores.py` (same model, SAE and languages) first.
"""

from __future__ import annotations

import dataclasses

from langsae import feature_figures, features
from langsae import nu as nu_lib
from langsae.artifacts import preflight
from langsae.config import MODEL_FLAGS, build_parser, resolve
from langsae.errors import UserError
from langsae.model import check_layers, model_config
from langsae.stages import Stage, finished

PAPER_LAYER = 10  # the seed reproduction's dominant layer
# no model runs and figures are always redrawn: these common flags mean nothing here
IGNORED = (*MODEL_FLAGS, "--n-texts-per-lang", "--force")


def parse_args(argv):
    p = build_parser(__doc__, "every layer with ν results", ignored=IGNORED)
    g = p.add_argument_group("feature figures")
    g.add_argument(
        "--layer",
        type=int,
        default=None,
        help=f"layer of Figure 1 and the specificity heatmap; default {PAPER_LAYER} when computed, "
        "else the middle computed layer",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=5,
        help="top features per language in Figure 1, the overlap and the specificity heatmap",
    )
    g.add_argument(
        "--n-table",
        type=int,
        default=10,
        help="top features per language and layer in top_features.md (at most 20)",
    )
    return p.parse_args(argv)


def model_layers(cfg) -> int | None:
    """The model's layer count, from its config if that is already on this machine (this stage never
    builds the toy or downloads a model), else None."""
    if not (cfg.features_dir / nu_lib.META_FILE).exists():
        return None  # no ν results: that is the message
    try:
        return model_config(dataclasses.replace(cfg.preset, prepare=None)).num_hidden_layers
    except UserError:
        return None


def check_model_layers(cfg, layer: int | None) -> None:
    """Name a layer the model lacks as such, not as ν results to compute."""
    n_model = model_layers(cfg)
    if n_model is not None:
        check_layers(cfg.layers, n_model)
        if layer is not None:
            check_layers((layer,), n_model, "--layer")


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=50)  # figures and top_features.md
    if args.top_k < 1 or not 1 <= args.n_table <= 20:
        raise UserError("--top-k must be at least 1 and --n-table between 1 and 20")
    check_model_layers(cfg, args.layer)
    # refuses missing or stale ν results with the command that makes them
    nu = features.load_nu_results(cfg, cfg.layers, 1)
    layers = sorted(nu.layers)
    layer = (
        args.layer
        if args.layer is not None
        else (PAPER_LAYER if PAPER_LAYER in layers else layers[len(layers) // 2])
    )
    if layer not in layers:
        remake = features.nu_command(cfg, [*layers, layer])
        raise UserError(f"--layer {layer} has no ν results (computed: {layers}); run `{remake}`")
    d_sae = int(nu.meta["d_sae"])
    if args.top_k > d_sae:
        raise UserError(f"--top-k {args.top_k} is larger than the SAE ({d_sae} features)")
    out = cfg.output_dir / feature_figures.SUBDIR
    remake = features.nu_command(cfg, layers, nu.top_k_saved, nu.meta.get("config"))  # if a ν file is damaged
    files = feature_figures.write_all(
        cfg.features_dir, out, layers, list(nu.languages), layer, args.top_k, args.n_table, cfg.seed, remake
    )
    print(f"{len(files)} files in {out} (Figure 1 and specificity at layer {layer})")
    return finished(cfg, len(files), 0, "file")


STAGE = Stage(
    "plots",
    "plot_sae_features.py",
    "Fig. 1",
    main,
)
