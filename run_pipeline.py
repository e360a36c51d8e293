"""Run every stage in order with the same common flags, then write output/<run>/REPORT.md.

    python run_pipeline.py --model toy                   # offline, minutes on a laptop CPU
    python run_pipeline.py                               # Qwen3-0.6B, needs the model and transcoders
    python run_pipeline.py --model toy --from section5   # resume at a stage
    python run_pipeline.py --model toy --stages nu,plots # only these stages

Each stage skips work it has already cached, so rerunning resumes. Stage-specific flags
(e.g. --mode of the Section 5 stage) are set by running that stage's script directly; the
pipeline passes every stage the common flags (plus the few a stage always needs in a
pipeline, `Stage.flags`), except those a stage drops (`Stage.drops`). --layers is the layers
to analyse: check-data ignores it; nu, section5, interactions, cluster-synergy, code-switching
and plots analyse those layers; downstream and steering never get it from the pipeline and
keep their own layer rule (downstream: the preset's downstream layer, else the Section 5
held-out peak; steering: the preset's steering layer, else its downstream layer), since at
every layer they would repeat each condition per layer; to ablate or steer at other layers,
run downstream_ablation.py or steer_language.py with --layers. A stage that
cannot run here (e.g. a downstream dataset that is not cached offline) is recorded as
skipped and the pipeline goes on; any other failure, a crash included, stops it with one
line and the command that resumes. The per-stage table (wall time, computed vs cached work)
is printed at the end and kept in sae_features/<run>/pipeline_timings.json, and the report
is rebuilt after every stage. Under torchrun (`torchrun --nproc-per-node N run_pipeline.py ...`) the
units of every stage that has them are split among the ranks, and rank 0 alone writes the aggregates,
the timings and the report (docs/stages.md, "Many processes (torchrun)").
"""

from __future__ import annotations

import logging
import shlex
import sys
import time

from langsae import distributed, report
from langsae.artifacts import load_json, save_json
from langsae.cli import run_main
from langsae.config import build_parser, resolve
from langsae.errors import SkippedTask, UserError
from langsae.stages import TIMINGS_FILE, Stage, rebuild_report, registry

STAGES = registry()  # the pipeline, in order: langsae.stages.STAGE_MODULES
PIPELINE_FLAGS = ("--stages", "--from")
# the stages whose units are split among torchrun's ranks (langsae.distributed); the others run on rank 0
SHARDED = ("nu", "section5", "interactions", "cluster-synergy", "code-switching", "downstream", "steering")
log = logging.getLogger("run_pipeline")


def parse_args(argv):
    p = build_parser(__doc__)
    dropped = ", ".join(s.name for s in STAGES if "--layers" in s.drops)
    about = f"--layers: the layers to analyse; {dropped} do not get it and keep their own layer rule"
    g = p.add_argument_group("pipeline", about + " (run their script with --layers to choose)")
    names = ", ".join(s.name for s in STAGES)
    g.add_argument(
        "--stages", help=f"comma-separated stages to run, in pipeline order (default all): {names}"
    )
    g.add_argument(
        "--from", dest="from_stage", metavar="STAGE", help=f"start at this stage and run the rest: {names}"
    )
    return p.parse_args(argv)


def without_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv without `flags` and their values (`--flag value` or `--flag=value`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def stage_argv(argv: list[str]) -> list[str]:
    """The command line without the pipeline's own flags: what every stage receives (less its `drops`)."""
    return without_flags(argv, PIPELINE_FLAGS)


def select_stages(stages: list[Stage], only: str | None, start: str | None) -> list[Stage]:
    """The stages to run: `only` (comma-separated names) and/or those from `start` on, in pipeline order."""
    names = [s.name for s in stages]
    wanted = set(names)
    if only:
        asked = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in asked if n not in names]
        if unknown or not asked:
            raise UserError(
                f"--stages: unknown stage {unknown[0] if unknown else '(none given)'!r}; "
                f"choose from {', '.join(names)}"
            )
        wanted = set(asked)
    if start:
        if start not in names:
            raise UserError(f"--from: unknown stage {start!r}; choose from {', '.join(names)}")
        wanted &= set(names[names.index(start) :])
    return [s for s in stages if s.name in wanted]


