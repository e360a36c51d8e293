"""Dress rehearsal: every pipeline stage on random weights of the exact Qwen3-0.6B shape.

Builds, in a temporary Hugging Face cache (offline), a random-weight model of the Qwen3-0.6B
shape (28 layers, hidden 1024, vocab 151,936, Qwen3's real tokenizer) and random transcoders of
the real width (163,840, fp32 as on the hub) in the mwhanna layout (bench_nu.build_fixtures), in
which each language's top feature is planted so that ablating it matters (real_shape: its own
ΔCE is positive, so stages 3 and 4 run), then runs each stage of run_pipeline.STAGES in order
through its own `main`, timing it.

  CPU, reduced (default): Section 5 with --top-k 1 and one random draw; the stages run twice, at the
  first layer with half the texts and at every --layers with all of them; per stage, wall = fixed +
  per_unit x units (SCALING) through the two points separates fixed costs (imports, model load) from
  per-unit costs, and the estimate is that line at the paper's units. An estimate, not a measurement.

      python benchmarks/dress_rehearsal.py                                  # layers 0,1; 4 + 4 texts/language
      python benchmarks/dress_rehearsal.py --layers 0-3 --n-sel 20 --n-eval 40
      python benchmarks/dress_rehearsal.py --layers 0 --n-sel 2 --n-eval 2 --languages eng_Latn,fra_Latn
                                                                            # smallest

  GPU, paper size (--full): 28 layers, 100 selection and 500 evaluation texts per language, each
  stage's defaults otherwise (downstream at layer 10), bf16; records each stage's wall time and
  peak GPU memory (torch.cuda.max_memory_allocated, reset before each stage). Target: 30 minutes
  on one H100/H200. Needs about 40 GB of disk for the 28 transcoders.

      python benchmarks/dress_rehearsal.py --full

Writes bench_results/dress_rehearsal_<cpu|full>.json (per stage: wall_s, work, units,
paper_units, estimate_s, peak_gpu_gib; the command; the machine and its load average).
"""

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_nu  # noqa: E402  (sets HF_HOME to its temporary cache before any Hugging Face import)
import torch  # noqa: E402

import run_pipeline  # noqa: E402
from langsae import config, report  # noqa: E402
from langsae.config import parse_layers  # noqa: E402
from langsae.data import PAPER_LANGUAGES, load_texts  # noqa: E402
from langsae.errors import SkippedTask, UserError  # noqa: E402

ROOT = bench_nu.ROOT
# Paper size: the later stages' own defaults (downstream at layer 10 with 200 XQuAD questions in
# its 6 languages, ~300 SIB-200 topic items in all 10, 3 random draws; steering every other language
# to English at layer 10 on 100 texts, 4 alphas, 2 draws of each control).
PAPER = {
    "layers": 28,
    "n_sel": 100,
    "n_eval": 500,
    "langs": 10,
    "top_k": 2,
    "draws": 5,
    "ds_layers": 1,
    "qa_items": 200,
    "qa_langs": 6,
    "topic_items": 300,
    "ds_draws": 3,
    "st_sources": 9,
    "st_texts": 100,
    "st_alphas": 4,
    "st_draws": 2,
    "st_layers": 1,
}
REDUCED = {"top_k": 1, "draws": 1}  # Section 5's conditions in the reduced run (its defaults are the paper's)


def reduced_sizes(layers: int, n_sel: int, n_eval: int, langs: int) -> dict:
    """A reduced run's sizes, in PAPER's keys: the later stages run on as many items as evaluation
    texts (steering on 2 at least, its minimum), at every run layer, one random draw, steering one
    pair at one alpha."""
    return {
        "layers": layers,
        "n_sel": n_sel,
        "n_eval": n_eval,
        "langs": langs,
        **REDUCED,
        "ds_layers": layers,
        "qa_items": n_eval,
        "qa_langs": min(PAPER["qa_langs"], langs),
        "topic_items": n_eval,
        "ds_draws": 1,
        "st_sources": 1,
        "st_texts": max(n_eval, 2),
        "st_alphas": 1,
        "st_draws": 1,
        "st_layers": layers,
    }


def conditions(s: dict) -> int:
    """Section 5 conditions per layer: each language's top-1..k singly and together, and the random
    draws at k = 1 and k = top_k (langsae.sweep.sweep_conditions)."""
    sets = 1 if s["top_k"] == 1 else s["top_k"] + 1
    return s["langs"] * sets + s["draws"] * len({1, s["top_k"]})


def downstream_units(s: dict) -> int:
    """(item, condition) pairs: the baseline once per item, own + random draws + cross per layer."""
    return (s["qa_items"] * s["qa_langs"] + s["topic_items"] * s["langs"]) * (
        1 + s["ds_layers"] * (2 + s["ds_draws"])
    )


