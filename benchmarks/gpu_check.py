"""GPU check: the project's performance claims at the real Qwen3-0.6B shape, in one command, in bf16.

    python benchmarks/gpu_check.py                        # one H100/H200, about 7.5 minutes
    python benchmarks/gpu_check.py --parts nu,identity    # a subset
    python benchmarks/gpu_check.py --tiny                 # the same code on the CPU (a test runs it)

Parts (each timed on its own, with its peak GPU memory and, for a stage, its memory plan; fixtures are
built offline in a temporary Hugging Face cache, random weights of the real shape, Qwen3's real tokenizer):
  nu        the nu stage (`compute_nu_scores.py`, a subprocess as a user runs it) against reading its
            transcoder files from a cold page cache (bench_nu): ratio_stage_to_read on its 4 layers, and
            at 28 layers with the stage's imports paid once (the target, <= 1.5)
  section5  `reproduce_figures_section5.py` on 1 layer x 10 languages x 500 evaluation texts (top-k 2,
            5 random draws: its defaults), extrapolated to 28 layers
  generate  the generation engine against batch-1 `generate` (bench_generate), target >= 20x
  steering  the steering engine against the uncached batch-1 loop (bench_steering)
  identity  an edit that returns its input, stacked with real ablations through the engine's hooks
            (sweep.ablated_ce): its ΔCE must be exactly 0.0 on every text, in bf16; and the same edit
            alone, in the baseline's batch shape (tells the hooks from shape-dependent kernels)

Time budget on one H200 (16 CPU cores), measured 2026-12-04 (docs/benchmarks.md, "GPU check"): imports
~10 s; fixtures 20 s (the model initialised on the GPU and saved in bf16, the nu part's 4 transcoders
drawn with torch.randn on the GPU, 1.3 GB each in fp32; Section 5 reuses them); nu 51 s; section5 194 s
per layer (40 conditions x 5,000 texts at batch 32); generate 64 s and steering 61 s (the batch-1 loops
dominate); identity ~40 s. About 450 s in all, inside one 10-minute device command; the JSON is
rewritten after every part, so a run stopped at a time limit keeps what it finished.
Over budget: drop a part with --parts; Section 5 (the largest) can run alone later.
Writes bench_results/gpu_check.json (--tiny: gpu_check_tiny.json) and prints one table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_nu  # first: it points HF_HOME at its temporary cache before any Hugging Face import

# isort: split
import bench_generate
import bench_steering
import torch

from langsae.data import PAPER_LANGUAGES, load_texts
from langsae.errors import UserError

PARTS = ("nu", "section5", "generate", "steering", "identity")
N_LAYERS = 28  # Qwen3-0.6B's depth: Section 5's per-layer cost is extrapolated to it
# The real run's sizes, and --tiny's: the same code on a 2-layer, 64-wide model and 256-wide transcoders.
REAL = {
    "nu_layers": "0,1,2,3",
    "s5_layers": "0",
    "n_sel": 100,
    "n_eval": 500,
    "languages": PAPER_LANGUAGES,
    "s5_flags": [],
    "batch_size": 32,
    "d_sae": bench_nu.D_SAE,
    "shape": None,
    "engine": ["--items", "16", "--new-tokens", "16"],
}
TINY = {
    "nu_layers": "0,1",
    "s5_layers": "0,1",
    "n_sel": 3,
    "n_eval": 2,
    "languages": ("eng_Latn", "fra_Latn", "spa_Latn"),
    "s5_flags": ["--top-k", "1", "--random-draws", "1"],
    "batch_size": 8,
    "d_sae": 256,
    "shape": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
    "engine": [
        "--items",
        "2",
        "--new-tokens",
        "3",
        "--min-len",
        "5",
        "--max-len",
        "9",
        "--layers-shape",
        "tiny",
    ],
}
TARGETS = {"nu": (f"ratio_stage_to_read_{N_LAYERS}_layers", "<=", 1.5), "generate": ("speedup", ">=", 20.0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny shapes on the CPU in fp32: the same code in seconds (no GPU needed)",
    )
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts to run: {', '.join(PARTS)}"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="result JSON (default bench_results/gpu_check.json; --tiny: gpu_check_tiny.json)",
    )
    p.add_argument("--keep", action="store_true", help=f"keep the fixtures under {bench_nu.TMP}")
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown or not args.parts:
        raise UserError(f"--parts: unknown part(s) {unknown}; choose among {', '.join(PARTS)}")
    if not args.tiny and not torch.cuda.is_available():
        raise UserError(
            "no CUDA GPU here: gpu_check.py measures one H100/H200; "
            "run `python benchmarks/gpu_check.py --tiny` for the CPU run"
        )
    return args


class Part:
    """Times one part and records its peak GPU memory (reset at the start)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.wall_s = round(time.perf_counter() - self.t0, 2)
        self.peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None


