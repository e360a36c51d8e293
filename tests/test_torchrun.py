"""Data parallel under torchrun (langsae.distributed), offline on CPU with the gloo backend: the ν stage
and the feature figures (through run_pipeline.py), Section 5, downstream and steering on the small toy
(tests/torchrun_driver.py), run by two ranks, write every artifact byte for byte as one process does
(metas apart from volatile fields, PDFs apart from their creation date, the pipeline's timings apart
from wall seconds); a rank killed midway leaves only whole units, and rerunning the same command
finishes the rest with the same bytes (the rerun's timings then count the units it found cached).

Both runs write into the same folder path (the reference is moved aside first), since the metas record
their figures' absolute paths.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import same_artifacts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "torchrun_driver.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(run: Path, log: Path, ranks: int, exit_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = TORCHRUN if ranks > 1 else [sys.executable]
    cmd = [*launcher, str(DRIVER), str(run), str(log), str(exit_after)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _written(log: Path, rank: int) -> list[str]:
    """The unit files rank `rank` logged (tests/torchrun_driver.py)."""
    path = Path(f"{log}.{rank}")
    return path.read_text().split() if path.exists() else []


REPORT = "figures/REPORT.md"
TIMINGS_ROW = re.compile(r"^(\| [a-z0-9-]+ \| (?:done|skipped|failed) \| )[0-9.]+ \|")


def _report_lines(run: Path, killed: bool) -> list[str]:
    """REPORT.md without what differs between any two runs: when and from which commit it was written,
    and the wall seconds of the pipeline's timings (after a kill, its whole rows)."""
    lines = [
        x for x in (run / REPORT).read_text().splitlines() if not x.startswith(same_artifacts.VOLATILE_LINES)
    ]
    return [TIMINGS_ROW.sub(r"\1- |", x) for x in lines if not (killed and TIMINGS_ROW.match(x))]


def _same(a: Path, b: Path, killed: bool = False) -> None:
    """Every file of run b is run a's. After a kill, b may also hold what the killed ranks left beside
    the artifacts: claims (at most one per rank) and the temporary of a write cut short."""
    out = same_artifacts.compare(a, b)
    report = [d for d in out["different"] if d.startswith(f"{REPORT}:")]
    if report:  # its table of run_pipeline.py's timings: wall seconds differ between any two runs
        assert _report_lines(a, killed) == _report_lines(b, killed), report
    timings = "pipeline_timings.json:" if killed else "(none)"
    out["different"] = [d for d in out["different"] if d not in report and not d.startswith(timings)]
    left = re.compile(r"\.claim |/\.[^/]*\.tmp |^\.[^/]*\.tmp ") if killed else re.compile("$^")
    only = [f for f in out["only"] if not left.search(f)]
    assert not out["different"] and not only, out["different"] + only
    assert len(out["same"]) > 50 and len(list(b.rglob("*.claim"))) <= (2 if killed else 0)


@pytest.fixture(scope="module")
def reference(small_toy, tmp_path_factory):
    """One process: its run folder (moved to reference/run), the unit files it wrote, and the path that
    every run of these tests writes to (then moved aside or removed)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    p = _run(tmp / "run", tmp / "written", 1)
    assert p.returncode == 0, p.stderr[-3000:]
    written = _written(tmp / "written", 0)
    assert len(written) == len(set(written)) > 30
    (tmp / "reference").mkdir()
    return (tmp / "run").rename(tmp / "reference" / "run"), written, tmp / "run"


@pytest.fixture
def run(reference):
    """The path the reference was written to (the metas record their figures' absolute paths), removed
    after the test."""
    path = reference[2]
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_two_ranks_write_the_bytes_of_one_process(reference, run, tmp_path):
    ref_run, ref_written, _ = reference
    p = _run(run, tmp_path / "written", 2)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = (_written(tmp_path / "written", r) for r in range(2))
    assert a and b and not set(a) & set(b), "each unit is computed by exactly one rank"
    assert sorted(a + b) == sorted(ref_written)
    _same(ref_run, run)


def test_a_rank_killed_midway_then_a_rerun_gives_the_same_bytes(reference, run, tmp_path):
    ref_run, ref_written, _ = reference
    first, second = tmp_path / "first", tmp_path / "second"
    p = _run(run, first, 2, exit_after=6)  # rank 1 dies after its 6th unit: torchrun stops rank 0
    assert p.returncode != 0
    kept = _written(first, 0) + _written(first, 1)
    assert 6 <= len(kept) < len(ref_written)
    p = _run(run, second, 2)  # the same command again
    assert p.returncode == 0, p.stderr[-3000:]
    again = _written(second, 0) + _written(second, 1)
    assert again and not set(again) & set(kept), "no finished unit is computed again"
    assert set(again) | set(kept) <= set(ref_written)
    _same(ref_run, run, killed=True)


# ----------------------------------------------------------------------------- shares, without processes


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_shares_partition_the_units_in_order(monkeypatch, world):
    from langsae import distributed

    units = list(range(10))
    shares = []
    for r in range(world):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        shares.append(list(distributed.rank_share(units)))
    assert sorted(u for s in shares for u in s) == units  # each unit in exactly one share
    assert all(s == sorted(s) and s for s in shares) and max(map(len, shares)) - min(map(len, shares)) <= 1


def test_without_torchrun_nothing_is_shared_or_waited_for(monkeypatch, tmp_path):
    from langsae import distributed, units

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.rank_share([3, 1, 2]) == [3, 1, 2] and distributed.is_main()
    assert distributed.setup("cuda") == "cuda" and distributed.total(4) == 4 and not distributed.after_share()
    distributed.barrier()  # returns at once: no process group
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    claim_of = lambda u: tmp_path / f"{u}.claim"  # noqa: E731
    got = [
        b for b in units.claim_batches(list("abcde"), claim_of, lambda u: False, share=distributed.rank_share)
    ]
    assert got == [["b", "d"]]  # rank 1 of 2 tries only its share (and waits for no other unit)


def test_a_rank_without_its_own_gpu_is_one_line(monkeypatch):
    import torch

    from langsae import distributed
    from langsae.errors import UserError

    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"cuda:2, but this node shows 2 GPU\(s\): give --nproc-per-node"):
        distributed.setup("cuda")
    assert not torch.distributed.is_initialized()
