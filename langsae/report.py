"""output/<run>/REPORT.md: every claim next to its evidence, built from a run's artifacts alone.

`write_report(features_dir, output_dir)` can be called by any stage (every stage does when it
ends); it reads only files the stages wrote and never loads a model. It knows no stage's files:
each stage module (langsae/stages/) brings its claims, its report section, its meta file and the
rows it adds to the run's table at the top. A claim is a sentence, where it comes from, and a
function from the run's artifacts to `Evidence` (numbers with CIs, the control next to them,
the figure, a verdict by `verdicts.VERDICT_RULE`), or None when its stage has not run, in which
case its row says "not run".

    python -m langsae.report --model toy      # rebuild output/toy/REPORT.md
    python -m langsae.report --readme         # README's toy results block from output/toy/REPORT.md
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from langsae.artifacts import package_versions, read_json, save_text
from langsae.errors import CorruptArtifact
from langsae.stages import TIMINGS_FILE, Stage, registry
from langsae.verdicts import NOT_RUN, VERDICT_RULE, Artifacts, Claim, Evidence, cell

REPORT_NAME = "REPORT.md"


# ----------------------------------------------------------------------------- the claims


def claim_row(claim: Claim, stage: str, a: Artifacts) -> tuple[Evidence, str]:
    """The claim's evidence and verdict; "not run" when its stage left nothing to read."""
    a.corrupt.clear()
    ev = claim.evidence(a)
    if ev is not None:
        return ev, ev.verdict
    damaged = a.damaged()
    status = a.stage_status(stage)
    why = f"stage {stage} was {status}" if status in ("skipped", "failed") else f"stage {stage} not run"
    why = f"unreadable: {damaged}; rerun stage {stage}" if damaged else why
    return Evidence(why, "-", None, NOT_RUN), NOT_RUN


def claims(stages: list[Stage] | None = None) -> list[tuple[str, Claim]]:
    """(stage name, claim) of every stage's claims, in the order of their numbers."""
    owned = [(s.name, c) for s in (registry() if stages is None else stages) for c in s.claims]
    return sorted(owned, key=lambda sc: sc[1].number)


