"""Language steering (the paper's Section 6): steer source-language prompts towards a target language with
steering vectors, plain (sv) or gated by the source language's top SAE features, against three controls
(no steering, a random direction of the same norm, a gate of random live features), on adversarial
language identification and cross-lingual continuation, with the collateral ΔCE on the other languages.

Steering vectors (target's mean residual minus source's, selection texts, position 0 and padding out) are
saved per layer under sae_features/<run>/steering/. Every condition runs through the batched, KV-cached
generation engine (langsae.generate), conditions stacked along the batch. Multi-layer variants
(--n-layers 2, 3) steer layers L..L+n-1 with the gate decided once, at layer L, from the unsteered state:
the fix for a gate that, re-read at each layer, sees the state already steered below and switches itself off.
Writes:
  sae_features/<run>/steering/layer_<L>_vectors.pt          the vectors (langsae.steering.save_vectors)
  sae_features/<run>/steering/<task>/<source>/<unit>.jsonl   per-item records of each finished unit (+ .json)
  sae_features/<run>/steering_results.csv    tidy: task, source, target, layer, n_layers, method, alpha, draw,
                                             metric, value, ci_low, ci_high, n
  sae_features/<run>/steering_summary.json   the best alpha per method under --collateral-budget
  sae_features/<run>/steering_meta.json
  output/<run>/steering_<task>_success.{png,pdf}, steering_<task>_tradeoff.{png,pdf}
Finished units are skipped on a rerun (--force recomputes).
"""

from __future__ import annotations

import logging
import math

from langsae import distributed, features, plots, stats, steering
from langsae import steer_eval as se
from langsae.artifacts import config_hash, preflight, save_csv, save_json
from langsae.config import PRESETS, _comma_list, build_parser, resolve
from langsae.data import load_texts, validate_languages
from langsae.errors import SkippedTask, UserError
from langsae.memory import generation_plan
from langsae.model import check_layers, load_model, load_tokenizer, model_config, placement
from langsae.provenance import data_record
from langsae.stages import Stage, finished, work, write_meta
from langsae.stats import format_interval
from langsae.units import UnitStore
from langsae.verdicts import (
    INCONCLUSIVE,
    SUPPORTED,
    Artifacts,
    Claim,
    Evidence,
    Interval,
    combine,
    images,
    interval_verdict,
    ivl,
    listing,
    not_run,
    short,
    table,
)

log = logging.getLogger(__name__)

STAGE_NAME = "steering"
DEFAULTS = {
    "source": "all but the target",
    "target": "eng_Latn",
    "alphas": "1,2,4,8",
    "n_texts": 100,
    "random_draws": 2,
}
TOY = PRESETS["toy"].defaults


def parse_args(argv):
    toy = TOY["steer_layer"]
    layers = f"the preset's steering layer (toy {toy}), else its downstream layer (qwen3-0.6b: 10)"
    p = build_parser(__doc__, layers, ignored=("--n-texts-per-lang",))  # --n-texts sets the texts here
    g = p.add_argument_group("steering")
    g.add_argument(
        "--tasks",
        default=",".join(se.TASKS),
        help="comma-separated: lid (language identification), continuation, collateral (ΔCE on the other "
        "languages; needed for the trade-off and the summary)",
    )
    g.add_argument(
        "--source",
        help="comma-separated source languages (the prompts' language); default: every --languages but the "
        f"targets (toy preset {TOY['steer_source']})",
    )
    g.add_argument(
        "--target",
        help=f"comma-separated target languages; default {DEFAULTS['target']} "
        f"(toy preset {TOY['steer_target']})",
    )
    g.add_argument(
        "--alphas",
        help=f"comma-separated steering strengths α (multiples of the vector); default {DEFAULTS['alphas']} "
        f"(toy preset {TOY['steer_alphas']})",
    )
    g.add_argument(
        "--n-layers",
        default="1",
        help="comma-separated layer counts n: steer layers L..L+n-1 with the gate decided at L (the paper: "
        "1..3; any n that fits the model)",
    )
    g.add_argument(
        "--methods",
        default=",".join(se.METHODS),
        help=f"comma-separated, of {','.join(se.METHODS)} (no steering always runs)",
    )
    g.add_argument(
        "--gate-k",
        type=int,
        default=2,
        help="gated: a position is steered where any of the source's top-k features (by ν, at layer L) is "
        "active; random_gate draws k random live features",
    )
    g.add_argument(
        "--random-draws",
        type=int,
        help="seeded draws of the random_dir and random_gate controls (their CIs resample draws); default "
        f"{DEFAULTS['random_draws']} (toy preset {TOY['steer_random_draws']})",
    )
    g.add_argument(
        "--n-texts",
        type=int,
        help="evaluation texts per language (the first N; disjoint from the selection texts); default "
        f"{DEFAULTS['n_texts']} (toy preset {TOY['steer_n_texts']})",
    )
    g.add_argument(
        "--collateral-budget",
        type=float,
        default=0.25,
        help="the summary's budget: the largest collateral ΔCE (nats per token, mean over the other "
        "languages) an α may cost",
    )
    g.add_argument(
        "--max-new-tokens",
        type=int,
        default=48,
        help="continuation: tokens generated (stops early only at EOS)",
    )
    g.add_argument(
        "--lid-max-new-tokens",
        type=int,
        default=se.LID_MAX_NEW_TOKENS,
        help="lid: the answer's length limit (stops at a newline or EOS)",
    )
    g.add_argument(
        "--rows-per-forward",
        type=int,
        default=64,
        help="items x conditions stacked into one forward (memory vs speed)",
    )
    return p.parse_args(argv)


