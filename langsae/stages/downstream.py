"""Stage 5: question answering (XQuAD), sentiment (Amazon reviews) and topic classification (SIB-200)
under ablation of each language's top-1+2 features, with random-feature and cross-language controls.

Reads the nu stage's saved feature directions and, per task and language, runs the baseline, the
task language's own top-1+2 ablation, --random-draws random live-feature ablations of the same k
and a cross-language control (another language's top-1+2) at each of --layers, all stacked along
the batch in one generation / scoring engine (KV cache on, ablation active at every position).
Writes:
  sae_features/<run>/downstream_results.csv     tidy: task, lang, layer, condition, ablated_lang, draw,
                                                metric, scoring, quantity (value|delta), value, ci_low,
                                                ci_high, n
  sae_features/<run>/downstream_summary.json    per task, language, layer and metric: does the own drop
                                                exceed random's?
  sae_features/<run>/downstream/<task>/<lang>/<unit>.jsonl (+ .json)   per-item outputs of each finished unit
  sae_features/<run>/downstream_meta.json
  output/<run>/downstream_<task>_L<layer>.{png,pdf}
(feature mode: downstream_results_feature.csv, ...). Finished units are skipped on a rerun (--force
recomputes).
"""

from __future__ import annotations

import collections
import csv
import logging
import math

from langsae import ablation, distributed, downstream, features, plots, stats, tasks, units
from langsae import section5 as s5lib
from langsae.artifacts import preflight, save_csv, save_json
from langsae.config import PRESETS, build_parser, resolve
from langsae.data import load_texts
from langsae.errors import UserError
from langsae.interactions import CLUSTERS_FILE, STAGE3_SCRIPT
from langsae.memory import generation_plan
from langsae.model import check_layers, load_model, load_tokenizer, model_config, placement
from langsae.provenance import data_record
from langsae.stages import Stage, finished, work, write_meta
from langsae.verdicts import (
    COLLAPSE_SHARE,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    ROBUST_SHARE,
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    combine,
    images,
    interval_verdict,
    ivl,
    listing,
    not_run,
    short,
    table,
)

TOY = PRESETS["toy"].defaults
log = logging.getLogger(__name__)

STAGE_NAME = "downstream"
IGNORED = ("--n-texts-per-lang", "--batch-size")  # items come from the tasks, batches from --rows-per-forward
LAYER_RULE = (
    "the most common held-out peak layer across languages in the Section 5 summary (ties: the lowest layer)"
)


def parse_args(argv):
    p = build_parser(__doc__, f"the preset's (10 for qwen3-0.6b), else {LAYER_RULE}", ignored=IGNORED)
    g = p.add_argument_group("downstream")
    tasks_help = f"comma-separated: qa, sentiment, topic; default all, toy preset {TOY['downstream_tasks']}"
    g.add_argument("--tasks", help=tasks_help)
    g.add_argument(
        "--mode",
        choices=ablation.MODES,
        default="directional",
        help="directional: project the block's output off the features' unit decoder directions (paper); "
        "feature: subtract their contributions",
    )
    g.add_argument(
        "--random-draws",
        type=int,
        default=3,
        help="random live-feature controls of the same k (2) per layer; 0 = none",
    )
    g.add_argument(
        "--n-items",
        type=int,
        default=None,
        help="qa: the first N XQuAD questions, the same in every language; "
        f"default 200, toy preset {TOY['downstream_n_items']}",
    )
    g.add_argument(
        "--shots",
        type=int,
        default=0,
        help="qa: examples from other articles in the same language (0 = the zero-shot prompt)",
    )
    g.add_argument(
        "--n-topic-items",
        type=int,
        default=None,
        help="topic: the first N SIB-200 items (test+dev minus the selection set, parallel); "
        f"-1 = all (default), toy preset {TOY['downstream_n_topic_items']}",
    )
    g.add_argument(
        "--topic-shots",
        type=int,
        default=None,
        help="topic: examples from SIB-200's train split (seeded, the same sentences in every language); "
        f"default 3, toy preset {TOY['downstream_topic_shots']}",
    )
    g.add_argument(
        "--n-per-label", type=int, default=40, help="sentiment: reviews per star rating (stratified, seeded)"
    )
    g.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=1024,
        help="prompts longer than this lose the end of their context (qa) or review, never the question",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="generation stops at a newline, EOS or this many tokens",
    )
    g.add_argument(
        "--rows-per-forward",
        type=int,
        default=64,
        help="items x conditions stacked into one forward (memory vs speed)",
    )
    g.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="skip a task in a language whose data is not cached (Amazon reviews offline) with a notice, "
        "instead of stopping",
    )
    return p.parse_args(argv)


