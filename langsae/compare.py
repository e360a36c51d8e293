"""Several runs side by side (model sizes, SAE families): every report claim's verdict per run, and
per language the held-out peak layer as a fraction of depth, specificity, top-1 exclusivity and
task deltas, read from each run's own artifacts (no model is loaded).

    python compare_runs.py sae_features/toy sae_features/toy_small [--out output/compare]

Writes into --out: compare_claims.csv, compare_languages.csv, compare_agreement.csv, compare.md (the
tables in Markdown), compare_peak_depth.{png,pdf}, compare_specificity.{png,pdf} and compare_meta.json.

A claim's verdict is the report's own (`report.claim_row`), judged on the run's own languages.
The per-language table holds only the languages every run measured; the others are named as left
out. Two runs of one model with different SAE releases (a transcoder and a residual SAE) get their
SAE families' agreement per language: the cosine of their top features' decoder directions
(AGREEMENT_RULE). Not built: the overlap of both SAEs' activations on the same tokens, which needs
both SAEs in one forward pass (see docs/stages.md#comparing-runs).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from langsae import config, downstream, nu, plots, section5
from langsae.artifacts import package_versions, read_torch, save_csv, save_json, save_text
from langsae.errors import UserError
from langsae.report import claim_row, claims, model_identity_of, stage_metas
from langsae.stages import registry
from langsae.verdicts import Artifacts, Interval, cell, interval_of, ivl, short

CLAIMS_FILE, LANGUAGES_FILE, AGREEMENT_FILE, META_FILE, TABLE_FILE = (
    "compare_claims.csv",
    "compare_languages.csv",
    "compare_agreement.csv",
    "compare_meta.json",
    "compare.md",
)
PEAK_FIGURE, SPECIFICITY_FIGURE = "compare_peak_depth", "compare_specificity"
DEPTH_KEY = "num_hidden_layers"  # the layer count the nu stage's meta records
PEAK_FRACTION_RULE = (
    "held-out peak layer / the model's number of layers (layer L of N is L/N, the rule by which "
    "presets.relative_layer places a layer at the same relative depth)"
)
TASK_COLUMNS = tuple(f"{task}_{metric}" for task, metric, _ in downstream.TASK_METRICS)
LANGUAGE_COLUMNS = (
    "run",
    "language",
    "peak_layer",
    "n_layers",
    "peak_fraction",
    "specificity_diff",
    "specificity_diff_ci_low",
    "specificity_diff_ci_high",
    "exclusive_top1",
    "task_layer",
    *(f"{t}_{c}" for t in TASK_COLUMNS for c in ("own_delta", "ci_low", "ci_high")),
)


@dataclass(frozen=True)
class Run:
    """One run folder and what the comparison needs to know about it."""

    label: str
    artifacts: Artifacts
    languages: tuple[str, ...]  # Section 5's, else the nu stage's
    identity: dict  # model and SAE, as its stages' metas record them
    depth: int | None
    depth_source: str


def model_depth(metas: list[dict], model_id: str | None) -> tuple[int | None, str]:
    """The model's number of layers, and where it came from: a run's meta if one records it, else
    the model's config when it is on this machine (a local folder or the Hugging Face cache; no
    weights are read). None with the reason when neither has it."""
    for meta in metas:
        if isinstance(meta.get(DEPTH_KEY), int):
            return meta[DEPTH_KEY], f"{meta.get('stage', 'a stage')} meta ({DEPTH_KEY})"
    if not model_id:
        return None, "unknown: no model in the run's metas"
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_id, local_files_only=True)
    except (OSError, ValueError):
        return (
            None,
            f"unknown: no layer count in the run's metas, and no config of {model_id} on this machine",
        )
    return cfg.get_text_config().num_hidden_layers, f"config of {model_id}"


def open_run(features_dir: Path, figures_dir: Path, label: str) -> Run:
    """A run folder's artifacts; one line when the folder is missing or holds no stage's results."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise UserError(f"run folder {features_dir} does not exist; pass sae_features/<run> folders")
    a = Artifacts(features_dir, figures_dir)
    nu_meta, s5 = a.json(nu.META_FILE), section5.summary(a)
    if nu_meta is None and s5 is None:
        why = a.damaged() or f"neither {nu.META_FILE} nor {section5.SUMMARY_FILE}"
        raise UserError(
            f"{features_dir} holds no run's results ({why}); run compute_nu_scores.py and "
            f"reproduce_figures_section5.py with --out-dir {features_dir} first"
        )
    languages = [r["language"] for r in s5[0]] if s5 else nu_meta.get("languages", [])
    metas = stage_metas(a, registry())
    identity = next((m for m in map(model_identity_of, metas) if m.get("model_id")), {})
    depth, source = model_depth(metas, identity.get("model_id"))
    return Run(label, a, tuple(languages), identity, depth, source)


