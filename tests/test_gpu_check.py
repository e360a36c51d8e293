"""benchmarks/gpu_check.py: its --tiny run (the same code as on the GPU, on the CPU) and its refusals.

Subprocesses: the script points HF_HOME at its own temporary cache when imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("nu", "section5", "generate", "steering", "identity")


def run(args, tmp_path, **env):
    """The script in a subprocess whose temporary folders go under tmp_path (so leftovers show)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path), **env}
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_tiny_runs_every_part_and_the_identity_edit_is_exact(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run(["--tiny", "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(PARTS) | {"fixtures"} <= set(r)
    for part in PARTS:
        assert r[part]["wall_s"] > 0 and r[part]["peak_gib"] is None  # no GPU: no peak memory
        assert f"\n{part} " in done.stdout  # one row of the table per part
    ident = r["identity"]
    assert (
        ident["n_texts"] > 0
        and ident["n_exactly_zero"] == ident["n_texts"]
        and ident["max_abs_delta_ce"] == 0.0
    )
    # the edits stacked beside it changed their rows: the identity rows were not skipped or shared
    assert ident["random_ablation_mean_abs_delta_ce"] > 0
    nu = r["nu"]
    assert nu["layers"] == [0, 1] and nu["stage_wall_s"] > 0 and nu["read_total_s"] > 0
    assert nu["ratio_stage_to_read"] == pytest.approx(nu["stage_wall_s"] / nu["read_total_s"])
    s5 = r["section5"]
    assert s5["work"]["computed"] > 0 and s5["extrapolated_28_layers_s"] == pytest.approx(
        s5["per_layer_s"] * 28
    )
    # the stages' memory plans stand beside the peaks (from their metas); the engines run no stage
    assert s5["plan_gib"] > 0 and nu["plan_gib"] > 0 and r["generate"]["plan_gib"] is None
    assert "plan GiB" in done.stdout
    assert r["generate"]["identical_tokens"] and r["steering"]["alpha0_equals_unsteered"]
    assert r["generate"]["speedup"] == pytest.approx(r["generate"]["naive_s"] / r["generate"]["engine_s"])
    assert not list(tmp_path.glob("bench-nu-*")), "the fixtures must be removed"


@pytest.mark.parametrize(
    "args, words",
    [([], ["no CUDA GPU", "--tiny"]), (["--tiny", "--parts", "nu,bogus"], ["--parts", "bogus"])],
)
def test_refusals_are_one_line_and_exit_2(tmp_path, args, words):
    done = run(args, tmp_path, CUDA_VISIBLE_DEVICES="")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(w in lines[0] for w in words)
    assert not list(tmp_path.glob("bench-nu-*")), "nothing may be left behind"


def test_help_documents_every_flag(tmp_path):
    done = run(["--help"], tmp_path)
    assert done.returncode == 0
    for flag in ("--tiny", "--parts", "--out", "--keep"):
        assert flag in done.stdout
    assert all(p in done.stdout for p in PARTS)
