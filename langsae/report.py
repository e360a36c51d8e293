"""output/<run>/REPORT.md: every claim next to its evidence, built from a run's artifacts alone.

`write_report(features_dir, output_dir)` can be called by any stage (run_pipeline.py calls it
after every stage); it reads only files the stages wrote and never loads a model. The claims
are a registry (`CLAIMS`): each is a sentence, where it comes from, the stage that can answer
it, and a function from the run's artifacts to `Evidence` (numbers with CIs, the control next
to them, the figure, a verdict by `VERDICT_RULE`), or None when that stage has not run, in
which case its row says "not run".

    python -m langsae.report --model toy      # rebuild output/toy/REPORT.md
    python -m langsae.report --readme         # README's toy results block from output/toy/REPORT.md
"""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from langsae.artifacts import load_json, package_versions, save_text

REPORT_NAME = "REPORT.md"
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN = "supported", "not supported", "inconclusive", "not run"
FREQ_SURE = 0.95  # a categorical claim wins in at least this share of resamples: supported (at most 1 − this: not)

VERDICT_RULE = f"""\
**Verdict rule.** An *interval* claim (an effect in a stated direction) is **supported** when
the effect's 95% CI excludes zero and lies beyond the control's 95% CI, both in the claimed
direction; **not supported** when the CI lies entirely on the other side of zero or of the
control's CI; **inconclusive** otherwise. A *categorical* claim (which layer peaks) is judged
by how often the claimed answer wins across the joint bootstrap resamples: supported at
≥ {FREQ_SURE:.0%}, not supported at ≤ {1 - FREQ_SURE:.0%}, inconclusive in between. A claim
about several languages combines their verdicts as it is worded: *every* language (supported
when all are, not supported when any is not), *most* languages (supported when more than half
are, not supported when at least half are not), or *some* language (supported when any is, not
supported when all are not); otherwise inconclusive. A claim about a layer or language this
run did not measure is inconclusive. CIs are 95% percentile intervals of a bootstrap that
resamples sentence ids jointly across languages (random controls: draws as well); a claim
about "some" of ten languages is not corrected for multiple comparisons."""


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]" if self.finite() else "n/a"


def interval_verdict(effect: Interval, control: Interval | None = None, direction: int = 1) -> str:
    """VERDICT_RULE for an effect claimed to be > 0 (direction +1) or < 0 (-1), and beyond `control`."""
    if not effect.finite() or (control is not None and not control.finite()):
        return INCONCLUSIVE
    lo, hi = sorted((direction * effect.low, direction * effect.high))
    c_lo, c_hi = sorted((direction * control.low, direction * control.high)) if control is not None else (0.0, 0.0)
    if lo > 0 and lo > c_hi:
        return SUPPORTED
    if hi < 0 or hi < c_lo:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def frequency_verdict(share: float) -> str:
    """VERDICT_RULE for a categorical claim that wins in `share` of the resamples."""
    if not math.isfinite(share):
        return INCONCLUSIVE
    return SUPPORTED if share >= FREQ_SURE else NOT_SUPPORTED if share <= 1 - FREQ_SURE else INCONCLUSIVE


def combine(verdicts: Sequence[str], how: str) -> str:
    """Several languages' verdicts as the claim is worded: 'every', 'most' or 'some'."""
    n, sup, nos = len(verdicts), verdicts.count(SUPPORTED), verdicts.count(NOT_SUPPORTED)
    if n == 0:
        return INCONCLUSIVE
    if how == "every":
        return SUPPORTED if sup == n else NOT_SUPPORTED if nos else INCONCLUSIVE
    if how == "most":
        return SUPPORTED if sup > n / 2 else NOT_SUPPORTED if nos >= n / 2 else INCONCLUSIVE
    if how == "some":
        return SUPPORTED if sup else NOT_SUPPORTED if nos == n else INCONCLUSIVE
    raise ValueError(f"unknown combination {how!r}")


# ----------------------------------------------------------------------------- the run's artifacts