def run_nu(run: Namespace, files: dict) -> dict:
    """bench_nu's read and stage costs on the nu layers (the stage writes the features Section 5 reads)."""
    read = bench_nu.read_cost(run.preset, files, run.device, run.dtype, cold=True)
    args = Namespace(
        layers=run.sizes["nu_layers"],
        n_texts_per_lang=run.sizes["n_sel"],
        device=run.device,
        dtype=run.dtype_name,
        batch_size=run.sizes["batch_size"],
        warm=False,
    )
    stage, stage_cpu, t_import, waited = bench_nu.stage_cost(run.model_dir, args, files)
    total, n = sum(read.values()), len(files)
    # imports are paid once, the rest (model load, forward, reads, encodes) counts per layer: an upper bound
    at_28 = (t_import + (stage - t_import) / n * N_LAYERS) / (total / n * N_LAYERS)
    return {
        f"ratio_stage_to_read_{N_LAYERS}_layers": at_28,
        "layers": list(files),
        "read_s": read,
        "read_total_s": total,
        "stage_wall_s": stage,
        "stage_cpu_s": stage_cpu,
        "python_import_s": t_import,
        "stage_waited_for_sae_s": waited,
        "ratio_stage_to_read": stage / total,
        "stage_peak_gpu": "not measured (a subprocess); peak_gib is the reads'",
    }


def section5_argv(run: Namespace, layers: str) -> list[str]:
    return [
        "--model-id",
        str(run.model_dir),
        "--device",
        run.device,
        "--dtype",
        run.dtype_name,
        "--layers",
        layers,
        "--n-texts-per-lang",
        str(run.sizes["n_sel"]),
        "--out-dir",
        str(bench_nu.TMP / "out"),
        "--batch-size",
        str(run.sizes["batch_size"]),
    ]


def run_section5(run: Namespace) -> dict:
    """Section 5 at its defaults on the nu stage's features; the nu stage runs first when its part did not."""
    from langsae.stages import nu as compute_nu_scores
    from langsae.stages import section5 as reproduce_figures_section5

    layers = run.sizes["s5_layers"]
    if not (bench_nu.TMP / "out").exists():  # --parts without nu: its features (in wall_s, not stage_wall_s)
        compute_nu_scores.main(section5_argv(run, layers))
    t0 = time.perf_counter()
    langs = [
        "--languages",
        ",".join(run.sizes["languages"]),
        "--n-texts",
        str(run.sizes["n_eval"]),
        *run.sizes["s5_flags"],
    ]
    work = reproduce_figures_section5.main([*section5_argv(run, layers), *langs])
    wall = time.perf_counter() - t0
    n = len(layers.split(","))
    return {
        "layers": layers,
        "languages": len(run.sizes["languages"]),
        "flags": run.sizes["s5_flags"],
        "n_eval_texts_per_lang": run.sizes["n_eval"],
        "work": work,
        "stage_wall_s": wall,
        "per_layer_s": wall / n,
        f"extrapolated_{N_LAYERS}_layers_s": wall / n * N_LAYERS,
    }


def engine_argv(run: Namespace) -> list[str]:
    return [*run.sizes["engine"], "--device", run.device, "--dtype", run.dtype_name, "--tolerate-mismatch"]