def _default(cfg, name, fallback):
    return cfg.preset.defaults.get(f"steer_{name}", fallback)


def _floats(text: str, flag: str) -> list[float]:
    try:
        out = [float(x) for x in _comma_list(text)]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not out:
        raise UserError(f"{flag} is empty")
    return out


def settings_from(args, cfg):
    """Validated settings of the run (one-line errors)."""

    def usable(langs):  # default languages: those of this run that the lid task can name
        return [x for x in langs if x in cfg.languages and x in se.LANGUAGE_NAMES]

    targets = validate_languages(_comma_list(args.target or _default(cfg, "target", DEFAULTS["target"])))
    targets = targets if args.target else usable(targets)
    src = args.source or _default(cfg, "source", None)
    sources = validate_languages(_comma_list(src)) if src else [x for x in cfg.languages if x not in targets]
    sources = sources if args.source else usable(sources)
    for lang in sources + targets:
        if lang not in cfg.languages:
            raise UserError(f"{lang} is not among --languages ({','.join(cfg.languages)})")
        if lang not in se.LANGUAGE_NAMES:
            raise UserError(
                f"{lang} has no language names for the lid task; add it to steer_eval.LANGUAGE_NAMES"
            )
    if not sources or not any(s != t for s in sources for t in targets):
        if args.source and args.target:
            raise UserError("--source and --target give no pair of two different languages")
        raise SkippedTask(
            "steering: the default source and target languages give no pair among --languages "
            f"({','.join(cfg.languages)}); choose them with --source and --target"
        )
    task_list = _comma_list(args.tasks)
    methods = _comma_list(args.methods)
    for flag, got, allowed in (("--tasks", task_list, se.TASKS), ("--methods", methods, se.METHODS)):
        bad = [x for x in got if x not in allowed]
        if bad or not got:
            raise UserError(f"{flag}: unknown {','.join(bad) or '(none)'}; choose from {','.join(allowed)}")
    try:
        n_layers = sorted({int(x) for x in _comma_list(args.n_layers)})
    except ValueError:
        raise UserError(f"--n-layers: expected comma-separated integers, got {args.n_layers!r}") from None
    if not n_layers or min(n_layers) < 1:
        raise UserError("--n-layers must list counts of at least 1")
    alphas = _floats(args.alphas or _default(cfg, "alphas", DEFAULTS["alphas"]), "--alphas")
    n_texts = args.n_texts if args.n_texts is not None else _default(cfg, "n_texts", DEFAULTS["n_texts"])
    draws = (
        args.random_draws
        if args.random_draws is not None
        else _default(cfg, "random_draws", DEFAULTS["random_draws"])
    )
    for flag, value, low in (
        ("--n-texts", n_texts, 2),
        ("--random-draws", draws, 1),
        ("--gate-k", args.gate_k, 1),
        ("--max-new-tokens", args.max_new_tokens, 1),
        ("--lid-max-new-tokens", args.lid_max_new_tokens, 1),
        ("--rows-per-forward", args.rows_per_forward, 1),
    ):
        if value < low:
            raise UserError(f"{flag} must be at least {low}")
    layers = cfg.layers or ((_default(cfg, "layer", None) or cfg.preset.defaults.get("downstream_layer")),)
    if layers[0] is None:
        raise UserError("this preset has no default steering layer: give --layers")
    n_model = model_config(cfg.preset).num_hidden_layers
    check_layers(layers, n_model)
    if max(layers) + max(n_layers) - 1 >= n_model:
        raise UserError(
            f"layer {max(layers)} with --n-layers {max(n_layers)} runs past the model's last layer "
            f"{n_model - 1}"
        )
    return dict(
        sources=sources,
        targets=targets,
        tasks=task_list,
        methods=methods,
        n_layers=n_layers,
        alphas=alphas,
        n_texts=n_texts,
        random_draws=draws,
        layers=list(layers),
    )