def labels(folders: list[Path]) -> list[str]:
    """Each run's name: its folder's name, or parent/name where two runs share a name."""
    names = [Path(f).resolve().name for f in folders]
    return [
        n if names.count(n) == 1 else f"{Path(f).resolve().parent.name}/{n}" for n, f in zip(names, folders)
    ]


def shared_languages(runs: list[Run]) -> tuple[list[str], dict[str, list[str]]]:
    """The languages every run measured (in the first run's order), and per run those left out."""
    shared = [lang for lang in runs[0].languages if all(lang in r.languages for r in runs)]
    if not shared:
        raise UserError("the runs share no language; compare runs measured on at least one common language")
    left = {r.label: [lang for lang in r.languages if lang not in shared] for r in runs}
    return shared, {k: v for k, v in left.items() if v}


def claim_rows(runs: list[Run]) -> list[dict]:
    """Every report claim's verdict and evidence per run, as the run's REPORT.md states them."""
    rows = []
    for stage, claim in claims(registry()):
        for r in runs:
            ev, verdict = claim_row(claim, stage, r.artifacts)
            rows.append(
                {
                    "number": claim.number,
                    "claim": claim.text,
                    "run": r.label,
                    "verdict": verdict,
                    "evidence": ev.numbers,
                }
            )
    return rows


def _blank_if_nan(x: float) -> float | str:
    return x if math.isfinite(x) else ""


def language_rows(run: Run, languages: list[str]) -> list[dict]:
    """Per shared language: the held-out peak (and its fraction of depth), specificity with its CI,
    top-1 exclusivity at the peak layer, and each task's own-feature delta (the report's entries)."""
    a = run.artifacts
    s5 = section5.summary(a)
    by_lang = {r["language"]: r for r in s5[0]} if s5 else {}
    exclusive = (a.json(nu.META_FILE) or {}).get("exclusive_top1", {})
    got = downstream.claimed_entries(a)  # the entries its claims judge
    entries, task_layer = got if got else ([], "")
    rows = []
    for lang in languages:
        r = by_lang.get(lang)
        peak = int(r["peak_layer"]) if r else None
        spec = interval_of(r, "specificity_diff") if r else Interval(math.nan, math.nan, math.nan)
        row = {
            "run": run.label,
            "language": lang,
            "peak_layer": "" if peak is None else peak,
            "n_layers": run.depth or "",
            "peak_fraction": peak / run.depth if peak is not None and run.depth else "",
            "specificity_diff": _blank_if_nan(spec.value),
            "specificity_diff_ci_low": _blank_if_nan(spec.low),
            "specificity_diff_ci_high": _blank_if_nan(spec.high),
            "exclusive_top1": exclusive.get(str(peak), {}).get(lang, ""),
            "task_layer": task_layer if entries else "",
        }
        for e in entries:
            if e["lang"] == lang:
                d, key = ivl(e["own_delta"]), f"{e['task']}_{e['metric']}"
                row |= {f"{key}_own_delta": d.value, f"{key}_ci_low": d.low, f"{key}_ci_high": d.high}
        rows.append({c: row.get(c, "") for c in LANGUAGE_COLUMNS})
    return rows


# ----------------------------------------------------------------------------- SAE-family agreement