def format_table(rows: list[dict]) -> str:
    """The per-stage table: status, wall time, and computed vs cached work."""
    head = f"{'stage':<16}{'status':<10}{'wall s':>9}{'computed':>10}{'cached':>8}  unit"
    lines = [head, "-" * len(head)]
    for r in rows:
        computed = "" if r.get("computed") is None else r["computed"]
        cached = "" if r.get("cached") is None else r["cached"]
        lines.append(
            f"{r['stage']:<16}{r['status']:<10}{r['wall_s']:>9.1f}{computed:>10}{cached:>8}  "
            f"{r.get('unit') or ''}"
        )
        if r.get("note"):
            lines.append(f"{'':<16}{r['note']}")
    return "\n".join(lines)


def record(features_dir, row: dict) -> None:
    """Keep each stage's latest row in sae_features/<run>/pipeline_timings.json (the report's timings)."""
    path = features_dir / TIMINGS_FILE
    rows = {r["stage"]: r for r in (load_json(path)["stages"] if path.exists() else [])}
    rows[row["stage"]] = row
    order = [s.name for s in STAGES]
    ordered = sorted(
        rows.values(), key=lambda r: order.index(r["stage"]) if r["stage"] in order else len(order)
    )
    save_json({"stages": ordered}, path)


def run_stage(stage: Stage, argv: list[str]):
    """The stage's work record. Under torchrun (langsae.distributed) a stage whose units are split runs on
    every rank; any other runs on rank 0 alone while the other ranks wait."""
    if stage.name in SHARDED or not distributed.is_distributed():
        try:
            return stage.main(argv)
        finally:
            distributed.release()  # rank 0, had the stage stopped between its share and `finished`
    return distributed.main_only(lambda: stage.main(argv))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)  # --help, and bad flags fail before any stage
    cfg = resolve(args)
    todo = select_stages(STAGES, args.stages, args.from_stage)
    passed = stage_argv(argv)
    rows = []
    for i, stage in enumerate(todo, 1):
        log.info("stage %d/%d: %s (%s)", i, len(todo), stage.name, stage.script)
        t0 = time.perf_counter()
        row = {"stage": stage.name, "script": stage.script, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        failure = None
        try:
            own = without_flags(passed, stage.drops)
            if own != passed:
                dropped = " ".join(stage.drops)
                log.info("%s keeps its own %s (set by running %s)", stage.name, dropped, stage.script)
            done = run_stage(stage, [*own, *stage.flags]) or {}
            row.update(status="done", **done)
        except SkippedTask as e:
            row.update(status="skipped", note=str(e))
        except UserError as e:
            row.update(status="failed", note=str(e))
            failure = e
        except SystemExit as e:  # a stage's own argparse rejected a flag (it has printed why)
            if not e.code:
                row.update(status="done")
            else:
                row.update(status="failed", note=f"{stage.script} rejected its arguments (exit {e.code})")
                failure = e
        except Exception as e:  # a bug or a crash: keep the traceback, and still say how to resume
            log.exception("stage %s crashed", stage.name)
            row.update(status="failed", note=f"{type(e).__name__}: {e}")
            failure = e
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if distributed.is_main():  # under torchrun rank 0 alone keeps the timings and the report
            record(cfg.features_dir, row)
            rebuild_report(cfg)  # again: the stage's row in the timings is part of the report
        if failure is not None:
            print(format_table(rows))
            resume = shlex.join(
                [
                    "python",
                    "run_pipeline.py",
                    *passed,
                    *(["--stages", args.stages] if args.stages else []),
                    "--from",
                    stage.name,
                ]
            )
            raise UserError(
                f"stage {stage.name} failed: {row['note']}; after fixing it, resume with `{resume}`"
            ) from failure
    print(format_table(rows))
    print(f"report: {cfg.output_dir / report.REPORT_NAME}")


if __name__ == "__main__":
    sys.exit(run_main(main))
