"""The stage protocol: what every stage script's `main(argv)` promises to `run_pipeline.py`.

A stage is a script with `main(argv)` that takes the common flags of `config.build_parser`
(plus its own, with defaults) and returns None or a work record, `work(computed, cached, unit)`:
how many units of its work (layers, conditions, figures, ...) it computed now and how many it
found cached. It raises `errors.UserError` to stop the pipeline with one line, or
`errors.SkippedTask` when it cannot run here but the stages after it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypedDict


class Work(TypedDict):
    """What a stage did: `computed` units now, `cached` units reused from an earlier run."""

    computed: int
    cached: int
    unit: str


def work(computed: int, cached: int, unit: str) -> Work:
    if computed < 0 or cached < 0:
        raise ValueError(f"work counts must be non-negative, got computed={computed} cached={cached}")
    return {"computed": int(computed), "cached": int(cached), "unit": unit}


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: its name on the command line, its script, its `main`, and the
    stage-specific flags the pipeline always passes it (after the common ones)."""

    name: str
    script: str
    main: Callable[[list[str] | None], Work | None]
    flags: tuple[str, ...] = ()