class IdentityEdit:
    """An edit that returns its input unchanged at one hook point: the engine's hooks must leave it exact."""

    def __init__(self, hook):
        self.hook = hook

    def apply(self, out: torch.Tensor, sublayer_input: torch.Tensor) -> torch.Tensor:
        return out


def run_identity(run: Namespace) -> dict:
    """ΔCE of the identity edit, stacked between two random directional ablations at the first Section 5
    layer, against the baseline CE, on every evaluation text: it must be exactly 0.0."""
    from langsae.ablation import Ablation, orthonormal_basis
    from langsae.forward import make_batches
    from langsae.model import HookPoint, load_model
    from langsae.sweep import ablated_ce, baseline_ce, build_eval_set

    model, tok = load_model(run.preset, run.device, run.dtype)
    texts = load_texts(tuple(run.sizes["languages"]), "evaluation", run.sizes["n_eval"])
    ids = build_eval_set(tok, texts).token_ids
    batches = make_batches(ids, run.sizes["batch_size"], tok.pad_token_id)
    layer = int(run.sizes["s5_layers"].split(",")[0])
    hook = HookPoint(layer, "block", "output")
    g = torch.Generator().manual_seed(3)
    rand = [
        Ablation(
            hook,
            "directional",
            basis=orthonormal_basis(torch.randn(2, model.config.hidden_size, generator=g)).to(run.device),
        )
        for _ in range(2)
    ]
    base, _ = baseline_ce(model, batches)
    ce = ablated_ce(
        model, batches, layer, [rand[0], IdentityEdit(hook), rand[1]], max_rows=3 * run.sizes["batch_size"]
    )
    delta = ce[1] - base
    # The same edit alone, in the baseline's batch shape: if this one is exact and the stacked one is not,
    # the stacked rows' differences come from kernels chosen by shape, not from the hooks.
    alone = (
        ablated_ce(model, batches, layer, [IdentityEdit(hook)], max_rows=run.sizes["batch_size"])[0] - base
    )
    return {
        "layer": layer,
        "n_texts": len(ids),
        "n_exactly_zero": int((delta == 0).sum()),
        "max_abs_delta_ce": float(delta.abs().max()),
        "alone_max_abs_delta_ce": float(alone.abs().max()),
        "alone_n_exactly_zero": int((alone == 0).sum()),
        "random_ablation_mean_abs_delta_ce": float((ce[0] - base).abs().mean()),
        "exact": bool((delta == 0).all()),
    }


def build(run: Namespace, parts: list[str]) -> dict:
    """The fixtures the parts need: the model for nu, section5 and identity; the transcoders of nu's layers
    (Section 5's alone without nu)."""
    layers_s = (
        run.sizes["nu_layers"] if "nu" in parts else run.sizes["s5_layers"] if "section5" in parts else ""
    )
    layers = [int(x) for x in layers_s.split(",")] if layers_s else []
    run.model_dir, files, _ = bench_nu.build_fixtures(
        layers, run.dtype, device=run.device, shape=run.sizes["shape"], d_sae=run.sizes["d_sae"]
    )
    run.preset = bench_nu.bench_preset(run.model_dir)
    return files


def check(args, save) -> dict:
    """Every asked part in order: {part: its numbers, wall_s, peak_gib}; `save(results)` after each, so
    a run stopped at its time limit keeps the parts it finished."""
    device = "cpu" if args.tiny else "cuda"
    dtype_name = "float32" if args.tiny else "bfloat16"
    run = Namespace(
        device=device,
        dtype_name=dtype_name,
        dtype=getattr(torch, dtype_name),
        sizes=TINY if args.tiny else REAL,
    )
    results = {}
    with Part(device) as p:
        files = build(run, args.parts) if {"nu", "section5", "identity"} & set(args.parts) else {}
    results["fixtures"] = {"wall_s": p.wall_s, "peak_gib": p.peak_gib, "transcoders": len(files)}
    print(f"== fixtures: {p.wall_s:.1f} s", flush=True)
    save(results)
    steps = {
        "nu": lambda: run_nu(run, files),
        "section5": lambda: run_section5(run),
        "identity": lambda: run_identity(run),
        "generate": lambda: bench_generate.main(engine_argv(run)),
        "steering": lambda: bench_steering.main(engine_argv(run)),
    }
    for part in PARTS:
        if part in args.parts:
            with Part(device) as p:
                out = steps[part]()
            results[part] = {
                **{k: v for k, v in out.items() if k not in ("versions", "machine")},
                "wall_s": p.wall_s,
                "peak_gib": p.peak_gib,
                "plan_gib": stage_plan(part),
            }
            print(f"== {part}: {p.wall_s:.1f} s", flush=True)
            save(results)
    return results