def default_layers(cfg, mode: str) -> tuple[int, ...]:
    """The preset's downstream layer, else LAYER_RULE on the Section 5 summary."""
    if "downstream_layer" in cfg.preset.defaults:
        return (cfg.preset.defaults["downstream_layer"],)
    path = cfg.features_dir / s5lib.summary_file(mode)
    if not path.exists():
        run = features.stage_command(s5lib.SCRIPT, cfg, f"--mode {mode}")  # with --out-dir, --split...
        raise UserError(f"no Section 5 summary at {path} to choose the layer from: run `{run}`, or --layers")
    with open(path, newline="") as f:
        peaks = collections.Counter(int(r["peak_layer"]) for r in csv.DictReader(f))
    top = max(peaks.values())
    return (min(L for L, n in peaks.items() if n == top),)


def chosen_tasks(args, cfg) -> list[str]:
    """--tasks, else the preset's (the toy's run offline), else every task."""
    text = args.tasks or cfg.preset.defaults.get("downstream_tasks", ",".join(tasks.TASKS))
    return [t.strip() for t in text.split(",") if t.strip()]


def load_items(task, lang, tokenizer, args, cfg, selection):
    if task == "qa":
        return tasks.qa_items(tokenizer, lang, args.n_items, args.shots, args.max_prompt_tokens)
    if task == "sentiment":
        return tasks.sentiment_items(tokenizer, lang, args.n_per_label, cfg.seed, args.max_prompt_tokens)
    return tasks.topic_items(lang, args.topic_shots, cfg.seed, selection, args.n_topic_items)


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=200)  # generations and scores per unit, CSVs and figures
    new, prompt = args.max_new_tokens, args.max_prompt_tokens
    plan = generation_plan(cfg, STAGE_NAME, args.rows_per_forward, new, prompt)  # before any load
    for name, default in (("n_items", 200), ("n_topic_items", -1), ("topic_shots", 3)):  # toy: CPU-sized
        if getattr(args, name) is None:
            setattr(args, name, cfg.preset.defaults.get(f"downstream_{name}", default))
    task_list = chosen_tasks(args, cfg)
    bad = [t for t in task_list if t not in tasks.TASKS]
    if bad or not task_list:
        raise UserError(f"--tasks: unknown {','.join(bad) or '(none)'}; choose from {','.join(tasks.TASKS)}")
    if args.n_topic_items == 0 or args.n_topic_items < -1:
        raise UserError("--n-topic-items must be a positive number, or -1 for all")
    for flag, value, low in (
        ("--random-draws", args.random_draws, 0),
        ("--n-items", args.n_items, 1),
        ("--shots", args.shots, 0),
        ("--topic-shots", args.topic_shots, 0),
        ("--n-per-label", args.n_per_label, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--rows-per-forward", args.rows_per_forward, 1),
    ):
        if value < low:
            raise UserError(f"{flag} must be at least {low}")
    layers = cfg.layers or default_layers(cfg, args.mode)
    check_layers(layers, model_config(cfg.preset).num_hidden_layers)
    nu = features.load_nu_results(cfg, layers, len(downstream.TOP_RANKS))
    nu_cfg = nu.meta["config"]
    selection = load_texts(
        tuple(nu.languages), "selection", nu_cfg.get("n_texts_per_lang", -1), nu_cfg.get("split", "dev")
    )
    clusters = cfg.features_dir / CLUSTERS_FILE
    clusters_remake = features.stage_command(STAGE3_SCRIPT, cfg)  # if it is unreadable

    tokenizer = load_tokenizer(cfg.preset)
    items, skipped = {}, {}
    for task in task_list:
        by_lang = {}
        for lang in [lang for lang in cfg.languages if lang in tasks.available_languages(task)]:
            try:
                by_lang[lang] = load_items(task, lang, tokenizer, args, cfg, selection)
            except tasks.DatasetUnavailable as e:  # one language's copy may be cached and another's not
                if not args.skip_unavailable:
                    raise
                log.warning("skipping %s in %s: %s", task, lang, e)
                skipped.setdefault(task, {})[lang] = str(e)
        if by_lang:
            items[task] = by_lang
    print(
        f"run {cfg.run_name}: tasks {', '.join(items)} at layers {list(layers)} ({args.mode}), "
        f"{args.random_draws} random draws"
    )

    model, tokenizer = load_model(cfg.preset, cfg.device, cfg.dtype, tokenizer, **placement(cfg))
    nu_hash = nu.meta["config_hash"]
    settings = {**cfg.model_settings("model", "sae_release", "dtype"), "nu_config_hash": nu_hash}
    task_settings = {
        "prompt_version": tasks.PROMPT_VERSION,
        "n_items": args.n_items,
        "n_topic_items": args.n_topic_items,
        "shots": args.shots,
        "topic_shots": args.topic_shots,
        "n_per_label": args.n_per_label,
        "max_prompt_tokens": args.max_prompt_tokens,
        "max_new_tokens": args.max_new_tokens,
        "seed": cfg.seed,
    }
    store = units.UnitStore(cfg.features_dir / downstream.UNITS_DIR, settings)
    eng = downstream.EngineSettings(
        tokenizer.pad_token_id, args.max_new_tokens, args.rows_per_forward, cfg.device
    )
    rows, summary, figures, computed, cached, cross = [], [], [], 0, 0, {}
    for task, by_lang in items.items():
        res = downstream.TaskResults(task, list(by_lang), by_lang, {}, {})
        for lang, its in by_lang.items():
            cross[lang] = downstream.cross_language(lang, nu.languages, clusters, settings, clusters_remake)
            res.conditions[lang] = downstream.conditions_for(
                lang, nu, layers, args.random_draws, cfg.seed, cross[lang]
            )
            res.records[lang], n_new, n_old = downstream.run_units(
                model,
                tokenizer,
                task,
                lang,
                its,
                res.conditions[lang],
                nu,
                args.mode,
                store,
                task_settings,
                eng,
                cfg.force,
            )
            computed, cached = computed + n_new, cached + n_old
        r, s = downstream.results_rows(res, layers, args.mode, cfg.seed)
        rows, summary = rows + r, summary + s
        for L in layers if distributed.is_main() else ():  # under torchrun rank 0 alone draws
            stem = cfg.output_dir / downstream.figure_stem(task, L, args.mode)
            figures += plots.downstream_figure(r, task, L, stem)

    if distributed.after_share():
        return work(computed, cached, "(task, language, layer, condition)")
    fdir, mode = cfg.features_dir, args.mode
    save_csv(rows, fdir / downstream.results_file(mode), downstream.RESULTS_COLUMNS)
    save_json(
        {"rule": downstream.SUMMARY_RULE, "mode": mode, "entries": summary},
        fdir / downstream.summary_file(mode),
    )
    bootstrap = stats.bootstrap_record(
        cfg.seed,
        "items with replacement; XQuAD and SIB-200 ids jointly across languages, "
        "Amazon reviews per language; deltas paired by item",
        random_control="mean over draws; its CI resamples draws as well as items",
    )
    if cfg.layers:
        layer_rule = "--layers"
    else:
        layer_rule = "preset default" if "downstream_layer" in cfg.preset.defaults else LAYER_RULE
    prompts = {
        "qa": tasks.QA_INSTRUCTION + tasks.QA_EXAMPLE,
        "sentiment": tasks.SENTIMENT_PROMPT,
        "topic": tasks.TOPIC_INSTRUCTION + tasks.TOPIC_EXAMPLE,
    }
    write_meta(
        fdir / downstream.meta_file(mode),
        cfg,
        STAGE_NAME,
        settings,
        figures,
        memory_plan=plan.record(),
        task_settings=task_settings,
        mode=mode,
        tasks=list(items),
        skipped_tasks=skipped,
        languages={t: list(v) for t, v in items.items()},
        n_items={t: {lang: len(v) for lang, v in by.items()} for t, by in items.items()},
        layers=list(layers),
        layer_rule=layer_rule,
        random_draws=args.random_draws,
        top_ranks=list(downstream.TOP_RANKS),
        cross_rule=downstream.CROSS_RULE,
        cross_lang=cross,
        prompts=prompts,
        bootstrap=bootstrap,
        summary_rule=downstream.SUMMARY_RULE,
        data=data_record(cfg, (selection,), items),
    )
    print(downstream.format_summary(summary))
    print(f"results: {fdir / downstream.results_file(mode)}; figures: {cfg.output_dir}")
    return finished(cfg, computed, cached, "(task, language, layer, condition)")


# ----------------------------------------------------------------------------- claims and report section


def _margin(e: dict) -> float:
    """The baseline's margin over chance; NaN when its CI reaches chance (nothing to lose)."""
    chance, base = downstream.CHANCE[(e["task"], e["metric"])], ivl(e["baseline"])
    return base.value - chance if base.low > chance else math.nan


def _collapse_verdict(e: dict) -> str:
    margin, own = _margin(e), ivl(e["own_delta"])
    if not math.isfinite(margin) or e["own_minus_random"] is None:
        return INCONCLUSIVE
    beyond_random = interval_verdict(own, ivl(e["random_delta"]), -1)
    if beyond_random == NOT_SUPPORTED or own.low > -COLLAPSE_SHARE * margin:
        return NOT_SUPPORTED
    return SUPPORTED if beyond_random == SUPPORTED and own.high < -COLLAPSE_SHARE * margin else INCONCLUSIVE


def _robust_verdict(e: dict) -> str:
    margin, diff = _margin(e), ivl(e["own_minus_random"])
    if not math.isfinite(margin) or not diff.finite():
        return INCONCLUSIVE
    if diff.high < 0:
        return NOT_SUPPORTED
    return SUPPORTED if diff.low > -ROBUST_SHARE * margin else INCONCLUSIVE


def _task_label(e: dict) -> str:
    return f"{e['task']} {short(e['lang'])}"


def _task_figure(a: Artifacts, entries: list[dict], layer: int) -> str | None:
    figures = (a.figure(f"{downstream.figure_stem(e['task'], layer)}.png") for e in entries)
    return next((f for f in figures if f), None)


def collapse(a: Artifacts) -> Evidence | None:
    got = downstream.claimed_entries(a)
    if got is None:
        return None
    entries, layer = got
    where = "" if layer == 10 else f"layer 10 not run; at layer {layer}: "
    if not entries:
        return Evidence(f"{where}no QA, sentiment or topic results", "-", None, INCONCLUSIVE)
    # judged on the task-languages whose baseline clears chance, as claim 11 (at chance: nothing to lose)
    verdicts = [_collapse_verdict(e) for e in entries if math.isfinite(_margin(e))]
    at_chance = len(entries) - len(verdicts)
    own = [ivl(e["own_delta"]) for e in entries]
    drops = listing([(_task_label(e), -o.value, str(o)) for e, o in zip(entries, own)])
    numbers = f"{where}{verdicts.count(SUPPORTED)}/{len(verdicts)} task-languages above chance collapse"
    numbers += f" ({at_chance} at chance)"
    numbers += f"; own Δ: {drops}"
    beyond = sum(interval_verdict(o, ivl(e["random_delta"]), -1) == SUPPORTED for e, o in zip(entries, own))
    control = f"own drop beyond the random features' in {beyond}/{len(entries)}"
    return Evidence(numbers, control, _task_figure(a, entries, layer), combine(verdicts, "most"))


def arabic_robust(a: Artifacts) -> Evidence | None:
    got = downstream.claimed_entries(a)
    if got is None:
        return None
    entries, layer = got
    where = "" if layer == 10 else f"layer 10 not run; at layer {layer}: "
    arb = [e for e in entries if e["lang"] == "arb_Arab"]
    if not arb:
        return Evidence(f"{where}no Arabic task results", "-", None, INCONCLUSIVE)
    others = [e for e in entries if e["lang"] != "arb_Arab"]
    at_chance = ", ".join(e["task"] for e in arb if not math.isfinite(_margin(e))) or "none"
    arb_diffs = "; ".join(f"{e['task']} {ivl(e['own_minus_random'])}" for e in arb)
    numbers = f"{where}arb own − random: {arb_diffs}"
    control = f"baseline at chance: {at_chance}"
    own = sorted((ivl(e["own_delta"]).value, _task_label(e)) for e in others)
    if own:
        control += f"; others' own Δ from {own[0][0]:+.3f} ({own[0][1]}) to {own[-1][0]:+.3f} ({own[-1][1]})"
    # judged on the tasks whose baseline clears chance (one at chance has nothing to lose); none: inconclusive
    verdict = combine([_robust_verdict(e) for e in arb if math.isfinite(_margin(e))], "every")
    return Evidence(numbers, control, _task_figure(a, arb, layer), verdict)


def _margin_text(e: dict) -> str:
    return "at chance" if not math.isfinite(_margin(e)) else f"{_margin(e):.3f}"


def downstream_section(a: Artifacts) -> list[str]:
    title = "Stage 5: downstream tasks under ablation"
    d = a.json(downstream.SUMMARY_FILE)
    if d is None:
        return not_run(title, a, STAGE_NAME, f"python {STAGE.script}")
    rows = [
        (
            e["task"],
            f"{e['metric']}/{e['scoring']}",
            short(e["lang"]),
            e["layer"],
            f"{ivl(e['baseline']).value:.3f}",
            _margin_text(e),
            ivl(e["own_delta"]),
            ivl(e["random_delta"]),
            f"{ivl(e['cross_delta'])} ({short(e['cross_lang'])})",
            ivl(e["own_minus_random"]),
            {True: "yes", False: "no", None: "-"}[e["own_drop_exceeds_random"]],
        )
        for e in d["entries"]
        if (e["task"], e["metric"], e["scoring"]) in downstream.TASK_METRICS
    ]
    lines = [f"## {title}", "", f"{d['mode']} ablation; {d['rule']}", ""]
    head = [
        "task",
        "metric",
        "lang",
        "layer",
        "baseline",
        "margin over chance",
        "own Δ",
        "random Δ",
        "cross Δ (features of)",
        "own − random",
        "own drop > random",
    ]
    lines += table(head, rows)
    return lines + images(a, sorted(p.name for p in a.output_dir.glob(downstream.FIGURES_GLOB)))


CLAIMS = (
    Claim(
        10,
        "Ablating 2 features at layer 10 collapses QA (EN −41.1 F1, VI −34.8, ZH −28.9) and classification",
        "seed reproduction",
        collapse,
    ),
    Claim(11, "Arabic is robust to the ablation", "seed reproduction", arabic_robust),
)

STAGE = Stage(
    STAGE_NAME,
    "downstream_ablation.py",
    "task claims of the earlier reproduction",
    main,
    claims=CLAIMS,
    report=downstream_section,
    # offline, Amazon reviews are usually not cached: the pipeline runs the other tasks and says so
    flags=("--skip-unavailable",),
    meta=downstream.META_FILE,
    drops=("--layers",),  # ablates at its own layer (run_pipeline.py's docstring)
)