def claims_table(a: Artifacts, stages: list[Stage]) -> str:
    """Every stage's claims, in the order of their numbers."""
    lines = [
        "| # | claim | source | evidence from this run | control | figure | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, claim in claims(stages):
        n = claim.number
        ev, verdict = claim_row(claim, stage, a)
        fig = f"[figure]({ev.figure})" if ev.figure else "-"  # the row stays short; the name is in the link
        lines.append(
            f"| {n} | {cell(claim.text)} | {claim.source} | {cell(ev.numbers)} | {cell(ev.control)} "
            f"| {fig} | **{verdict}** |"
        )
    return "\n".join(lines)


def verdicts_in(report_text: str) -> list[str]:
    """The verdict column of a REPORT.md's claims table, in claim order."""
    section = report_text.split("\n## Claims\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ]
    return [line.rsplit("**", 2)[-2] for line in rows]


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _toy_build(model_id: str) -> dict | None:
    path = Path(model_id).parent / "build.json"
    try:
        return read_json(path, "-") if path.exists() else None
    except CorruptArtifact:  # the header then shows no build record, as for a toy built elsewhere
        return None


def stage_metas(a: Artifacts, stages: list[Stage]) -> list[dict]:
    """The meta records the run's stages left, in pipeline order."""
    return [m for m in (a.json(s.meta) for s in stages if s.meta) if m]


def model_identity_of(meta: dict) -> dict:
    """Model, SAE release and preset of a stage's meta (the ν stage keeps them at its top level)."""
    return {**meta.get("config", {}), **{k: meta[k] for k in ("model_id", "sae_release") if k in meta}}


def header(a: Artifacts, run: str, stages: list[Stage]) -> list[str]:
    """The run's title, the toy banner, one table of what made the run (model and SAE, each stage's
    own rows by its `header`, versions, code), and the pipeline's timings."""
    metas = stage_metas(a, stages)
    models = [model_identity_of(m) for m in metas]
    model = next((m for m in models if m.get("model_id")), {})
    lines = [f"# Report: {run}", ""]
    build = _toy_build(model["model_id"]) if model.get("model_id") else None
    if build is not None or any(m.get("preset") == "toy" for m in models):
        scale = f" (toy build: seed {build.get('seed')}, scale {build.get('scale')})" if build else ""
        lines += [
            f"> **Toy run.** These are results of a small model trained in this project{scale}, "
            "**not of Qwen3-0.6B**. They test the pipeline, not the paper.",
            "",
        ]
    rows = [("model", model.get("model_id", "-")), ("SAE release", model.get("sae_release", "-"))]
    rows += [row for s in stages if s.header for row in s.header(a)]
    versions = next((m["versions"] for m in metas if m.get("versions")), None) or package_versions()
    rows += [
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("code (git commit)", git_commit()),
        ("report written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {cell(v)} |" for k, v in rows] + [""]
    timings = a.json(TIMINGS_FILE)
    if timings:
        lines += [
            "**Timings** (latest run of each stage by `run_pipeline.py`)",
            "",
            "| stage | status | wall s | computed | cached | unit |",
            "|---|---|---|---|---|---|",
        ]
        for r in timings["stages"]:
            lines.append(
                f"| {r['stage']} | {r['status']} | {r['wall_s']:.1f} | {r.get('computed', '-')} "
                f"| {r.get('cached', '-')} | {r.get('unit', '-')} |"
            )
        lines.append("")
    return lines


def build_report(features_dir: Path, output_dir: Path, run: str | None = None) -> str:
    a = Artifacts(features_dir, output_dir)
    stages = registry()
    run = run or Path(output_dir).name
    lines = header(a, run, stages)
    lines += ["## Claims", "", VERDICT_RULE, "", claims_table(a, stages), ""]
    for stage in stages:
        if stage.report:
            a.corrupt.clear()  # each section names only the unreadable files it read itself
            lines += stage.report(a)
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
    claims = (
        claims.split("\n\n", 1)[1] if claims.startswith("**Verdict rule.**") else claims
    )  # the rule is in the report
    base = str(Path(report_link).parent)
    claims = re.sub(r"\]\((?!https?:)([^)]+)\)", lambda m: f"]({base}/{m.group(1)})", claims)
    banner = next((line for line in report_text.splitlines() if line.startswith("> ")), "")
    written = next((line for line in report_text.splitlines() if line.startswith("| report written")), "")
    when = written.split("|")[2].strip() if written else "undated"
    return "\n".join(
        [
            f"Generated by `python -m langsae.report --readme` from [{report_link}]({report_link}) ({when}); "
            "the verdict rule is stated there.",
            "",
            banner,
            "",
            claims,
        ]
    )


def replace_marked(readme: Path, start_marker: str, end_marker: str, block: str) -> None:
    """Put `block` between the two markers of `readme`, leaving the rest as it is (generated parts)."""
    text = readme.read_text()
    if start_marker not in text or end_marker not in text:
        raise SystemExit(f"error: {readme} has no {start_marker} ... {end_marker} markers")
    start, rest = text.split(start_marker, 1)
    _, end = rest.split(end_marker, 1)
    save_text(f"{start}{start_marker}\n{block}\n{end_marker}{end}", readme)


def update_readme(readme: Path, report: Path, report_link: str) -> None:
    replace_marked(readme, README_START, README_END, readme_block(report.read_text(), report_link))


def main(argv: list[str] | None = None) -> int:
    from langsae.config import MODEL_FLAGS, PROJECT_ROOT, build_parser, resolve

    # the report reads the run's files, whatever settings made them
    unread = (
        "--languages",
        "--layers",
        "--n-texts-per-lang",
        "--split",
        *MODEL_FLAGS,
    )
    p = build_parser(__doc__.split("\n\n")[0], ignored=(*unread, "--seed", "--force"))
    p.add_argument(
        "--readme",
        action="store_true",
        help="replace README.md's toy results block with the claims of output/<run>/REPORT.md "
        "(default run: toy)",
    )
    argv = sys.argv[1:] if argv is None else argv
    if "--readme" in argv and "--model" not in argv:
        argv = [*argv, "--model", "toy"]
    args = p.parse_args(argv)
    cfg = resolve(args)
    if args.readme:
        report = cfg.output_dir / REPORT_NAME  # where the run's stages wrote it (--out-dir, --figures-dir)
        if not report.exists():
            print(
                f"error: no {report}; run `python run_pipeline.py --model {cfg.preset.name}` first",
                file=sys.stderr,
            )
            return 2
        update_readme(PROJECT_ROOT / "README.md", report, os.path.relpath(report.resolve(), PROJECT_ROOT))
        print(f"README.md: toy results block rebuilt from {report}")
        return 0
    print(write_report(cfg.features_dir, cfg.output_dir, cfg.run_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
