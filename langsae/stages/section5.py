"""Stage 2 (Section 5): ΔCE when ablating each language's top features, per layer (Figures 5, 6).

Reads the nu stage's saved feature directions (sae_features/<run>/layer_L_directions.pt) and
measures every condition on the evaluation texts (disjoint from the selection texts):
each language's top-1..k features singly and together, k random live features (seeded draws
from the saved control pool), at each layer, on every language's texts. Writes:
  sae_features/<run>/ablation_results.csv     one row per condition x evaluation language
  sae_features/<run>/ablation/                per-text CEs: baseline once, each condition keyed by a
                                              config hash
  sae_features/<run>/figure5_data.csv, figure6_data.csv, section5_summary.csv, section5_meta.json
  output/<run>/figure5.{png,pdf}, figure6.{png,pdf}   (feature mode: figure5_feature.*, ...)
Finished conditions are skipped on a rerun (--force recomputes).
"""

from __future__ import annotations

from typing import Sequence

from langsae import distributed, features, plots, stats, sweep
from langsae import section5 as s5lib
from langsae.artifacts import save_csv
from langsae.config import build_parser
from langsae.model import check_layers, model_config
from langsae.provenance import data_record
from langsae.stages import Stage, finished, work, write_meta
from langsae.verdicts import (
    INCONCLUSIVE,
    N_LISTED,
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    by_lang,
    combine,
    frequency_verdict,
    img,
    interval_of,
    interval_verdict,
    layer_span,
    listing,
    not_run,
    num,
    short,
    table,
)

STAGE_NAME = "section5"


def parse_args(argv):
    p = build_parser(__doc__)
    sweep.add_sweep_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, n_texts, plan = sweep.start(args, STAGE_NAME)
    if cfg.layers is not None:
        check_layers(cfg.layers, model_config(cfg.preset).num_hidden_layers)
    nu = features.load_nu_results(cfg, cfg.layers, args.top_k)
    layers, languages = sorted(nu.layers), list(cfg.languages)
    conditions = sweep.sweep_conditions(nu, languages, args.mode, args.top_k, args.random_draws, cfg.seed)
    setup = sweep.open_sweep(cfg, nu, n_texts)
    evalset, settings = setup.evalset, setup.settings
    print(
        f"run {cfg.run_name}: {len(conditions)} conditions ({args.mode}) at layers {layers} "
        f"x {len(languages)} languages x {n_texts} texts"
    )
    result = setup.run(nu, conditions, cfg, args.rows_per_forward)
    if distributed.after_share():
        return work(result.computed, result.cached, "conditions")

    fdir, mode = cfg.features_dir, args.mode
    results_path = fdir / s5lib.RESULTS_FILE
    s5lib.write_results(s5lib.results_rows(result, cfg.seed), results_path, mode)
    fig5 = s5lib.figure5_rows(result, languages, layers, args.top_k, cfg.seed)
    fig6 = s5lib.figure6_rows(result, languages, layers, args.top_k, cfg.seed)
    summary = s5lib.summary_rows(result, languages, layers, args.top_k, cfg.seed)
    save_csv(fig5, fdir / s5lib.figure5_data_file(mode))
    if fig6:
        save_csv(fig6, fdir / s5lib.figure6_data_file(mode))
    save_csv(summary, fdir / s5lib.summary_file(mode))
    peaks = {r["language"]: r["peak_layer"] for r in summary}
    figures = plots.figure5(
        fig5, languages, cfg.output_dir / s5lib.figure_stem(s5lib.FIGURE5, mode), mode, peaks
    )
    if fig6:
        figures += plots.figure6(
            fig6, languages, cfg.output_dir / s5lib.figure_stem(s5lib.FIGURE6, mode), mode, peaks
        )
    bootstrap = stats.bootstrap_record(cfg.seed, s5lib.RESAMPLING, random_control=s5lib.RANDOM_RESAMPLING)
    write_meta(
        fdir / s5lib.meta_file(mode),
        cfg,
        STAGE_NAME,
        settings,
        figures,
        memory_plan=plan.record(),
        mode=mode,
        top_k=args.top_k,
        random_draws=args.random_draws,
        n_texts_per_lang=n_texts,
        layers=layers,
        languages=languages,
        eval_source=evalset.source,
        n_conditions=len(conditions),
        seed=cfg.seed,
        bootstrap=bootstrap,
        split_seed=cfg.seed,
        peak_rule=s5lib.PEAK_RULE,
        n_sentence_ids=len(set(evalset.sentence_ids.tolist())),
        data=data_record(cfg, ("evaluation",)),
    )
    print(s5lib.format_summary(summary))
    print(f"results: {results_path}; figures: {cfg.output_dir}")
    return finished(cfg, result.computed, result.cached, "conditions")