def main(argv=None):
    args = parse_args(argv)
    cfg = resolve(args)
    preflight(cfg, min_free_mb=100)  # steered generations, CSVs and figures
    new = max(args.max_new_tokens, args.lid_max_new_tokens)
    plan = generation_plan(cfg, STAGE_NAME, args.rows_per_forward, new)  # before any load (langsae.memory)
    run = settings_from(args, cfg)
    if "collateral" not in run["tasks"]:
        log.warning("without the collateral task there is no trade-off figure and no best-alpha summary")
    gated = any(m in run["methods"] for m in (se.GATED, se.RANDOM_GATE))
    nu = features.load_nu_results(cfg, run["layers"], args.gate_k if gated else 1)
    nu_cfg = nu.meta["config"]
    pair_langs = tuple(dict.fromkeys(run["sources"] + run["targets"]))
    selection = load_texts(
        pair_langs, "selection", nu_cfg.get("n_texts_per_lang", -1), nu_cfg.get("split", "dev")
    )
    evaluation = load_texts(cfg.languages, "evaluation", run["n_texts"], cfg.split)
    vec_layers = sorted({L + i for L in run["layers"] for i in range(max(run["n_layers"]))})
    print(
        f"run {cfg.run_name}: {len(run['sources'])} source(s) → {','.join(run['targets'])} "
        f"at layers {run['layers']} x {run['n_layers']}, α {run['alphas']}, "
        f"methods {','.join(run['methods'])}, {run['n_texts']} texts"
    )

    tokenizer = load_tokenizer(cfg.preset)
    model, tokenizer = load_model(cfg.preset, cfg.device, cfg.dtype, tokenizer, **placement(cfg))
    settings = cfg.model_settings("model", "sae_release", "dtype")
    vec_settings = {
        **settings,
        "languages": list(pair_langs),
        "selection": selection.source,
        "n_selection": nu_cfg.get("n_texts_per_lang", -1),
        "split": nu_cfg.get("split", "dev"),
        "rule": "mean residual (block output) over tokens, position 0 and padding out",
    }
    vec_hash = config_hash(vec_settings)
    steer_dir = cfg.features_dir / steering.STEERING_DIR
    force_vectors = cfg.force and distributed.is_main()  # the other ranks read what rank 0 made
    vectors, vec_new = distributed.main_first(  # one forward makes every layer's: rank 0 alone runs it
        lambda: steering.steering_vectors(
            model,
            tokenizer,
            selection,
            vec_layers,
            steer_dir,
            vec_hash,
            vec_settings,
            cfg.batch_size,
            force_vectors,
        )
    )

    ts = se.TaskSettings(
        tokenizer.pad_token_id, args.max_new_tokens, args.lid_max_new_tokens, args.rows_per_forward
    )
    what = {
        "prompt_version": se.PROMPT_VERSION,
        "n_texts": run["n_texts"],
        "split": cfg.split,
        "vectors": vec_hash,
        "nu_config_hash": nu.meta["config_hash"],
        "gate_k": args.gate_k,
        "seed": cfg.seed,
        "max_new_tokens": args.max_new_tokens,
        "lid_max_new_tokens": args.lid_max_new_tokens,
    }
    not_used = {
        "lid": ("max_new_tokens",),
        "continuation": ("lid_max_new_tokens",),
        "collateral": ("max_new_tokens", "lid_max_new_tokens"),
    }
    store = UnitStore(steer_dir, settings)
    records = {t: {} for t in run["tasks"]}
    conditions, computed, cached = [], len(vec_new), len(vec_layers) - len(vec_new)

    saes = {}  # a TopK SAE's layer gates through the full SAE, loaded once when first needed

    def gate_sae(L):
        return saes[L] if L in saes else saes.setdefault(L, features.encoder_sae(cfg, nu.layers[L], model))

    def edits(cs):
        return se.build_edits(cs, vectors, nu, args.gate_k, cfg.seed, cfg.device, gate_sae)

    for source in run["sources"]:
        conds = se.conditions_for(
            source,
            run["targets"],
            run["layers"],
            run["n_layers"],
            run["alphas"],
            run["methods"],
            run["random_draws"],
        )
        conditions += conds
        texts, ids = evaluation.by_language[source], evaluation.ids[source]

        compute = {
            "lid": lambda cs: se.lid_records(
                model, tokenizer, texts, ids, cs, edits(cs), ts, f"lid {source}"
            ),
            "continuation": lambda cs: se.continuation_records(
                model, tokenizer, texts, ids, cs, edits(cs), ts, f"continuation {source}"
            ),
            "collateral": lambda cs: se.collateral_records(
                model, tokenizer, evaluation, source, cs, edits(cs), ts, f"collateral {source}"
            ),
        }
        for task in run["tasks"]:
            n_items = None if task == "collateral" else len(texts)
            key = {
                k: v for k, v in what.items() if k not in not_used[task]
            }  # a task's units depend only on its own settings
            recs, n_new, n_old = se.run_units(
                task, source, conds, compute[task], store, key, n_items, cfg.force
            )
            records[task].update(recs)
            computed, cached = computed + n_new, cached + n_old

    if distributed.after_share():
        return work(computed, cached, "(task, source, condition) or a layer's steering vectors")
    ev = se.Evaluator(evaluation.ids, cfg.seed)
    rows = se.results_rows(records, conditions, ev, cfg.seed)
    summary = (
        se.best_alpha(records, conditions, evaluation.ids, args.collateral_budget, cfg.seed)
        if "collateral" in records
        else []
    )
    figures = []
    for task in se.FIGURE_TASKS:
        if task in records:
            stem = cfg.output_dir / se.SUCCESS_FIGURE.format(task=task)
            figures += plots.steering_success(rows, task, stem)
            if "collateral" in records:
                stem = cfg.output_dir / se.TRADEOFF_FIGURE.format(task=task)
                figures += plots.steering_tradeoff(rows, task, args.collateral_budget, stem)
    fdir = cfg.features_dir
    save_csv(rows, fdir / se.RESULTS_FILE, se.RESULTS_COLUMNS)
    save_json(
        {"rule": se.BEST_RULE, "budget": args.collateral_budget, "entries": summary}, fdir / se.SUMMARY_FILE
    )
    gate_at = nu.layers[run["layers"][0]].hook_in
    resampling = (
        "sentence ids with replacement, jointly across languages; random draws resampled for the controls"
    )
    write_meta(
        fdir / se.META_FILE,
        cfg,
        STAGE_NAME,
        settings,
        figures,
        memory_plan=plan.record(),
        run=run,
        task_settings=what,
        vector_settings=vec_settings,
        gate=f"any of the source's top-{args.gate_k} features (by ν) active at layer L's SAE read point "
        f"({gate_at})",
        multi_layer_gate="decided once at the first steered layer from the unsteered state, reused at the "
        "later layers",
        lid_prompt=se.LID_PROMPT,
        language_names=se.LANGUAGE_NAMES,
        language_identifier="py3langid via langsae.langid",
        degenerate_rule="empty, or one token more than half of the generated tokens",
        evaluation=evaluation.source,
        bootstrap=stats.bootstrap_record(cfg.seed, resampling),
        best_rule=se.BEST_RULE,
        data=data_record(cfg, (selection, evaluation)),
    )
    if summary:
        print(se.format_summary(summary))
    print(f"results: {fdir / se.RESULTS_FILE}; figures: {cfg.output_dir}")
    return finished(cfg, computed, cached, "(task, source, condition) or a layer's steering vectors")


