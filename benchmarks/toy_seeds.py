"""Which of the toy's findings hold across seeds: build the toy with several seeds and run
stages 1-5, code switching and steering on each, then say, finding by finding and claim by
claim, where all seeds agree.

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
  code_switch its top feature is more active on other languages' nouns after its prefix than on
              the same nouns alone (CI above zero), at the seed's most common held-out peak
              layer (the report's claim 12)
and the held-out peak layer itself; then every claim of the report with its verdict per seed
(claims 10, 11 and 13 are the downstream and steering ones); then, per seed, stages 3-4: the k=5
clusters and their bootstrap stability (mean ARI), how often Vietnamese shares a cluster with en/es/fr/pt and
with th/ko, whether Arabic is alone, and intra- minus inter-cluster pair synergy with its
permutation p, with and without the pairs that share (or nearly share) a top-1 feature.
"""

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from langsae import toy  # noqa: E402
from langsae.artifacts import load_json, save_json, save_text  # noqa: E402
from langsae.code_switch import RESULTS_FILE as CODE_SWITCH_RESULTS  # noqa: E402
from langsae.config import FEATURES_ROOT, figures_dir_for  # noqa: E402
from langsae.nu import META_FILE as NU_META  # noqa: E402
from langsae.report import claim_row, claims  # noqa: E402
from langsae.stages import registry  # noqa: E402
from langsae.verdicts import Artifacts  # noqa: E402

SEED_ROOT = ROOT / "toy_model_seeds"
STAGE_SCRIPTS = (
    "compute_nu_scores.py",
    "reproduce_figures_section5.py",
    "cross_linguistic_interactions.py",
    "cluster_synergy.py",
    "code_switching.py",
    "downstream_ablation.py",
    "steer_language.py",
)


def toy_root(seed: int) -> Path:
    return toy.TOY_ROOT if seed == 0 else SEED_ROOT / f"seed{seed}"


def run_dir(seed: int) -> Path:
    return FEATURES_ROOT / ("toy" if seed == 0 else f"toy_seed{seed}")


def run_stages(seed: int) -> None:
    """Build the toy with `seed` (reused when current) and run STAGE_SCRIPTS on it (cached work is
    skipped)."""
    toy.build_toy(toy_root(seed), seed=seed, scale="full")
    # Idle OpenMP threads sleep rather than spin (no number changes): seeds can run side by side.
    env = {**os.environ, "LANGSAE_TOY_DIR": str(toy_root(seed)), "OMP_WAIT_POLICY": "PASSIVE"}
    for script in STAGE_SCRIPTS:
        cmd = [sys.executable, str(ROOT / script), "--model", "toy", "--out-dir", str(run_dir(seed))]
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)


def seed_findings(seed: int) -> dict[str, dict]:
    """Per language: the held-out peak layer and the four findings (True/False, synergy as +/-/0)."""
    with open(run_dir(seed) / "section5_summary.csv", newline="") as f:
        summary = {r["language"]: r for r in csv.DictReader(f)}
    exclusive = load_json(run_dir(seed) / NU_META)["exclusive_top1"]
    peaks = [int(r["peak_layer"]) for r in summary.values()]
    modal = str(
        max(set(peaks), key=peaks.count)
    )  # the report's code-switching layer: chosen without the probe items
    with open(run_dir(seed) / CODE_SWITCH_RESULTS, newline="") as f:
        switch = {
            r["language"]: float(r["ci_low"]) > 0
            for r in csv.DictReader(f)
            if r["case"] == "context_on_foreign_nouns" and r["layer"] == modal
        }
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
            "code_switch": switch[lang],
            "self_delta_ce": float(r["self_delta_ce"]),
            "specificity_diff": float(r["specificity_diff"]),
        }
    return out


FINDINGS = ("peak_layer", "exclusive", "causal", "specific", "synergy", "code_switch")


def cluster_findings(seed: int) -> dict:
    """Stages 3-4 of one seed: the point clusters, their stability, the claims of the earlier
    reproduction (Vietnamese with EN/ES/FR/PT, Arabic isolated) and intra vs inter synergy."""
    c = load_json(run_dir(seed) / "interaction_clusters.json")
    langs, labels, co = c["languages"], c["labels"], np.array(c["co_clustering"])
    groups = sorted(sorted(short(l) for l in langs if labels[l] == g) for g in set(labels.values()))
    i = {l: k for k, l in enumerate(langs)}

    def co_mean(a, bs):
        return float(np.mean([co[i[a], i[b]] for b in bs if b in i])) if a in i else float("nan")

    romance = ["eng_Latn", "spa_Latn", "fra_Latn", "por_Latn"]
    s = load_json(run_dir(seed) / "cluster_synergy_summary.json")["layers"]["all_layers"]
    syn = {}
    for which in ("with_degenerate", "without_degenerate"):
        w = s[which]
        d, r = w["difference"], w["regression"]
        syn[which] = {
            "difference": d["value"],
            "ci": [d["ci_low"], d["ci_high"]],
            "p": w["permutation_p"],
            "n_intra": w["intra"]["n_pairs"],
            "n_inter": w["inter"]["n_pairs"],
            "cos_slope": r["slope"],
            "cos_r": r["r"],
            "cos_p": r["p"],
            "intra_given_cos": w["intra_given_cosine"]["coefficient"],
            "intra_given_cos_p": w["intra_given_cosine"]["permutation_p"],
        }
    return {
        "clusters": "; ".join(",".join(g) for g in groups),
        "ari_mean": c["ari"]["mean"],
        "stress": c["stress"],
        "negative_eigen_mass": c["negative_eigen_mass"],
        "vie_with_en_es_fr_pt": co_mean("vie_Latn", romance),
        "vie_with_tha_kor": co_mean("vie_Latn", ["tha_Thai", "kor_Hang"]),
        "arb_singleton": sum(labels[l] == labels.get("arb_Arab") for l in langs) == 1
        if "arb_Arab" in labels
        else None,
        "arb_max_co": max(
            (co[i["arb_Arab"], j] for j in range(len(langs)) if j != i["arb_Arab"]), default=float("nan")
        )
        if "arb_Arab" in i
        else float("nan"),
        "synergy": syn,
        "n_same_feature": s["n_same_feature"],
        "n_overlapping": s["n_overlapping"],
    }