# ----------------------------------------------------------------------------- claims and report section


def _peaks_by_layer(rows: Sequence[dict]) -> str:
    """Each language's held-out peak layer when there are few, else how many peak at each layer."""
    if len(rows) <= N_LISTED:
        return ", ".join(f"{short(r['language'])} {r['peak_layer']}" for r in rows)
    counts = {}
    for r in rows:
        counts[int(r["peak_layer"])] = counts.get(int(r["peak_layer"]), 0) + 1
    return ", ".join(f"L{L} {n}" for L, n in sorted(counts.items()))


def _peak_shares(row: dict) -> dict[int, float]:
    """section5_summary's peak_frequency "L:share;..." as {layer: share}."""
    out = {}
    for part in filter(None, str(row.get("peak_frequency", "")).split(";")):
        layer, share = part.split(":")
        out[int(layer)] = float(share)
    return out


def _peak_claim(a: Artifacts, layer: int, languages: Sequence[str] | None, how: str) -> Evidence | None:
    s5 = s5lib.summary(a)
    if s5 is None:
        return None
    rows, meta = s5
    figure = a.figure(s5lib.FIGURE5_PNG)
    if languages is not None:
        missing = [lang for lang in languages if lang not in {r["language"] for r in rows}]
        if missing:
            return Evidence(f"{', '.join(missing)} not in this run", "-", figure, INCONCLUSIVE)
        rows = [r for r in rows if r["language"] in languages]
    held_out = f"held-out peaks: {_peaks_by_layer(rows)}"
    if layer not in meta["layers"]:
        measured = layer_span(meta["layers"])
        numbers = f"layer {layer} not measured (layers {measured}); {held_out}"
        return Evidence(numbers, "-", figure, INCONCLUSIVE)
    shares = [_peak_shares(r).get(layer, 0.0) for r in rows]
    at = sum(int(r["peak_layer"]) == layer for r in rows)
    sure = sum(frequency_verdict(s) == SUPPORTED for s in shares)
    spread = listing([(short(r["language"]), s, f"{s:.2f}") for r, s in zip(rows, shares)], ", ")
    n = len(rows)
    numbers = f"held-out peak at layer {layer} for {at}/{n}; in ≥ 95% of resamples {sure}/{n}: {spread}"
    control = f"peak chosen on half A of the sentences, reported on half B; {held_out}"
    return Evidence(numbers, control, figure, combine([frequency_verdict(s) for s in shares], how))


def layer10_dominant(a: Artifacts) -> Evidence | None:
    return _peak_claim(a, 10, None, "most")


def korean_thai_layer0(a: Artifacts) -> Evidence | None:
    return _peak_claim(a, 0, ["kor_Hang", "tha_Thai"], "every")


def hurts_mainly_target(a: Artifacts) -> Evidence | None:
    """Per language at its held-out peak: self − others above zero, and self above k random features."""
    s5 = s5lib.summary(a)
    if s5 is None:
        return None
    rows, _ = s5
    own = [interval_of(r, "self_delta_ce", "self") for r in rows]
    beyond_random = [
        interval_verdict(o, interval_of(r, "random_delta_ce", "random")) for o, r in zip(own, rows)
    ]
    specific = [interval_verdict(interval_of(r, "specificity_diff")) for r in rows]
    verdicts = [combine([v, b], "every") for v, b in zip(specific, beyond_random)]
    numbers = f"self − others ΔCE at the peak: {by_lang(rows, lambda r: interval_of(r, 'specificity_diff'))}"
    control = f"own ΔCE beyond k random live features in {beyond_random.count(SUPPORTED)}/{len(rows)}"
    verdict = combine(verdicts, "most")
    numbers = f"{verdicts.count(SUPPORTED)}/{len(rows)} languages supported. {numbers}"
    return Evidence(numbers, control, a.figure(s5lib.FIGURE5_PNG), verdict)


def own_features_beat_others(a: Artifacts) -> Evidence | None:
    s5 = s5lib.summary(a)
    if s5 is None:
        return None
    rows, _ = s5

    def own(r):
        return interval_of(r, "self_delta_ce", "self")

    def other(r):
        return interval_of(r, "other_lang_features_delta_ce", "other_lang_features")

    verdicts = [interval_verdict(own(r), other(r)) for r in rows]
    numbers = f"{verdicts.count(SUPPORTED)}/{len(rows)} languages supported; own: {by_lang(rows, own)}"
    control = f"other languages' features: {by_lang(rows, other)}"
    return Evidence(numbers, control, a.figure(s5lib.FIGURE5_PNG), combine(verdicts, "most"))