# ----------------------------------------------------------------------------- claims and report section


def _rate(iv: Interval) -> str:
    return format_interval(iv.value, iv.low, iv.high, digits=2, signed=False) if iv.finite() else "n/a"


def gated_steering(a: Artifacts) -> Evidence | None:
    """Per task, pair and layer span: the gated method's success at its best α (chosen on half A under
    the collateral budget, reported on half B) above no steering and above every control's."""
    s = a.json(se.SUMMARY_FILE)
    if s is None:
        return None
    by_cell: dict[tuple, dict[str, dict]] = {}
    for e in s["entries"]:
        by_cell.setdefault((e["task"], e["source"], e["target"], e["layer"], e["n_layers"]), {})[
            e["method"]
        ] = e
    gated_items, beaten, verdicts = [], {}, []
    for (task, src, tgt, layer, n), methods in by_cell.items():
        gated = methods.get("gated")
        if gated is None:
            continue
        success = ivl(gated["success"])  # None (no α within the budget): NaN, inconclusive
        name = f"{task} {short(src)}→{short(tgt)} L{layer}x{n}"
        gated_items.append((name, success.value, _rate(success)))
        controls = {"no steering": ivl(gated["baseline_success"])}
        randoms = {k: m for k, m in methods.items() if k.startswith("random") and m["success"]}
        controls |= {k: ivl(m["success"]) for k, m in randoms.items()}
        for k, c in controls.items():
            beaten[k] = beaten.get(k, 0) + (interval_verdict(success, c) == SUPPORTED)
        strongest = max(controls.values(), key=lambda c: c.high if c.finite() else -math.inf)
        verdicts.append(interval_verdict(success, strongest))
    if not verdicts:
        return Evidence("no gated steering in this run", "-", None, INCONCLUSIVE)
    n = len(verdicts)
    numbers = f"{verdicts.count(SUPPORTED)}/{n} beyond every control; success: {listing(gated_items)}"
    control = "beyond " + ", ".join(f"{k.replace('_', ' ')} {m}/{n}" for k, m in beaten.items())
    figure = next(
        filter(None, (a.figure(f"{se.SUCCESS_FIGURE.format(task=t)}.png") for t in se.FIGURE_TASKS)), None
    )
    return Evidence(numbers, control, figure, combine(verdicts, "most"))


