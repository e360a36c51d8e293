r"""Benchmark: stages 3 and 4 (interactions, cluster synergy): wall time and conditions computed.

toy (default): on the toy model (`--model toy`; LANGSAE_TOY_DIR picks the build), in a fresh folder:
  1. the nu stage and Section 5 (timed, for reference), then stage 3 and stage 4: stage 3 must
     compute 0 conditions (they are Section 5's), stage 4 only its pair conditions;
  2. from scratch: a second folder holding only the nu stage's files, stage 3 then stage 4.
qwen-shape (--qwen-shape): stage 4's sweep alone at Qwen3-0.6B shape with random weights
  (benchmarks/bench_ablation.py's model and fake features): all pairs of --languages languages
  at --layers, --texts-per-lang random texts per language, in --dtype on --device. The issue's
  size is 28 layers x 45 pairs x 500 texts in bf16 on a GPU (the defaults).

    python benchmarks/bench_interactions.py                      # toy, the stages' defaults
    python benchmarks/bench_interactions.py --qwen-shape --device cuda
    python benchmarks/bench_interactions.py --qwen-shape --device cpu --dtype float32 --layers 27 \
        --languages 3 --texts-per-lang 2                         # a check that it runs

Writes bench_results/bench_interactions[_qwen].json (git-ignored) and prints a summary. Not a test.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from langsae.artifacts import package_versions, save_json  # noqa: E402
from langsae.cli import setup_logging  # noqa: E402
from langsae.nu import META_FILE as NU_META  # noqa: E402

RESULTS = ROOT / "bench_results"


def _timed(fn, argv) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(argv) or {}
    return {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2), **out}


def toy(args) -> dict:
    from langsae import config
    from langsae.stages import cluster_synergy
    from langsae.stages import interactions as cross_linguistic_interactions
    from langsae.stages import nu as compute_nu_scores
    from langsae.stages import section5 as reproduce_figures_section5

    base = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="bench_interactions_"))
    config.OUTPUT_ROOT = (
        base / "output"
    )  # the runs' figures stay beside their results, out of the project's output/
    after, scratch = base / "after_section5", base / "from_scratch"
    for d in (after, scratch):
        if d.exists():
            shutil.rmtree(d)
    common = [
        "--model",
        "toy",
        *(["--layers", args.layers] if args.layers else []),
        *(["--languages", args.languages] if args.languages else []),
    ]
    n = ["--n-texts", str(args.n_texts)] if args.n_texts else []
    out = {"folder": str(base)}
    out["nu"] = _timed(compute_nu_scores.main, [*common, "--out-dir", str(after)])
    out["section5"] = _timed(reproduce_figures_section5.main, [*common, *n, "--out-dir", str(after)])
    out["after_section5"] = {
        "stage3": _timed(cross_linguistic_interactions.main, [*common, *n, "--out-dir", str(after)]),
        "stage4": _timed(cluster_synergy.main, [*common, *n, "--out-dir", str(after)]),
    }
    scratch.mkdir(parents=True)
    for f in [*after.glob("layer_*"), after / NU_META]:
        shutil.copy2(f, scratch / f.name)
    out["from_scratch"] = {
        "stage3": _timed(cross_linguistic_interactions.main, [*common, *n, "--out-dir", str(scratch)]),
        "stage4": _timed(cluster_synergy.main, [*common, *n, "--out-dir", str(scratch)]),
    }
    if out["after_section5"]["stage3"]["computed"] != 0:
        raise SystemExit("stage 3 computed conditions after Section 5: the stages do not share the cache")
    return out


def qwen_shape(args) -> dict:
    from bench_ablation import fake_nu, qwen3_06b_shape

    from langsae import sweep, synergy
    from langsae.config import parse_layers
    from langsae.data import PAPER_LANGUAGES
    from langsae.stats import N_BOOT

    layers = list(parse_layers(args.layers) or range(28))
    langs = list(PAPER_LANGUAGES[: args.languages])
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    t0 = time.perf_counter()
    model = qwen3_06b_shape().to(args.device, dtype)
    setup_s = time.perf_counter() - t0
    nu = fake_nu(layers, langs, model.config.hidden_size)
    pairs = synergy.language_pairs(nu, langs, 0.9)
    conditions = synergy.pair_conditions(nu, langs, "directional", pairs)
    rng = np.random.default_rng(0)
    lengths = [28, 36, 31, 44, 25]  # FLORES sentences: ~25-45 tokens
    ids, lang_index = [], []
    for g in range(len(langs)):
        for t in range(args.texts_per_lang):
            ids.append(
                rng.integers(0, model.config.vocab_size, size=lengths[(g + t) % len(lengths)]).tolist()
            )
            lang_index.append(g)
    evalset = sweep.EvalSet(tuple(langs), ids, np.array(lang_index), "random tokens")
    with tempfile.TemporaryDirectory() as tmp:
        store = sweep.ConditionStore(Path(tmp), {"bench": evalset.digest()})
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = sweep.run_sweep(
            model, evalset, nu, conditions, store, args.batch_size, 0, args.rows_per_forward
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    effects = synergy.pair_effects(result, pairs, 0, N_BOOT)
    labels = {lang: i % 3 for i, lang in enumerate(langs)}
    synergy.summary(effects, labels, langs, 10000, 0)
    stats_s = time.perf_counter() - t0
    return {
        "layers": layers,
        "languages": len(langs),
        "pairs_per_layer": len(pairs) // len(layers),
        "texts_per_lang": args.texts_per_lang,
        "device": args.device,
        "dtype": args.dtype,
        "conditions": len(conditions),
        "computed": result.computed,
        "model_setup_s": round(setup_s, 2),
        "sweep_s": round(sweep_s, 2),
        "statistics_s": round(stats_s, 2),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--qwen-shape",
        action="store_true",
        help="stage 4's sweep at Qwen3-0.6B shape with random weights instead of the toy stages",
    )
    p.add_argument(
        "--layers",
        default=None,
        help="toy: --layers of the stages (default all); qwen-shape: ablated layers (default 0-27)",
    )
    p.add_argument(
        "--languages",
        default=None,
        help="toy: --languages (default the paper's ten); "
        "qwen-shape: how many of the paper's languages (default 10)",
    )
    p.add_argument(
        "--n-texts",
        type=int,
        default=None,
        help="toy: evaluation texts per language (default the toy preset's)",
    )
    p.add_argument("--out-dir", default=None, help="toy: folder for the two runs (default a temporary one)")
    p.add_argument("--texts-per-lang", type=int, default=500, help="qwen-shape: random texts per language")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="qwen-shape: torch device"
    )
    p.add_argument(
        "--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="qwen-shape: model dtype"
    )
    p.add_argument("--batch-size", type=int, default=32, help="qwen-shape: texts per forward")
    p.add_argument(
        "--rows-per-forward",
        type=int,
        default=256,
        help="qwen-shape: texts x conditions stacked into one forward",
    )
    args = p.parse_args(argv)
    setup_logging()
    if args.qwen_shape:
        args.languages = int(args.languages or 10)
        out, name = qwen_shape(args), "bench_interactions_qwen.json"
    else:
        out, name = toy(args), "bench_interactions.json"
    out.update(
        machine=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        versions=package_versions(),
    )
    save_json(out, RESULTS / name)
    for k, v in out.items():
        if k != "versions":
            print(f"{k}: {v}")
    print(f"-> {RESULTS / name}")


if __name__ == "__main__":
    main()