def some_synergy(a: Artifacts) -> Evidence | None:
    s5 = s5lib.summary(a)
    if s5 is None:
        return None
    rows, meta = s5
    if int(meta.get("top_k", 2)) < 2:
        return Evidence("synergy needs --top-k 2 or more in Section 5", "-", None, INCONCLUSIVE)
    verdicts = [interval_verdict(interval_of(r, "synergy")) for r in rows]
    sub = sum(interval_verdict(interval_of(r, "synergy"), direction=-1) == SUPPORTED for r in rows)
    spread = by_lang(rows, lambda r: interval_of(r, "synergy"))
    numbers = f"synergy > 0 in {verdicts.count(SUPPORTED)}/{len(rows)}, < 0 (sub-additive) in {sub}: {spread}"
    return Evidence(
        numbers,
        "none: synergy is a paired difference of the same texts' ΔCEs",
        a.figure(s5lib.FIGURE6_PNG),
        combine(verdicts, "some"),
    )


def section5_section(a: Artifacts) -> list[str]:
    s5 = s5lib.summary(a)
    if s5 is None:
        return not_run("Stage 2: Section 5 (ΔCE)", a, None, f"python {s5lib.SCRIPT}")
    rows, meta = s5
    lines = [
        "## Stage 2: Section 5 (ΔCE)",
        "",
        f"{meta['mode']} ablation, {meta['n_texts_per_lang']} evaluation texts per language, "
        f"layers {meta['layers']}. {meta['peak_rule']}.",
        "",
    ]
    lines += img(a, s5lib.FIGURE5_PNG, "Figure 5") + img(a, s5lib.FIGURE6_PNG, "Figure 6")
    head = [
        "language",
        "held-out peak (share)",
        "share of resamples by peak layer",
        "self ΔCE [95% CI]",
        "self − others [95% CI]",
        "synergy [95% CI]",
        "random k [95% CI]",
        "other languages' features",
        "shared top-k with",
    ]

    return lines + table(head, [_table_row(r) for r in rows])


def _table_row(r: dict) -> tuple:
    """One language's row of the section's table (columns as its head)."""
    by_share = sorted(_peak_shares(r).items(), key=lambda x: -x[1])
    return (
        r["language"],
        f"{r['peak_layer']} ({num(r, 'modal_peak_share'):.2f})",
        ", ".join(f"{L} {v:.2f}" for L, v in by_share),
        interval_of(r, "self_delta_ce", "self"),
        interval_of(r, "specificity_diff"),
        interval_of(r, "synergy"),
        interval_of(r, "random_delta_ce", "random"),
        interval_of(r, "other_lang_features_delta_ce", "other_lang_features"),
        r["shared_with"] or "-",
    )


def header_rows(a: Artifacts) -> list[tuple[str, str]]:
    """Section 5's rows in the report's table of what made the run."""
    s5 = a.json(s5lib.META_FILE)
    if s5 is None:
        return [("data (evaluation)", "-"), ("Section 5 settings", "-"), ("bootstrap", "-")]
    keys = ("mode", "top_k", "random_draws", "n_texts_per_lang", "seed")
    return [
        ("data (evaluation)", s5.get("eval_source", "-")),
        ("Section 5 settings", ", ".join(f"{k} {s5[k]}" for k in keys if k in s5)),
        ("bootstrap", f"{s5['bootstrap']['n_boot']} resamples, {s5['bootstrap']['resampling']}"),
    ]


CLAIMS = (
    Claim(
        1,
        "Layer 10 is the dominant language-specificity layer (most languages peak there)",
        "seed reproduction",
        layer10_dominant,
    ),
    Claim(2, "Korean and Thai peak at layer 0", "seed reproduction", korean_thai_layer0),
    Claim(
        3,
        "Ablating a language's top features hurts mainly that language (self − others > 0, and beyond "
        "random features), for most languages",
        "paper (Sec. 5)",
        hurts_mainly_target,
    ),
    Claim(
        4,
        "A language's own top features hurt it more than other languages' top features do, "
        "for most languages",
        "docs/method.md (control)",
        own_features_beat_others,
    ),
    Claim(
        5,
        "Some languages show synergy: ablating top-1+2 together hurts more than the sum of each alone",
        "paper (Fig. 6)",
        some_synergy,
    ),
)

STAGE = Stage(
    STAGE_NAME,
    s5lib.SCRIPT,
    "Sec. 5, Fig. 5, 6",
    main,
    claims=CLAIMS,
    report=section5_section,
    meta=s5lib.META_FILE,
    header=header_rows,
)