def steering_section(a: Artifacts) -> list[str]:
    title = "Steering (Section 6)"
    s = a.json(se.SUMMARY_FILE)
    if s is None:
        return not_run(title, a, STAGE_NAME, "python steer_language.py")
    rows = [
        (
            e["task"],
            f"{short(e['source'])}→{short(e['target'])}",
            f"{e['layer']}..{e['layer'] + e['n_layers'] - 1}",
            e["method"],
            "-" if e["best_alpha"] is None else f"{e['best_alpha']:g}",
            ivl(e["success"]),
            ivl(e["collateral_delta_ce"]),
            ivl(e["baseline_success"]),
        )
        for e in s["entries"]
    ]
    lines = [f"## {title}", "", f"{s['rule']} Collateral budget: {s['budget']} nats.", ""]
    lines += table(
        ["task", "pair", "layers", "method", "best α", "success (half B)", "collateral ΔCE", "no steering"],
        rows,
    )
    return lines + images(a, se.figure_names())


CLAIMS = (
    Claim(
        13,
        "Gated steering switches the output language (paper: 72–97% success at three layers)",
        "paper (Sec. 6)",
        gated_steering,
    ),
)

STAGE = Stage(
    STAGE_NAME,
    "steer_language.py",
    "Sec. 6",
    main,
    claims=CLAIMS,
    report=steering_section,
    meta=se.META_FILE,
    drops=("--layers",),  # steers at its own layer (run_pipeline.py's docstring)
)
