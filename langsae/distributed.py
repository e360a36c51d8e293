"""Data parallel under torchrun: each rank computes a deterministic share of a stage's units, then rank 0
alone aggregates.

    torchrun --nproc-per-node N compute_nu_scores.py ...     (docs/stages.md, "Many processes (torchrun)")

torchrun starts N copies of the stage and tells each its place in the environment (RANK, WORLD_SIZE,
LOCAL_RANK). A stage claims its units (langsae.units) with `share=rank_share`: rank r tries units[r::n] of
the stage's full, fixed unit list, so the split does not depend on what is already done or on timing.
Every rank writes into the same on-disk stores. Then a stage's one guard,

    if distributed.after_share():
        return work(...)

waits for every rank's share; rank 0 (`is_main()`) goes on, reads every unit back and writes the
aggregates, figures, metas and the report, while the other ranks wait until it reaches
`stages.finished` (`release()`), so that the next stage finds what it wrote. Counts of work are
summed over the ranks (`total`, `gathered`), so that they too equal one process's.
A rank that dies leaves only whole units behind (every unit is saved atomically), and torchrun stops
the others; rerunning the same command computes only what is missing.

Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op: the share is every unit,
barrier() returns at once and this process is the main one.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from langsae.errors import UserError

T = TypeVar("T")
# A barrier waits for the slowest rank's share: a long stage on a big model can take many hours.
TIMEOUT = datetime.timedelta(hours=48)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    """Whether this process is one of several ranks started by torchrun."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this process writes what is shared by all ranks (aggregates, figures, metas, report)."""
    return rank() == 0


def rank_share(units: Sequence[T]) -> Sequence[T]:
    """This rank's units: units[rank::world] (every unit without torchrun). The `share` of langsae.units."""
    return units[rank() :: world_size()] if is_distributed() else units


def setup(device: str) -> str:
    """The device of this rank, and the process group joined once (gloo on CPU, nccl on CUDA).
    A bare "cuda" becomes this rank's GPU, cuda:LOCAL_RANK, so that the ranks of a node use its N GPUs."""
    if not is_distributed():
        return device
    if device == "cuda":
        device = f"cuda:{local_rank()}"
    if not torch.distributed.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            index, n_gpus = torch.device(device).index or 0, torch.cuda.device_count()
            if index >= n_gpus:
                raise UserError(
                    f"torchrun rank {rank()} would use {device}, but this node shows {n_gpus} GPU(s): "
                    "give --nproc-per-node at most that many, or --device"
                )
            torch.cuda.set_device(index)  # nccl's collectives run on the current device
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device


def barrier() -> None:
    """Wait until every rank gets here (a no-op without torchrun)."""
    if is_distributed():
        _group()
        torch.distributed.barrier()


def _group() -> None:
    """Join the process group if no stage did (a caller that never resolved a device): gloo."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=TIMEOUT)


def gathered(items: list[T]) -> list[T]:
    """Every rank's `items`, concatenated in rank order (every rank must call this; `items` itself
    without torchrun): what the ranks computed, so that work records and counts in artifacts are the
    whole stage's, as in one process."""
    if not is_distributed():
        return list(items)
    _group()
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def total(n: int) -> int:
    """The sum of `n` over the ranks (every rank must call this; `n` itself without torchrun)."""
    return sum(gathered([n]))


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank (every rank must call this; `flag` itself without torchrun)."""
    return any(gathered([bool(flag)]))


def main_first(fn: Callable[[], T]) -> T:
    """fn() on rank 0, then on the other ranks once it returned: for a step every rank needs whose
    results are cached on disk (the others then read them instead of computing them again)."""
    if is_main():
        out = fn()
        barrier()
        return out
    barrier()
    return fn()


def after_share() -> bool:
    """A stage's guard between its units and its aggregation: wait for every rank's share, then True on
    the ranks other than 0, which return their work record there once rank 0 has written what follows
    (its aggregates, figures, meta and report: the next stage reads them) and reached stages.finished."""
    global _held
    barrier()
    if is_main():
        _held = is_distributed()
        return False
    barrier()  # the one in release(), called by stages.finished on rank 0
    return True


_held = False  # rank 0 between after_share() and release(): the other ranks wait for it


def release() -> None:
    """Rank 0, once its stage's shared outputs are written: let the ranks held in after_share() go on.
    A no-op when none are held (without torchrun, on the other ranks, or in a stage that is not split)."""
    global _held
    if _held:
        _held = False
        barrier()


def main_only(fn: Callable[[], T]) -> T | None:
    """fn() on rank 0 alone, the other ranks waiting until it returned (they get None): for a stage whose
    work is not split into units (run_pipeline.py runs check-data and plots so under torchrun)."""
    try:
        return fn() if is_main() else None
    finally:
        barrier()
