"""Benchmark: what rounding alone does to the toy build, and that pinned kernels remove it.

Builds the toy with one seed several times, each in a fresh process whose kernel paths
differ only in how they round:
  pinned   the build's own settings (langsae.toy.PINNED_KERNELS): ATen's AVX2 kernels,
           MKL's reproducible COMPATIBLE path, oneDNN at SSE4.1
  avx512   ATen's AVX-512 kernels and MKL/oneDNN's own choice (what this machine runs unpinned)
  avx2     ATen's AVX2 kernels, MKL and oneDNN limited to AVX2 (what an AVX2-only machine,
           e.g. an AMD EPYC before Zen 4, runs unpinned)
  pinned-mkl-avx2  the pinned settings with MKL told the machine has AVX2 only: pinning must
           make this byte-identical to `pinned`
and reports, per variant, the first file that differs from the pinned build and the quality
report; the spread of per-language model CE across variants says how robust the training
recipe is to rounding (the target is a few hundredths of a nat).

    python benchmarks/toy_rounding.py --scale full

Writes bench_results/toy_rounding_<scale>_seed<seed>.json (git-ignored). Not a test: a full
build takes minutes, and this makes several.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from langsae import toy  # noqa: E402
from langsae.artifacts import load_json, save_json  # noqa: E402

SLEEPING_THREADS = {"OMP_WAIT_POLICY": "PASSIVE"}  # changes no number; keeps a busy machine usable
VARIANTS = {
    "pinned": toy.PINNED_KERNELS,
    "pinned-mkl-avx2": {**toy.PINNED_KERNELS, "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", **SLEEPING_THREADS},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        **SLEEPING_THREADS,
    },
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--scale", choices=list(toy.SCALES), default="full", help="toy scale to build")
    p.add_argument("--seed", type=int, default=0, help="the build's seed")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}"
    )
    p.add_argument(
        "--out", type=Path, help="result file; default bench_results/toy_rounding_<scale>_seed<seed>.json"
    )
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    out = args.out or ROOT / "bench_results" / f"toy_rounding_{args.scale}_seed{args.seed}.json"
    results = {}
    with tempfile.TemporaryDirectory(prefix="toy-rounding-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            start = time.perf_counter()
            toy._train_in_pinned_process(work, args.seed, args.scale, VARIANTS[name])
            results[name] = {
                "fingerprint": toy.fingerprint(work),
                "timings": load_json(work / "timings.json"),
                "wall_seconds": round(time.perf_counter() - start, 1),
            }
    reference = results[names[0]]["fingerprint"]
    langs = list(reference["quality"]["cross_entropy"])
    ce = {
        n: {lang: r["fingerprint"]["quality"]["cross_entropy"][lang]["model"] for lang in langs}
        for n, r in results.items()
    }
    spread = {lang: max(ce[n][lang] for n in names) - min(ce[n][lang] for n in names) for lang in langs}
    summary = {
        "machine": cpu_model(),
        "scale": args.scale,
        "seed": args.seed,
        "variants": {n: VARIANTS[n] for n in names},
        "first_difference_from_" + names[0]: {
            n: toy.first_difference(results[n]["fingerprint"], reference) for n in names
        },
        "model_ce": ce,
        "ce_spread_nats": spread,
        "max_ce_spread_nats": max(spread.values()),
        "fve": {
            n: {L: q["fve"] for L, q in r["fingerprint"]["quality"]["transcoders"].items()}
            for n, r in results.items()
        },
        "build_seconds": {n: r["timings"]["build_seconds"] for n, r in results.items()},
        "aten_kernels": {n: r["timings"]["aten_kernels"] for n, r in results.items()},
    }
    save_json(summary, out)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in ("machine", "first_difference_from_" + names[0], "build_seconds", "aten_kernels")
            },
            indent=1,
        )
    )
    print(f"{'language':<10}" + "".join(f"{n:>17}" for n in names) + f"{'spread':>9}")
    for lang in langs:
        print(f"{lang:<10}" + "".join(f"{ce[n][lang]:>17.4f}" for n in names) + f"{spread[lang]:>9.4f}")
    print(f"max spread {summary['max_ce_spread_nats']:.4f} nats; written to {out}")


if __name__ == "__main__":
    main()
