"""The stages: one module each in this package, and the protocol they share.

A stage module (`langsae/stages/<name>.py`) owns everything about its stage:
  - its flags (`parse_args`) and its run (`main(argv)`), which the root script of the same stage
    (the name users know, e.g. `steer_language.py`) only calls;
  - its meta record, written through `write_meta`;
  - its claims (`verdicts.Claim`, numbered as in the report) and its report section (a function
    from the run's `verdicts.Artifacts` to Markdown lines);
  - and, last in the module, `STAGE = Stage(...)`, which ties these together.
Its artifact names are constants in the stage's library module (the layer below, e.g.
`langsae/steer_eval.py`), so that a later stage reads them without importing this stage's module.

`main(argv)` takes the common flags of `config.build_parser` (plus its own, with defaults) and
returns None or a work record, `work(computed, cached, unit)`: how many units of its work
(layers, conditions, figures, ...) it computed now and how many it found cached. It ends with
`finished(cfg, ...)`, which rebuilds the run's REPORT.md from its artifacts, so the report is
current after any stage, in the pipeline or run alone. It raises `errors.UserError` to stop the
pipeline with one line, or `errors.SkippedTask` when it cannot run here but the stages after it can.

Adding a stage is one module here plus one line in `STAGE_MODULES` (docs/development.md).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypedDict

if TYPE_CHECKING:
    from langsae.verdicts import Artifacts, Claim

log = logging.getLogger(__name__)

TIMINGS_FILE = "pipeline_timings.json"  # run_pipeline.py's latest row per stage, which the report shows

# The pipeline, in order: one line per stage, the module's name in this package.
STAGE_MODULES = (
    "check_data",
    "nu",
    "section5",
    "interactions",
    "cluster_synergy",
    "downstream",
    "code_switching",
    "steering",
    "plots",
)


class Work(TypedDict):
    """What a stage did: `computed` units now, `cached` units reused from an earlier run."""

    computed: int
    cached: int
    unit: str


def work(computed: int, cached: int, unit: str) -> Work:
    if computed < 0 or cached < 0:
        raise ValueError(f"work counts must be non-negative, got computed={computed} cached={cached}")
    return {"computed": int(computed), "cached": int(cached), "unit": unit}


def rebuild_report(cfg) -> None:
    """Rebuild output/<run>/REPORT.md from the run's artifacts (cfg: config.RunConfig). The report
    is a view of results already saved, so a failure here is a warning with the command that
    retries it, not a failed stage."""
    from langsae import report  # the report reads every stage's artifacts; imported when a stage ends
    from langsae.features import stage_command

    try:
        log.info("report rebuilt: %s", report.write_report(cfg.features_dir, cfg.output_dir))
    except Exception as e:  # noqa: BLE001 - any artifact the report cannot read
        retry = stage_command("-m langsae.report", cfg)
        log.warning("REPORT.md not rebuilt (%s: %s); retry with `%s`", type(e).__name__, e, retry)


def finished(cfg, computed: int, cached: int, unit: str) -> Work:
    """A stage's last step: rebuild the run's REPORT.md, then return its work record. Under torchrun
    rank 0 alone rebuilds it, then lets the other ranks go on (they wait in distributed.after_share)."""
    from langsae import distributed

    if distributed.is_main():
        rebuild_report(cfg)
    distributed.release()
    return work(computed, cached, unit)


def write_meta(path: Path, cfg, stage: str, settings: dict, figures: Sequence, **extra) -> dict:
    """A stage's `*_meta.json`: which stage, with which settings and run configuration, made the
    artifacts next to it; then the stage's own fields (`extra`, in order), its figures and the
    package versions. Returns the record written."""
    from langsae.artifacts import package_versions, save_json

    meta = {
        "stage": stage,
        "settings": settings,
        "config": cfg.describe(),
        **extra,
        "figures": [str(f) for f in figures],
        "versions": package_versions(),
    }
    save_json(meta, path)
    return meta


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    name     its one name: command line, logs, files, report and docs
    script   the root script that runs it alone
    section  the paper's section it reproduces or extends, as a label
    main     `main(argv)`, per the protocol above
    claims   the report's claims this stage's artifacts answer
    report   its REPORT.md section: the run's Artifacts -> Markdown lines
    meta     its meta file in sae_features/<run>/ (the report's header reads model and versions there)
    header   its rows in the report's table of what made the run: Artifacts -> [(label, text)]
    flags    stage-specific flags the pipeline always passes it (after the common ones)
    drops    common flags the pipeline does not pass it: the stage keeps its own rule for them
             (say, the layer it ablates at) unless its script is run with them directly
    """

    name: str
    script: str
    section: str
    main: Callable[[list[str] | None], Work | None]
    claims: tuple[Claim, ...] = ()
    report: Callable[[Artifacts], list[str]] | None = None
    meta: str | None = None
    header: Callable[[Artifacts], list[tuple[str, str]]] | None = None
    flags: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()


def registry() -> list[Stage]:
    """Every stage, in pipeline order (each module's `STAGE`; imported on first call)."""
    return [importlib.import_module(f"{__name__}.{m}").STAGE for m in STAGE_MODULES]
