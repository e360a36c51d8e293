"""Which of the toy's findings hold across seeds: build the toy with several seeds and run
stages 1-2 on each, then say, finding by finding, where all seeds agree.

A finding on the toy counts only if every seed shows it. Seed 0 is the default toy
(toy_model/, results in sae_features/toy/, the run the README quotes); other seeds build
into toy_model_seeds/seed<S>/ and write sae_features/toy_seed<S>/. Every build and stage
is reused when it is current, so a rerun only aggregates.

    python benchmarks/toy_seeds.py                 # seeds 0,1,2
    python benchmarks/toy_seeds.py --seeds 0,1,2,3

Writes bench_results/toy_seeds.json and bench_results/toy_seeds.md (git-ignored) and prints
the table. A finding per language, at the language's held-out peak layer (top-1+2):
  exclusive   its top-1 feature is in no other language's top-5 (nu stage)
  causal      self ΔCE's CI lies above the random-feature control's CI
  specific    the specificity difference (self − mean others) has a CI above zero
  synergy     the synergy CI excludes zero (the sign is reported)
and the held-out peak layer itself.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from langsae import toy  # noqa: E402
from langsae.artifacts import load_json, save_json, save_text  # noqa: E402
from langsae.config import FEATURES_ROOT  # noqa: E402

SEED_ROOT = ROOT / "toy_model_seeds"


def toy_root(seed: int) -> Path:
    return toy.TOY_ROOT if seed == 0 else SEED_ROOT / f"seed{seed}"


def run_dir(seed: int) -> Path:
    return FEATURES_ROOT / ("toy" if seed == 0 else f"toy_seed{seed}")


def run_stages(seed: int) -> None:
    """Build the toy with `seed` (reused when current) and run stages 1-2 on it (cached work is skipped)."""
    toy.build_toy(toy_root(seed), seed=seed, scale="full")
    # Idle OpenMP threads sleep rather than spin (no number changes): seeds can run side by side.
    env = {**os.environ, "LANGSAE_TOY_DIR": str(toy_root(seed)), "OMP_WAIT_POLICY": "PASSIVE"}
    for script in ("compute_nu_scores.py", "reproduce_figures_section5.py"):
        cmd = [sys.executable, str(ROOT / script), "--model", "toy", "--out-dir", str(run_dir(seed))]
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)


def seed_findings(seed: int) -> dict[str, dict]:
    """Per language: the held-out peak layer and the four findings (True/False, synergy as +/-/0)."""
    with open(run_dir(seed) / "section5_summary.csv", newline="") as f:
        summary = {r["language"]: r for r in csv.DictReader(f)}
    exclusive = load_json(run_dir(seed) / "meta.json")["exclusive_top1"]
    out = {}
    for lang, r in summary.items():
        v = {k: float(r[k]) for k in r if k.endswith(("_ci_low", "_ci_high"))}
        synergy = "+" if v["synergy_ci_low"] > 0 else "-" if v["synergy_ci_high"] < 0 else "0"
        out[lang] = {
            "peak_layer": int(r["peak_layer"]),
            "exclusive": bool(exclusive[r["peak_layer"]][lang]),
            "causal": v["self_ci_low"] > v["random_ci_high"],
            "specific": v["specificity_diff_ci_low"] > 0,
            "synergy": synergy,
            "self_delta_ce": float(r["self_delta_ce"]),
            "specificity_diff": float(r["specificity_diff"]),
        }
    return out


FINDINGS = ("peak_layer", "exclusive", "causal", "specific", "synergy")


def agreement(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Per language and finding: the value in each seed and whether all seeds agree."""
    langs = list(next(iter(per_seed.values())))
    return {
        lang: {f: {"values": [per_seed[s][lang][f] for s in per_seed], "holds": len({per_seed[s][lang][f] for s in per_seed}) == 1} for f in FINDINGS}
        for lang in langs
    }


def markdown(agree: dict[str, dict], seeds: list[int]) -> str:
    def cell(f: dict) -> str:
        vals = "/".join(("yes" if x else "no") if isinstance(x, bool) else str(x) for x in f["values"])
        return f"**{vals}**" if f["holds"] else vals

    lines = [f"| language | {' | '.join(FINDINGS)} |", "|---" * (len(FINDINGS) + 1) + "|"]
    for lang, fs in agree.items():
        lines.append(f"| {lang} | " + " | ".join(cell(fs[f]) for f in FINDINGS) + " |")
    held = {f: sum(fs[f]["holds"] for fs in agree.values()) for f in FINDINGS}
    lines.append("")
    lines.append(f"Values per seed ({'/'.join(map(str, seeds))}); **bold** where every seed agrees. "
                 "Languages where all seeds agree: " + ", ".join(f"{f} {n}/{len(agree)}" for f, n in held.items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated toy seeds")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        run_stages(seed)
    per_seed = {s: seed_findings(s) for s in seeds}
    agree = agreement(per_seed)
    quality = {s: load_json(toy_root(s) / "quality.json")["cross_entropy"] for s in seeds}
    out = ROOT / "bench_results"
    save_json({"seeds": seeds, "per_seed": per_seed, "agreement": agree, "model_ce": quality}, out / "toy_seeds.json")
    table = markdown(agree, seeds)
    save_text(table, out / "toy_seeds.md")
    print(table)


if __name__ == "__main__":
    main()