def steering_units(s: dict) -> int:
    """Steered (text, condition) pairs: no steering once, sv + gated + draws of both controls per alpha
    and layer."""
    return s["st_sources"] * s["st_texts"] * (1 + s["st_layers"] * s["st_alphas"] * (2 + 2 * s["st_draws"]))


# Work units of each stage, from the run's sizes: the estimate fits time = fixed + per_unit x units.
# A stage not listed is taken as a fixed cost (interactions reads Section 5's conditions).
SCALING = {
    "check-data": lambda s: 1,  # the same full data sets at any size
    "nu": lambda s: (
        s["layers"] * s["n_sel"] * s["langs"]
    ),  # encode work; the forward is a small share at the real width
    "section5": lambda s: (
        s["layers"] * s["n_eval"] * s["langs"] * conditions(s)
    ),  # texts x conditions, per layer
    "cluster-synergy": lambda s: (
        s["layers"] * s["n_eval"] * s["langs"] * s["langs"] * (s["langs"] - 1) // 2
    ),  # texts x pairs
    "downstream": downstream_units,
    "code-switching": lambda s: s["layers"],  # one forward over the 880 probe texts up to the deepest layer
    "steering": steering_units,
    "plots": lambda s: s["layers"],
}
# Stage-specific flags for the reduced run (the pipeline passes only the common flags): Section 5's
# reduced conditions, the later stages on the same evaluation texts (stage 3 then reads Section 5's
# top-1 conditions), downstream on as many items as evaluation texts, steering one pair at one alpha.
REDUCED_FLAGS = {
    "section5": lambda s: [
        "--n-texts",
        str(s["n_eval"]),
        "--top-k",
        str(s["top_k"]),
        "--random-draws",
        str(s["draws"]),
    ],
    "interactions": lambda s: [
        "--n-texts",
        str(s["n_eval"]),
        "--random-draws",
        str(s["draws"]),
        "--features",
        "top1",
    ],
    "cluster-synergy": lambda s: ["--n-texts", str(s["n_eval"])],
    "downstream": lambda s: [
        "--n-items",
        str(s["qa_items"]),
        "--n-topic-items",
        str(s["topic_items"]),
        "--random-draws",
        str(s["ds_draws"]),
    ],
    "steering": lambda s: [
        "--source",
        s["source"],
        "--n-texts",
        str(s["st_texts"]),
        "--alphas",
        "8",
        "--random-draws",
        str(s["st_draws"]),
    ],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="paper size on the GPU: 28 layers, 100 + 500 texts per language, bf16",
    )
    p.add_argument("--layers", default="0,1", help="layers of the reduced run (ignored with --full)")
    p.add_argument("--n-sel", type=int, default=4, help="selection texts per language of the reduced run")
    p.add_argument("--n-eval", type=int, default=4, help="evaluation texts per language of the reduced run")
    p.add_argument(
        "--languages",
        default=",".join(PAPER_LANGUAGES),
        help="languages of the reduced run (fewer: fewer texts and conditions)",
    )
    p.add_argument("--device", default=None, help="default: cuda with --full, else cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="default: bfloat16 with --full, else float32",
    )
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward; default: the stages' own")
    return p.parse_args(argv)


def main(argv=None):
    try:
        rehearse(parse_args(argv), sys.argv[1:] if argv is None else argv)
    finally:
        shutil.rmtree(bench_nu.TMP, ignore_errors=True)  # gigabytes of random weights


def run_stages(common: list[str], sizes: dict, full: bool, device: str) -> list[dict]:
    """Every pipeline stage once, in order: wall time, work record, units, peak GPU memory."""
    rows = []
    for stage in run_pipeline.STAGES:
        extra = [] if full else REDUCED_FLAGS.get(stage.name, lambda s: [])(sizes)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            done, status = stage.main([*common, *stage.flags, *extra]), "done"
        except SkippedTask as e:
            done, status = None, f"skipped: {e}"
        except (
            UserError
        ) as e:  # e.g. stage 3's distance on random weights, where a language's own ΔCE can be <= 0
            done, status = None, f"failed: {e}"
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        row = {
            "stage": stage.name,
            "status": status,
            "wall_s": round(time.perf_counter() - t, 2),
            "work": done,
            "units": SCALING.get(stage.name, lambda s: 1)(sizes),
        }
        if device.startswith("cuda"):
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        rows.append(row)
        print(
            f"== {stage.name} at {sizes['layers']} layers, {sizes['n_sel']} + {sizes['n_eval']} texts per "
            f"language: {row['wall_s']:.1f} s ({status})",
            flush=True,
        )
    return rows


def fit(small: dict, large: dict, paper_units: int) -> dict:
    """wall = fixed + per_unit x units through the two measured points, evaluated at paper size.
    A negative slope (noise on a busy machine) falls back to the large run's wall / units."""
    du = large["units"] - small["units"]
    per_unit = (large["wall_s"] - small["wall_s"]) / du if du > 0 else math.nan
    if not per_unit >= 0:
        per_unit, fixed = large["wall_s"] / large["units"], 0.0
    else:
        fixed = max(large["wall_s"] - per_unit * large["units"], 0.0)
    return {
        "fixed_s": round(fixed, 2),
        "per_unit_s": round(per_unit, 4),
        "paper_units": paper_units,
        "estimate_s": round(fixed + per_unit * paper_units, 1),
    }