AGREEMENT_COLUMNS = (
    "run_a",
    "run_b",
    "language",
    "layer",
    "hook_a",
    "hook_b",
    "top1_a",
    "top1_b",
    "decoder_cosine",
    "k_b",
    "best_abs_cosine_topk",
    "best_feature_b",
)
AGREEMENT_RULE = (
    "For two runs of one model (equal content identity) with different SAE releases, per shared language "
    "and layer: decoder_cosine = cos(W_dec[top-1 of A], W_dec[top-1 of B]), and best_abs_cosine_topk = "
    "max over B's saved top-k of |cos(W_dec[top-1 of A], W_dec[f])|, read from each run's "
    "layer_<L>_directions.pt (no forward pass): both decoders write into the same d_model residual space "
    "(a transcoder into the MLP output, a residual SAE into the block output). The overlap of both SAEs' "
    "activations on the same tokens is not built"
)


def same_model_pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one model (equal content identity, not a folder that was absent) whose SAE
    releases differ: the pairs whose SAE families can be compared feature by feature."""
    known = [
        r for r in runs if r.identity.get("model") and not str(r.identity["model"]).startswith("absent:")
    ]
    return [
        (a, b)
        for i, a in enumerate(known)
        for b in known[i + 1 :]
        if a.identity["model"] == b.identity["model"]
        and a.identity.get("sae_release") != b.identity.get("sae_release")
    ]


def _directions(run: Run, layer: int) -> dict:
    """A layer's saved decoder rows of the run's top features (the nu stage's layer_<L>_directions.pt)."""
    fdir = run.artifacts.features_dir
    return read_torch(
        nu.layer_files(fdir, layer)["directions"], f"python compute_nu_scores.py --out-dir {fdir}"
    )


def _decoder_rows(d: dict, features: torch.Tensor) -> torch.Tensor:
    """W_dec rows [n, d_model] of `features` (saved top features: feature_indices is sorted)."""
    return d["W_dec"].float()[torch.searchsorted(d["feature_indices"].long(), features.long())]


def agreement_rows(a: Run, b: Run, languages: list[str]) -> list[dict]:
    """Per shared language and layer both nu stages computed: how close run A's top-1 feature's decoder
    direction is to run B's top-1 (signed cosine) and to the nearest of B's saved top-k (|cosine|)."""
    layers = [L for L in (a.artifacts.json(nu.META_FILE) or {}).get("layers", [])]
    layers = [L for L in layers if L in (b.artifacts.json(nu.META_FILE) or {}).get("layers", [])]
    rows = []
    for L in layers:
        da, db = _directions(a, L), _directions(b, L)
        if da["W_dec"].shape[1] != db["W_dec"].shape[1]:
            raise UserError(
                f"{a.label} and {b.label} name one model but their layer {L} decoders write "
                f"{da['W_dec'].shape[1]} and {db['W_dec'].shape[1]} dimensions; check both runs' meta.json"
            )
        for lang in (g for g in languages if g in da["languages"] and g in db["languages"]):
            top_a = da["top_indices"][da["languages"].index(lang)]
            top_b = db["top_indices"][db["languages"].index(lang)]
            u = _decoder_rows(da, top_a[:1])
            cos = torch.nn.functional.cosine_similarity(u, _decoder_rows(db, top_b), dim=-1)
            best = int(cos.abs().argmax())
            rows.append(
                {
                    "run_a": a.label,
                    "run_b": b.label,
                    "language": lang,
                    "layer": L,
                    "hook_a": da.get("hook_name_out") or da["hook_name"],
                    "hook_b": db.get("hook_name_out") or db["hook_name"],
                    "top1_a": int(top_a[0]),
                    "top1_b": int(top_b[0]),
                    "decoder_cosine": float(cos[0]),
                    "k_b": len(top_b),
                    "best_abs_cosine_topk": float(cos[best].abs()),
                    "best_feature_b": int(top_b[best]),
                }
            )
    return rows


# ----------------------------------------------------------------------------- figures


def _per_language(rows: list[dict], runs: list[Run], languages: list[str], key: str, stem: Path, ylabel: str):
    """One point per language and run, side by side, with CI whiskers where the rows have them. Points,
    not bars: a peak at layer 0 (fraction 0) stays visible, and a value a run lacks is no mark at all."""
    fig, ax = plots.plt.subplots(figsize=(max(4.0, 0.7 * len(languages)), 3.2), layout="constrained")
    x, step = np.arange(len(languages)), 0.6 / len(runs)
    for i, run in enumerate(runs):
        mine = {r["language"]: r for r in rows if r["run"] == run.label}
        y = np.array([float(mine[g][key] or "nan") for g in languages])
        err = None
        if f"{key}_ci_low" in LANGUAGE_COLUMNS:
            lo, hi = (
                np.array([float(mine[g][f"{key}_ci_{e}"] or "nan") for g in languages])
                for e in ("low", "high")
            )
            err = np.vstack([y - lo, hi - y])
        label = run.label if np.isfinite(y).any() else f"{run.label} (not measured)"
        ax.errorbar(x + (i - (len(runs) - 1) / 2) * step, y, yerr=err, fmt="o", ms=4, capsize=2, label=label)
    ax.set_xticks(x, [short(g) for g in languages], fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel(ylabel, fontsize=8)
    fig.legend(loc="outside lower center", ncol=min(4, len(runs)), fontsize=7, frameon=False)
    return plots.save_figure(fig, stem)


def figures(rows: list[dict], runs: list[Run], languages: list[str], out: Path) -> list[Path]:
    """The peak layer as a fraction of depth, and specificity at the peak, per language and run."""
    peak = _per_language(
        rows, runs, languages, "peak_fraction", out / PEAK_FIGURE, "held-out peak layer / depth"
    )
    spec = _per_language(
        rows,
        runs,
        languages,
        "specificity_diff",
        out / SPECIFICITY_FIGURE,
        "self − others ΔCE at the peak (nats)",
    )
    return [*peak, *spec]


# ----------------------------------------------------------------------------- Markdown


def _fmt(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x) if x != "" else "-"


def markdown(runs: list[Run], claim_table: list[dict], rows: list[dict], shared, left_out, agree) -> str:
    """compare.md: the runs, the claims' verdicts per run, the per-language table and, for runs of
    one model with different SAEs, their agreement."""
    lines = ["# Comparing runs", "", "| run | model | SAE release | layers (from) |", "|---|---|---|---|"]
    for r in runs:
        depth = f"{r.depth} ({r.depth_source})" if r.depth else r.depth_source
        lines.append(
            f"| {r.label} | {r.identity.get('model_id', '-')} | {r.identity.get('sae_release', '-')} "
            f"| {cell(depth)} |"
        )
    lines += [
        "",
        "## Claims",
        "",
        "Each run's verdict, as its REPORT.md states it (on its own languages).",
        "",
    ]
    lines += ["| # | claim | " + " | ".join(r.label for r in runs) + " |", "|---|---|" + "---|" * len(runs)]
    for i in range(0, len(claim_table), len(runs)):
        group = claim_table[i : i + len(runs)]
        verdicts = " | ".join(f"**{g['verdict']}**" for g in group)
        lines.append(f"| {group[0]['number']} | {cell(group[0]['claim'])} | {verdicts} |")
    lines += ["", "## Languages", ""]
    if left_out:
        gone = "; ".join(f"{run}: {', '.join(langs)}" for run, langs in left_out.items())
        lines += [f"Only the {len(shared)} languages every run measured are compared (left out: {gone}).", ""]
    lines += [
        f"Peak fraction: {PEAK_FRACTION_RULE}. Specificity: self − others ΔCE at the peak [95% CI]. "
        "Exclusive: the top-1 feature at the peak layer is in no other language's top-5. Task Δ: "
        "own-feature delta of the primary metric [95% CI] at the layer the report judges (L).",
        "",
        "| language | run | peak layer | fraction of depth | self − others [95% CI] | exclusive | task Δ |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: shared.index(r["language"])):
        spec = Interval(*(float(r[f"specificity_diff{c}"] or "nan") for c in ("", "_ci_low", "_ci_high")))
        tasks = "; ".join(
            f"{t} {Interval(*(float(r[f'{t}_{c}']) for c in ('own_delta', 'ci_low', 'ci_high')))}"
            for t in TASK_COLUMNS
            if r[f"{t}_own_delta"] != ""
        )
        tasks = f"L{r['task_layer']}: {tasks}" if tasks else tasks
        lines.append(
            f"| {r['language']} | {r['run']} | {_fmt(r['peak_layer'])} | {_fmt(r['peak_fraction'], 2)} "
            f"| {spec} | {_fmt(r['exclusive_top1'])} | {tasks or '-'} |"
        )
    lines += agreement_markdown(runs, agree)
    lines += [
        "",
        "Figures: " + ", ".join(f"[{s}.png]({s}.png)" for s in (PEAK_FIGURE, SPECIFICITY_FIGURE)),
    ]
    return "\n".join(lines) + "\n"


def agreement_markdown(runs: list[Run], agree: list[dict]) -> list[str]:
    """The SAE-family agreement section: its rule and rows, or why there are none."""
    lines = ["", "## SAE-family agreement", ""]
    if not same_model_pairs(runs):
        return lines + ["No two runs share a model with different SAE releases: no agreement to compare."]
    lines += [
        f"{AGREEMENT_RULE}.",
        "",
        "| language | layer | runs (A vs B) | top-1 A, B | cos(top-1 A, top-1 B) "
        "| best \\|cos\\| in B's top-k (feature) |",
        "|---|---|---|---|---|---|",
    ]
    for r in agree:
        lines.append(
            f"| {r['language']} | {r['layer']} | {r['run_a']} vs {r['run_b']} | {r['top1_a']}, {r['top1_b']} "
            f"| {r['decoder_cosine']:+.3f} | {r['best_abs_cosine_topk']:.3f} "
            f"({r['best_feature_b']}, k={r['k_b']}) |"
        )
    return lines


# ----------------------------------------------------------------------------- the script


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("runs", nargs="+", type=Path, help="run folders (sae_features/<run>), two or more")
    p.add_argument(
        "--out", type=Path, default=None, help="where the tables and figures go (default output/compare)"
    )
    p.add_argument(
        "--figures-dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        default=None,
        help="each run's figures folder, in the order of the runs (default: where its stages put them)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.runs) < 2:
        raise UserError("compare_runs.py needs two or more run folders")
    if args.figures_dirs is not None and len(args.figures_dirs) != len(args.runs):
        raise UserError(
            f"--figures-dirs: give one folder per run ({len(args.runs)}), got {len(args.figures_dirs)}"
        )
    fig_dirs = args.figures_dirs or [config.figures_dir_for(f) for f in args.runs]
    runs = [open_run(f, d, name) for f, d, name in zip(args.runs, fig_dirs, labels(args.runs))]
    shared, left_out = shared_languages(runs)
    if left_out:
        gone = "; ".join(f"{run}: {', '.join(langs)}" for run, langs in left_out.items())
        print(f"the runs differ in languages: comparing only the {len(shared)} shared ({gone} left out)")
    out = args.out or config.OUTPUT_ROOT / "compare"
    claim_table = claim_rows(runs)
    rows = [row for r in runs for row in language_rows(r, shared)]
    save_csv(claim_table, out / CLAIMS_FILE, ["number", "claim", "run", "verdict", "evidence"])
    save_csv(rows, out / LANGUAGES_FILE, LANGUAGE_COLUMNS)
    figs = figures(rows, runs, shared, out)
    agree = [row for a, b in same_model_pairs(runs) for row in agreement_rows(a, b, shared)]
    save_csv(agree, out / AGREEMENT_FILE, AGREEMENT_COLUMNS)
    save_text(markdown(runs, claim_table, rows, shared, left_out, agree), out / TABLE_FILE)
    meta = {
        "stage": "compare_runs",
        "runs": [
            {
                "label": r.label,
                "features_dir": str(r.artifacts.features_dir),
                "figures_dir": str(r.artifacts.output_dir),
                **{
                    k: r.identity.get(k)
                    for k in ("preset", "model_id", "model", "sae_release", "sae_id_template")
                },
                "languages": list(r.languages),
                "n_layers": r.depth,
                "n_layers_from": r.depth_source,
            }
            for r in runs
        ],
        "shared_languages": shared,
        "left_out": left_out,
        "peak_fraction_rule": PEAK_FRACTION_RULE,
        "agreement_pairs": [[a.label, b.label] for a, b in same_model_pairs(runs)],
        "agreement_rule": AGREEMENT_RULE,
        "figures": [str(f) for f in figs],
        "versions": package_versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_json(meta, out / META_FILE)
    print(f"compared {len(runs)} runs on {len(shared)} languages: {out / TABLE_FILE}")
    return meta