class Artifacts:
    """Read-only access to one run's files: sae_features/<run>/ and output/<run>/ (None when absent)."""

    def __init__(self, features_dir: Path, output_dir: Path):
        self.features_dir, self.output_dir = Path(features_dir), Path(output_dir)

    def json(self, name: str) -> dict | None:
        path = self.features_dir / name
        return load_json(path) if path.exists() else None

    def csv(self, name: str) -> list[dict] | None:
        path = self.features_dir / name
        if not path.exists():
            return None
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def figure(self, name: str) -> str | None:
        """A figure's link relative to REPORT.md, if it exists."""
        return name if (self.output_dir / name).exists() else None

    def stage_status(self, stage: str) -> str | None:
        timings = self.json("pipeline_timings.json") or {"stages": []}
        return next((r["status"] for r in timings["stages"] if r["stage"] == stage), None)


@dataclass(frozen=True)
class Evidence:
    """A claim's row: the numbers with CIs, the control next to them, the figure, the verdict."""

    numbers: str
    control: str
    figure: str | None
    verdict: str


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    stage: str  # the pipeline stage whose artifacts answer it
    evidence: Callable[[Artifacts], Evidence | None] | None  # None: evidence not implemented yet


def _f(row: dict, key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return math.nan


def _iv(row: dict, key: str, ci: str | None = None) -> Interval:
    ci = ci or key
    return Interval(_f(row, key), _f(row, f"{ci}_ci_low"), _f(row, f"{ci}_ci_high"))


def _short(lang: str) -> str:
    return lang.split("_")[0]


def _peak_shares(row: dict) -> dict[int, float]:
    """section5_summary's peak_frequency "L:share;..." as {layer: share}."""
    out = {}
    for part in filter(None, str(row.get("peak_frequency", "")).split(";")):
        layer, share = part.split(":")
        out[int(layer)] = float(share)
    return out


def _section5(a: Artifacts) -> tuple[list[dict], dict] | None:
    rows, meta = a.csv("section5_summary.csv"), a.json("section5_meta.json")
    return (rows, meta) if rows and meta else None


def _peak_claim(a: Artifacts, layer: int, languages: Sequence[str] | None, how: str) -> Evidence | None:
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, meta = s5
    figure = a.figure("figure5.png")
    if languages is not None:
        missing = [lang for lang in languages if lang not in {r["language"] for r in rows}]
        if missing:
            return Evidence(f"{', '.join(missing)} not in this run", "-", figure, INCONCLUSIVE)
        rows = [r for r in rows if r["language"] in languages]
    held_out = ", ".join(f"{_short(r['language'])} {r['peak_layer']}" for r in rows)
    if layer not in meta["layers"]:
        return Evidence(f"layer {layer} not measured (layers {meta['layers']}); held-out peaks: {held_out}", "-", figure, INCONCLUSIVE)
    shares = [_peak_shares(r).get(layer, 0.0) for r in rows]
    at = sum(int(r["peak_layer"]) == layer for r in rows)
    numbers = f"held-out peak at layer {layer} for {at}/{len(rows)}; share of resamples peaking there: " + ", ".join(
        f"{_short(r['language'])} {s:.2f}" for r, s in zip(rows, shares)
    )
    control = "peak chosen on half A of the sentences, reported on half B; other peaks: " + held_out
    return Evidence(numbers, control, figure, combine([frequency_verdict(s) for s in shares], how))


def layer10_dominant(a: Artifacts) -> Evidence | None:
    return _peak_claim(a, 10, None, "most")


def korean_thai_layer0(a: Artifacts) -> Evidence | None:
    return _peak_claim(a, 0, ["kor_Hang", "tha_Thai"], "every")


def hurts_mainly_target(a: Artifacts) -> Evidence | None:
    """Per language at its held-out peak: self − others above zero, and self above k random features."""
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, _ = s5
    verdicts = [combine([interval_verdict(_iv(r, "specificity_diff")), interval_verdict(_iv(r, "self_delta_ce", "self"), _iv(r, "random_delta_ce", "random"))], "every") for r in rows]
    numbers = "self − others ΔCE at the held-out peak: " + "; ".join(f"{_short(r['language'])} {_iv(r, 'specificity_diff')}" for r in rows)
    control = "own ΔCE vs k random live features: " + "; ".join(
        f"{_short(r['language'])} {_iv(r, 'self_delta_ce', 'self').value:+.3f} vs {_iv(r, 'random_delta_ce', 'random')}" for r in rows
    )
    return Evidence(f"{verdicts.count(SUPPORTED)}/{len(rows)} languages supported. {numbers}", control, a.figure("figure5.png"), combine(verdicts, "most"))


def own_features_beat_others(a: Artifacts) -> Evidence | None:
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, _ = s5
    verdicts = [interval_verdict(_iv(r, "self_delta_ce", "self"), _iv(r, "other_lang_features_delta_ce", "other_lang_features")) for r in rows]
    numbers = f"{verdicts.count(SUPPORTED)}/{len(rows)} languages supported. own features on own texts: " + "; ".join(f"{_short(r['language'])} {_iv(r, 'self_delta_ce', 'self')}" for r in rows)
    control = "the other languages' same-size feature sets on these texts: " + "; ".join(
        f"{_short(r['language'])} {_iv(r, 'other_lang_features_delta_ce', 'other_lang_features')}" for r in rows
    )
    return Evidence(numbers, control, a.figure("figure5.png"), combine(verdicts, "most"))


def some_synergy(a: Artifacts) -> Evidence | None:
    s5 = _section5(a)
    if s5 is None:
        return None
    rows, meta = s5
    if int(meta.get("top_k", 2)) < 2:
        return Evidence("synergy needs --top-k 2 or more in Section 5", "-", None, INCONCLUSIVE)
    verdicts = [interval_verdict(_iv(r, "synergy")) for r in rows]
    sub = sum(interval_verdict(_iv(r, "synergy"), direction=-1) == SUPPORTED for r in rows)
    numbers = f"synergy > 0 in {verdicts.count(SUPPORTED)}/{len(rows)}, < 0 (sub-additive) in {sub}: " + "; ".join(f"{_short(r['language'])} {_iv(r, 'synergy')}" for r in rows)
    return Evidence(numbers, "none: synergy is a paired difference of the same texts' ΔCEs", a.figure("figure6.png"), combine(verdicts, "some"))


def exclusive_top1(a: Artifacts) -> Evidence | None:
    """At the layer where most held-out peaks lie (else 10), each language's top-1 is in no other top-5."""
    meta = a.json("meta.json")
    if meta is None or "exclusive_top1" not in meta:
        return None
    s5 = _section5(a)
    peaks = [int(r["peak_layer"]) for r in s5[0]] if s5 else []
    layer = max(set(peaks), key=peaks.count) if peaks else 10
    excl = meta["exclusive_top1"].get(str(layer))
    figure = a.figure("features/topk_overlap.png")
    if excl is None:
        return Evidence(f"layer {layer} has no ν results (layers {meta['layers']})", "-", figure, INCONCLUSIVE)
    n, yes = len(excl), sum(excl.values())
    shared = ", ".join(_short(lang) for lang, v in excl.items() if not v) or "none"
    verdict = SUPPORTED if yes == n else NOT_SUPPORTED if yes <= n / 2 else INCONCLUSIVE
    return Evidence(
        f"layer {layer} ({'most common held-out peak' if peaks else 'no Section 5 yet'}): exclusive top-1 for {yes}/{n}; shared: {shared}",
        "by layer: " + ", ".join(f"L{L} {sum(v.values())}/{len(v)}" for L, v in meta["exclusive_top1"].items()),
        figure, verdict,
    )  # fmt: skip


CLAIMS: list[Claim] = [
    Claim("Layer 10 is the dominant language-specificity layer (most languages peak there)", "seed reproduction", "section5", layer10_dominant),
    Claim("Korean and Thai peak at layer 0", "seed reproduction", "section5", korean_thai_layer0),
    Claim("Ablating a language's top features hurts mainly that language (self − others > 0, and beyond random features), for most languages", "paper (Sec. 5)", "section5", hurts_mainly_target),
    Claim("A language's own top features hurt it more than other languages' top features do, for most languages", "METHOD.md (control)", "section5", own_features_beat_others),
    Claim("Some languages show synergy: ablating top-1+2 together hurts more than the sum of each alone", "paper (Fig. 6)", "section5", some_synergy),
    Claim("Each language's top-1 feature is its own (in no other language's top-5) at the dominant layer", "METHOD.md (shared-feature trap)", "nu", exclusive_top1),
    Claim("Vietnamese clusters with EN/ES/FR/PT", "seed reproduction", "interactions", None),
    Claim("Intra-cluster language pairs are sub-additive", "seed reproduction", "cluster-synergy", None),
    Claim("Ablating 2 features at layer 10 collapses QA (EN −41.1 F1, VI −34.8, ZH −28.9) and classification", "seed reproduction", "downstream", None),
    Claim("Arabic is robust to the ablation", "seed reproduction", "downstream", None),
    Claim("The prefix language's top feature stays active on a noun in another language (code-switching)", "paper (Sec. 4)", "code-switching", None),
    Claim("Gated steering switches the output language (paper: 72–97% success at three layers)", "paper (Sec. 6)", "steering", None),
]


def claim_row(claim: Claim, a: Artifacts) -> tuple[Evidence, str]:
    """The claim's evidence and verdict; "not run" when its stage left nothing to read."""
    ev = claim.evidence(a) if claim.evidence is not None else None
    if ev is not None:
        return ev, ev.verdict
    status = a.stage_status(claim.stage)
    if claim.evidence is None and status == "done":
        return Evidence(f"stage {claim.stage} ran; its evidence is not wired into the report yet", "-", None, INCONCLUSIVE), INCONCLUSIVE
    why = f"stage {claim.stage} was {status}" if status in ("skipped", "failed") else f"stage {claim.stage} not run"
    return Evidence(why, "-", None, NOT_RUN), NOT_RUN


# ----------------------------------------------------------------------------- the document


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(a: Artifacts) -> str:
    lines = ["| # | claim | source | evidence from this run | control | figure | verdict |", "|---|---|---|---|---|---|---|"]
    for i, claim in enumerate(CLAIMS, 1):
        ev, verdict = claim_row(claim, a)
        fig = f"[{Path(ev.figure).stem}]({ev.figure})" if ev.figure else "-"
        lines.append(f"| {i} | {_cell(claim.text)} | {claim.source} | {_cell(ev.numbers)} | {_cell(ev.control)} | {fig} | **{verdict}** |")
    return "\n".join(lines)


def verdicts_in(report_text: str) -> list[str]:
    """The verdict column of a REPORT.md's claims table, in claim order."""
    section = report_text.split("\n## Claims\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    return [line.rsplit("**", 2)[-2] for line in rows]


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _toy_build(model_id: str) -> dict | None:
    path = Path(model_id).parent / "build.json"
    return load_json(path) if path.exists() else None


def header(a: Artifacts, run: str) -> list[str]:
    nu_meta, s5 = a.json("meta.json"), a.json("section5_meta.json")
    meta = nu_meta or (s5 or {}).get("config") or {}
    cfg = (nu_meta or {}).get("config", {})
    lines = [f"# Report: {run}", ""]
    build = _toy_build(meta.get("model_id", "")) if meta.get("model_id") else None
    if build is not None or cfg.get("preset") == "toy" or (s5 or {}).get("config", {}).get("preset") == "toy":
        scale = f" (toy build: seed {build.get('seed')}, scale {build.get('scale')})" if build else ""
        lines += [f"> **Toy run.** These are results of a small model trained in this project{scale}, **not of Qwen3-0.6B**. They test the pipeline, not the paper.", ""]
    rows = [
        ("model", meta.get("model_id", "-")), ("SAE release", meta.get("sae_release", "-")),
        ("data (selection)", (nu_meta or {}).get("data_source", "-")), ("data (evaluation)", (s5 or {}).get("eval_source", "-")),
        ("languages", ", ".join((nu_meta or {}).get("languages", []))), ("ν layers", (nu_meta or {}).get("layers", "-")),
        ("ν settings", ", ".join(f"{k} {cfg[k]}" for k in ("weighting", "top_k", "control_pool", "dtype", "seed") if k in cfg) or "-"),
        ("Section 5 settings", ", ".join(f"{k} {s5[k]}" for k in ("mode", "top_k", "random_draws", "n_texts_per_lang", "seed") if k in s5) if s5 else "-"),
        ("bootstrap", f"{s5['bootstrap']['n_boot']} resamples, {s5['bootstrap']['resampling']}" if s5 else "-"),
        ("versions", ", ".join(f"{k} {v}" for k, v in ((nu_meta or s5 or {}).get("versions") or package_versions()).items())),
        ("code (git commit)", git_commit()), ("report written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]  # fmt: skip
    lines += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
    timings = a.json("pipeline_timings.json")
    if timings:
        lines += ["**Timings** (latest run of each stage by `run_pipeline.py`)", "", "| stage | status | wall s | computed | cached | unit |", "|---|---|---|---|---|---|"]
        for r in timings["stages"]:
            lines.append(f"| {r['stage']} | {r['status']} | {r['wall_s']:.1f} | {r.get('computed', '-')} | {r.get('cached', '-')} | {r.get('unit', '-')} |")
        lines.append("")
    return lines


def data_section(a: Artifacts) -> list[str]:
    checks = a.json("data_checks.json")
    if checks is None:
        return ["## Data checks", "", "Not run (`python check_data.py`).", ""]
    lines = ["## Data checks", "", f"Overall: **{checks['status']}** (details in `data_checks.json`).", "", "| check | status | summary |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {_cell(c['summary'])} |" for c in checks["checks"]]
    return lines + [""]


def _img(a: Artifacts, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""] if a.figure(name) else []


def nu_section(a: Artifacts) -> list[str]:
    meta = a.json("meta.json")
    if meta is None:
        return ["## Stage 1: ν-scores", "", "Not run (`python compute_nu_scores.py`).", ""]
    lines = ["## Stage 1: ν-scores", "", f"{len(meta['layers'])} layers, d_sae {meta.get('d_sae')}, position 0 {meta.get('position_0', '')}.", ""]
    lines += ["| layer | languages with an exclusive top-1 | top-5 features shared with another language, per language |", "|---|---|---|"]
    for L in meta["layers"]:
        excl, shared = meta["exclusive_top1"][str(L)], meta["shared_top5"][str(L)]
        lines.append(f"| {L} | {sum(excl.values())}/{len(excl)} | {', '.join(f'{_short(k)} {v}' for k, v in shared.items())} |")
    lines.append("")
    figs = sorted(p.name for p in (a.output_dir / "features").glob("*.png")) if (a.output_dir / "features").exists() else []
    for name in [n for n in figs if n.startswith("figure1")] + ["topk_overlap.png", "top1_nu_by_layer.png"] + [n for n in figs if n.startswith("specificity")]:
        lines += _img(a, f"features/{name}", name.removesuffix(".png"))
    if a.figure("features/top_features.md"):
        lines += ["Top features per layer and language, with Neuronpedia links: [features/top_features.md](features/top_features.md)", ""]
    return lines


def section5_section(a: Artifacts) -> list[str]:
    s5 = _section5(a)
    if s5 is None:
        return ["## Stage 2: Section 5 (ΔCE)", "", "Not run (`python reproduce_figures_section5.py`).", ""]
    rows, meta = s5
    lines = ["## Stage 2: Section 5 (ΔCE)", "", f"{meta['mode']} ablation, {meta['n_texts_per_lang']} evaluation texts per language, layers {meta['layers']}. {meta['peak_rule']}.", ""]
    lines += _img(a, "figure5.png", "Figure 5") + _img(a, "figure6.png", "Figure 6")
    lines += ["| language | held-out peak (share) | self ΔCE [95% CI] | self − others [95% CI] | synergy [95% CI] | random k [95% CI] | other languages' features | shared top-k with |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['language']} | {r['peak_layer']} ({_f(r, 'modal_peak_share'):.2f}) | {_iv(r, 'self_delta_ce', 'self')} | {_iv(r, 'specificity_diff')} | "
            f"{_iv(r, 'synergy')} | {_iv(r, 'random_delta_ce', 'random')} | {_iv(r, 'other_lang_features_delta_ce', 'other_lang_features')} | {r['shared_with'] or '-'} |"
        )
    return lines + [""]


def build_report(features_dir: Path, output_dir: Path, run: str | None = None) -> str:
    a = Artifacts(features_dir, output_dir)
    run = run or Path(output_dir).name
    lines = header(a, run)
    lines += ["## Claims", "", VERDICT_RULE, "", claims_table(a), ""]
    lines += data_section(a) + nu_section(a) + section5_section(a)
    later = sorted({c.stage for c in CLAIMS} - {"nu", "section5"})
    lines += ["## Later stages", ""] + [f"- {s}: {a.stage_status(s) or 'not run'}" for s in later] + [""]
    return "\n".join(lines)


def write_report(features_dir: Path, output_dir: Path, run: str | None = None) -> Path:
    """Build REPORT.md from the run's artifacts and write it atomically to output_dir."""
    path = Path(output_dir) / REPORT_NAME
    save_text(build_report(features_dir, output_dir, run), path)
    return path


# ----------------------------------------------------------------------------- README block

README_START, README_END = "<!-- toy-report:start -->", "<!-- toy-report:end -->"


def readme_block(report_text: str, report_link: str) -> str:
    """The claims of a toy REPORT.md for the README: its banner and claims table, with figure
    links made relative to the project root."""
    body = report_text.split("\n## Claims\n", 1)
    if len(body) != 2:
        raise ValueError("the report has no claims section")
    claims = body[1].split("\n## ", 1)[0].strip()
    claims = claims.split("\n\n", 1)[1] if claims.startswith("**Verdict rule.**") else claims  # the rule is in the report
    base = str(Path(report_link).parent)
    claims = re.sub(r"\]\((?!https?:)([^)]+)\)", lambda m: f"]({base}/{m.group(1)})", claims)
    banner = next((line for line in report_text.splitlines() if line.startswith("> ")), "")
    written = next((line for line in report_text.splitlines() if line.startswith("| report written")), "")
    return "\n".join([f"Generated by `python -m langsae.report --readme` from [{report_link}]({report_link}) ({written.split('|')[2].strip() if written else 'undated'}); the verdict rule is stated there.", "", banner, "", claims])


def update_readme(readme: Path, report: Path, report_link: str) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: {readme} has no {README_START} ... {README_END} markers")
    start, rest = text.split(README_START, 1)
    _, end = rest.split(README_END, 1)
    save_text(f"{start}{README_START}\n{readme_block(report.read_text(), report_link)}\n{README_END}{end}", readme)


def main(argv: list[str] | None = None) -> int:
    from langsae.config import OUTPUT_ROOT, PROJECT_ROOT, build_parser, resolve

    p = build_parser(__doc__.split("\n\n")[0])
    p.add_argument("--readme", action="store_true", help="replace README.md's toy results block with the claims of output/<run>/REPORT.md (default run: toy)")
    argv = sys.argv[1:] if argv is None else argv
    if "--readme" in argv and "--model" not in argv:
        argv = [*argv, "--model", "toy"]
    args = p.parse_args(argv)
    cfg = resolve(args)
    if args.readme:
        report = OUTPUT_ROOT / cfg.run_name / REPORT_NAME
        if not report.exists():
            print(f"error: no {report}; run `python run_pipeline.py --model {cfg.preset.name}` first", file=sys.stderr)
            return 2
        update_readme(PROJECT_ROOT / "README.md", report, str(report.relative_to(PROJECT_ROOT)))
        print(f"README.md: toy results block rebuilt from {report}")
        return 0
    print(write_report(cfg.features_dir, cfg.output_dir, cfg.run_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