def claim_verdicts(seed: int) -> dict[str, dict]:
    """Every report claim's verdict and evidence on the seed's run, as its REPORT.md states them."""
    a = Artifacts(run_dir(seed), figures_dir_for(run_dir(seed)))
    out = {}
    for stage, claim in claims(registry()):
        ev, verdict = claim_row(claim, stage, a)
        out[str(claim.number)] = {"claim": claim.text, "verdict": verdict, "evidence": ev.numbers}
    return out


def claims_markdown(per_seed: dict[int, dict]) -> str:
    """One row per claim: its verdict in each seed, bold where every seed gives the same one."""
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    lines = [
        f"| # | claim | {' | '.join(f'seed {s}' for s in seeds)} | all seeds agree |",
        "|---" * (len(seeds) + 3) + "|",
    ]
    for number, c in first.items():
        verdicts = [per_seed[s][number]["verdict"] for s in seeds]
        same = len(set(verdicts)) == 1
        cells = " | ".join(f"**{v}**" if same else v for v in verdicts)
        lines.append(f"| {number} | {c['claim']} | {cells} | {'yes' if same else 'no'} |")
    return "\n".join(lines) + "\n"


def short(lang: str) -> str:
    return lang.split("_")[0]


def cluster_markdown(per_seed: dict[int, dict]) -> str:
    """Stages 3-4 across seeds, one row per seed."""
    lines = [
        "| seed | clusters (k=5) | mean ARI | vie co-clusters with en/es/fr/pt | with th/ko | arb alone "
        "| arb max co-clustering |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, f in per_seed.items():
        lines.append(
            f"| {seed} | {f['clusters']} | {f['ari_mean']:.2f} | {f['vie_with_en_es_fr_pt']:.2f} | "
            f"{f['vie_with_tha_kor']:.2f} | "
            f"{'yes' if f['arb_singleton'] else 'no'} | {f['arb_max_co']:.2f} |"
        )
    lines += [
        "",
        "| seed | pairs | intra − inter synergy, all pairs [95% CI], p | without degenerate pairs "
        "| slope on abs(cosine), r (all pairs) "
        "| intra beyond abs(cosine), permutation p (all pairs) |",
        "|---|---|---|---|---|---|",
    ]
    for seed, f in per_seed.items():
        a, b = f["synergy"]["with_degenerate"], f["synergy"]["without_degenerate"]
        fmt = lambda x: (
            f"{x['difference']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}], p={x['p']:.3g} "
            f"({x['n_intra']} intra, {x['n_inter']} inter)"
        )
        lines.append(
            f"| {seed} | {f['n_same_feature']} same feature, {f['n_overlapping']} overlapping | "
            f"{fmt(a)} | {fmt(b)} | "
            f"{a['cos_slope']:+.2f}, r={a['cos_r']:+.2f} | "
            f"{a['intra_given_cos']:+.3f}, p={a['intra_given_cos_p']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def agreement(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Per language and finding: the value in each seed and whether all seeds agree."""
    langs = list(next(iter(per_seed.values())))
    return {
        lang: {
            f: {
                "values": [per_seed[s][lang][f] for s in per_seed],
                "holds": len({per_seed[s][lang][f] for s in per_seed}) == 1,
            }
            for f in FINDINGS
        }
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
    lines.append(
        f"Values per seed ({'/'.join(map(str, seeds))}); **bold** where every seed agrees. "
        "Languages where all seeds agree: "
        + ", ".join(f"{f} {n}/{len(agree)}" for f, n in held.items())
        + "."
    )
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated toy seeds")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        run_stages(seed)
    per_seed = {s: seed_findings(s) for s in seeds}
    agree = agreement(per_seed)
    clusters = {s: cluster_findings(s) for s in seeds}
    verdicts = {s: claim_verdicts(s) for s in seeds}
    quality = {s: load_json(toy_root(s) / "quality.json") for s in seeds}
    out = ROOT / "bench_results"
    save_json(
        {
            "seeds": seeds,
            "per_seed": per_seed,
            "agreement": agree,
            "clusters": clusters,
            "claims": verdicts,
            "model_ce": {s: q["cross_entropy"] for s, q in quality.items()},
            "tasks": {s: q.get("tasks") for s, q in quality.items()},
        },
        out / "toy_seeds.json",
    )
    table = markdown(agree, seeds) + "\n" + claims_markdown(verdicts) + "\n" + cluster_markdown(clusters)
    save_text(table, out / "toy_seeds.md")
    print(table)


if __name__ == "__main__":
    main()