def rehearse(args, argv):
    layers = list(range(PAPER["layers"])) if args.full else list(parse_layers(args.layers))
    device = args.device or ("cuda" if args.full else "cpu")
    dtype = args.dtype or ("bfloat16" if args.full else "float32")
    config.OUTPUT_ROOT = bench_nu.TMP / "output"  # figures and the report stay out of the project
    languages = PAPER_LANGUAGES if args.full else tuple(args.languages.split(","))
    if args.full:
        points = [(layers, PAPER["n_sel"], PAPER["n_eval"])]
    else:  # two sizes, to separate fixed costs (imports, model load) from per-unit costs
        points = [
            (layers[:1], max(args.n_sel // 2, 1), max(args.n_eval // 2, 1)),
            (layers, args.n_sel, args.n_eval),
        ]

    t0 = time.perf_counter()
    plant = load_texts(languages, "selection", -1).by_language  # every selection text: tokenised only
    model_dir, _, planted = bench_nu.build_fixtures(layers, getattr(torch, dtype), plant, device)
    build_s = time.perf_counter() - t0
    passes = []
    for i, (ls, n_sel, n_eval) in enumerate(points):
        sizes = (
            PAPER
            if args.full
            else {
                **reduced_sizes(len(ls), n_sel, n_eval, len(languages)),
                "source": next(x for x in languages if x != "eng_Latn"),
            }
        )
        run_dir = bench_nu.TMP / f"run{i}"
        common = [
            "--model",
            "qwen3-0.6b",
            "--model-id",
            str(model_dir),
            "--device",
            device,
            "--dtype",
            dtype,
            "--layers",
            ",".join(map(str, ls)),
            "--n-texts-per-lang",
            str(n_sel),
            "--out-dir",
            str(run_dir),
            "--languages",
            ",".join(languages),
        ]
        if args.batch_size:
            common += ["--batch-size", str(args.batch_size)]
        passes.append(
            {"sizes": sizes, "stages": run_stages(common, sizes, args.full, device), "dir": run_dir}
        )

    last = passes[-1]
    rows = []
    for j, row in enumerate(last["stages"]):
        paper_units = SCALING.get(row["stage"], lambda s: 1)(PAPER)
        if row["status"] != "done" or passes[0]["stages"][j]["status"] != "done":
            est = {"estimate_s": None}  # a stage that failed or was skipped was not timed
        else:
            est = (
                {"estimate_s": row["wall_s"]} if args.full else fit(passes[0]["stages"][j], row, paper_units)
            )
        rows.append({**row, **est})
    results = ROOT / "bench_results"
    results.mkdir(exist_ok=True)
    mode = "full" if args.full else "cpu"
    shutil.copyfile(
        report.write_report(last["dir"], config.OUTPUT_ROOT / last["dir"].name),
        results / f"dress_rehearsal_{mode}_REPORT.md",
    )

    result = {
        "mode": "full" if args.full else "reduced",
        "passes": [{"sizes": p["sizes"], "stages": p["stages"]} for p in passes],
        "paper": PAPER,
        "device": device,
        "dtype": dtype,
        "stages": rows,
        "total_s": round(sum(r["wall_s"] for r in rows), 1),
        "estimate_paper_s": round(sum(r["estimate_s"] for r in rows if r["estimate_s"] is not None), 1),
        "fixture_build_s": round(build_s, 1),
        "planted_features": planted,
        "not_timed": [r["stage"] for r in rows if r["estimate_s"] is None],
        "command": shlex.join(["python", "benchmarks/dress_rehearsal.py", *argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "scaling": "reduced: wall = fixed + per_unit x units through the two passes, evaluated at paper "
        "units; units: check-data 1, nu layers x selection texts x languages, section5 layers x "
        "evaluation texts x languages x conditions per layer (reduced: top-k 1, 1 random draw; "
        "paper: top-k 2, 5 draws), interactions 1 (reads section5's conditions), "
        "cluster-synergy layers x evaluation texts x languages x pairs, downstream (item, condition) pairs, "
        "code-switching layers, steering (text, condition) pairs (paper sizes in 'paper'), plots layers",
    }
    out = results / f"dress_rehearsal_{mode}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(run_pipeline.format_table([{**r, **(r["work"] or {}), "status": r["status"][:9]} for r in rows]))
    untimed = f" (not timed: {', '.join(result['not_timed'])})" if result["not_timed"] else ""
    print(
        f"total {result['total_s']} s (largest pass); "
        f"paper-size estimate {result['estimate_paper_s']} s{untimed} -> {out}"
    )


if __name__ == "__main__":
    from langsae.cli import run_main

    sys.exit(run_main(main))