def stage_plan(part: str) -> float | None:
    """The memory plan's device estimate (GiB, langsae.memory) that the part's stage recorded in its meta,
    to stand beside the measured peak; None for the engine parts, which run no stage. The nu stage runs
    in a subprocess, so its part's peak is the reads' and not the stage's."""
    for path in sorted((bench_nu.TMP / "out").glob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("stage") == part and meta.get("memory_plan"):
            return meta["memory_plan"]["device_gib"]
    return None


def verdict(part: str, r: dict, tiny: bool) -> tuple[str, str, str]:
    """(the part's key number, its target, ok / FAIL / '') for the table; --tiny's speeds have no target."""
    if part in TARGETS:
        key, op, target = TARGETS[part]
        ok = r[key] <= target if op == "<=" else r[key] >= target
        raw = f" (raw {r['ratio_stage_to_read']:.2f})" if part == "nu" else ""
        return f"{key} {r[key]:.2f}{raw}", f"{op} {target:g}", "n/a" if tiny else "ok" if ok else "FAIL"
    if part == "identity":
        return (
            f"max |ΔCE| {r['max_abs_delta_ce']:.1e} ({r['alone_max_abs_delta_ce']:.1e} alone), "
            f"{r['n_texts']} texts",
            "== 0",
            "ok" if r["exact"] else "FAIL",
        )
    if part == "section5":
        return (
            f"{r['per_layer_s']:.1f} s/layer -> {r[f'extrapolated_{N_LAYERS}_layers_s']:.0f} s at {N_LAYERS}",
            "",
            "",
        )
    if part == "steering":
        return f"speedup {r['speedup']:.1f}, same tokens {r['identical_tokens']}", "", ""
    return f"{r['transcoders']} transcoders", "", ""


def table(results: dict, tiny: bool) -> str:
    head = f"{'part':<10}{'wall s':>8}{'peak GiB':>10}{'plan GiB':>10}  {'result':<52}{'target':<8}ok"
    lines = [head, "-" * len(head)]
    for part, r in results.items():
        if part in PARTS or part == "fixtures":
            value, target, ok = verdict(part, r, tiny)
            peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
            plan = "" if r.get("plan_gib") is None else f"{r['plan_gib']:.2f}"
            lines.append(f"{part:<10}{r['wall_s']:>8.1f}{peak:>10}{plan:>10}  {value:<52}{target:<8}{ok}")
    return "\n".join(lines)


def main(argv=None):
    t0 = time.perf_counter()
    try:
        args = parse_args(argv)
    except BaseException:  # a bad flag, no GPU, --help: nothing built, the empty fixture folder goes
        shutil.rmtree(bench_nu.TMP, ignore_errors=True)
        raise
    out = args.out or bench_nu.ROOT / "bench_results" / (
        "gpu_check_tiny.json" if args.tiny else "gpu_check.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    head = {
        "mode": "tiny (CPU, fp32)" if args.tiny else "GPU, bf16",
        "machine": bench_nu.machine("cpu" if args.tiny else "cuda"),
    }

    def save(results: dict) -> None:
        results["total_wall_s"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps({**results, **head}, indent=2, default=str) + "\n")

    try:
        results = check(args, save)
    finally:
        if not args.keep:
            shutil.rmtree(bench_nu.TMP, ignore_errors=True)  # gigabytes of random weights
    save(results)
    results.update(head)
    print(table(results, args.tiny))
    print(f"total {results['total_wall_s']} s -> {out}")
    return results


if __name__ == "__main__":
    from langsae.cli import run_main

    sys.exit(run_main(main))
