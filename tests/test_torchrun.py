"""Data parallel under torchrun (langsae.distributed), offline on CPU with the gloo backend: the ν, Section 5,
downstream and steering stages on the small toy (tests/torchrun_driver.py), run by two ranks, write every
artifact byte for byte as one process does (metas apart from volatile fields, PDFs apart from their
creation date); a rank killed midway leaves only whole units, and rerunning the same command finishes
the rest with the same bytes.

Both runs write into the same folder path (the reference is moved aside first), since the metas record
their figures' absolute paths.
"""

import os
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


def _same(a: Path, b: Path, claims_left: int = 0) -> None:
    """Every file of run b is run a's, apart from at most `claims_left` claims (no artifact is a .claim)."""
    out = same_artifacts.compare(a, b)
    only = [f for f in out["only"] if ".claim " not in f]
    assert not out["different"] and not only, out["different"] + only
    assert len(out["same"]) > 50 and len(list(b.rglob("*.claim"))) <= claims_left


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
    _same(ref_run, run, claims_left=2)  # a killed rank's claim on the unit it had just saved stays behind
