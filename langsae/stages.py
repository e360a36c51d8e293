"""The stage protocol: what every stage script's `main(argv)` promises to `run_pipeline.py`.

A stage is a script with `main(argv)` that takes the common flags of `config.build_parser`
(plus its own, with defaults) and returns None or a work record, `work(computed, cached, unit)`:
how many units of its work (layers, conditions, figures, ...) it computed now and how many it
found cached. A stage ends with `finished(cfg, ...)`, which rebuilds the run's REPORT.md from
its artifacts, so the report is current after any stage, in the pipeline or run alone. It
raises `errors.UserError` to stop the pipeline with one line, or `errors.SkippedTask` when it
cannot run here but the stages after it can.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, TypedDict

log = logging.getLogger(__name__)


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
        log.warning("REPORT.md not rebuilt (%s: %s); retry with `%s`", type(e).__name__, e, stage_command("-m langsae.report", cfg))


def finished(cfg, computed: int, cached: int, unit: str) -> Work:
    """A stage's last step: rebuild the run's REPORT.md, then return its work record."""
    rebuild_report(cfg)
    return work(computed, cached, unit)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its name on the command line, its script, its `main`, the
    stage-specific flags the pipeline always passes it (after the common ones), and the common
    flags (each with its value) it does not pass it: such a stage keeps its own rule for them
    (say, the layer it ablates at) unless its script is run with them directly."""

    name: str
    script: str
    main: Callable[[list[str] | None], Work | None]
    flags: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()
