"""Claimed units of work (langsae.units) and Section 5 saving each condition group as it finishes.

The Section 5 tests run the stage on the small toy in subprocesses (tests/stage_driver.py) that log
which condition files each of them wrote, and compare the CSV artifacts byte for byte with an
uninterrupted one-process run.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import LANGS5, copy_nu

from langsae import sweep, units
from langsae.nu import META_FILE as NU_META

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "stage_driver.py"
ARGS = ["--model", "toy", "--languages", ",".join(LANGS5), "--n-texts", "4", "--random-draws", "2"]
ARTIFACTS = ("ablation_results.csv", "section5_summary.csv", "figure5_data.csv", "figure6_data.csv")


def _fake_claim(path: Path, host: str, pid: int, age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": 0.0, "token": "someone"}))
    t = time.time() - age
    os.utime(path, (t, t))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- the claim mechanism


def test_a_live_claim_is_respected_and_a_dead_one_taken_over(tmp_path):
    me = socket.gethostname()
    live = tmp_path / "live.claim"
    _fake_claim(live, me, os.getppid())  # our parent: alive, on this host
    assert units.try_claim(live) is None
    _fake_claim(live, "another-host", 1, age=units.STALE_AFTER_S / 2)  # elsewhere, heartbeat recent
    assert units.try_claim(live) is None and json.loads(live.read_text())["token"] == "someone"

    old = units.STALE_AFTER_S + 5
    for name, host, pid, age in [("pid", me, _dead_pid(), 0.0), ("old", "another-host", 1, old)]:
        dead = tmp_path / f"{name}.claim"
        _fake_claim(dead, host, pid, age)
        claim = units.try_claim(dead)
        assert claim is not None and units.read_owner(dead).pid == os.getpid()
        assert units.try_claim(dead) is None  # now ours, and live
        claim.release()
        assert not dead.exists()
    assert not list(tmp_path.glob("*.dead"))


def test_claim_units_skips_done_defers_live_claims_and_takes_over_when_the_owner_dies(tmp_path):
    done = {"a"}
    claim_of = lambda u: tmp_path / f"{u}.claim"  # noqa: E731
    _fake_claim(claim_of("b"), "another-host", 1)  # b: live elsewhere, finishes while we work
    _fake_claim(claim_of("d"), "another-host", 1)  # d: live elsewhere, then its owner stops beating

    def other():
        time.sleep(0.3)
        done.add("b")
        claim_of("b").unlink()
        t = time.time() - units.STALE_AFTER_S - 1
        os.utime(claim_of("d"), (t, t))

    threading.Thread(target=other).start()
    got = []
    for u in units.claim_units(["a", "b", "c", "d"], claim_of, lambda u: u in done, poll=0.05):
        assert units.read_owner(claim_of(u)).pid == os.getpid()  # held while the body runs
        got.append(u)
        done.add(u)
    assert got == ["c", "d"] and not list(tmp_path.iterdir())  # claims removed once done


def test_an_exception_in_the_loop_releases_the_claim(tmp_path):
    with pytest.raises(ValueError):
        for _ in units.claim_units(["x"], lambda u: tmp_path / f"{u}.claim", lambda u: False):
            assert (tmp_path / "x.claim").exists()
            raise ValueError
    assert not (tmp_path / "x.claim").exists()


# ----------------------------------------------------------------------------- Section 5 on the small toy


def _driver(
    run: Path,
    log: Path,
    *,
    exit_after: int = 0,
    delay: float = 0.0,
    stage: str = "section5",
    args: tuple = tuple(ARGS),
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(DRIVER),
        stage,
        str(log),
        str(exit_after),
        str(delay),
        *args,
        "--out-dir",
        str(run),
    ]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _written(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _same_artifacts(a: Path, b: Path) -> None:
    for name in ARTIFACTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(small_toy_nu, tmp_path_factory):
    """An uninterrupted one-process Section 5 run: (run folder, the condition files it wrote)."""
    run = copy_nu(small_toy_nu, tmp_path_factory.mktemp("reference") / "run")
    log = run.parent / "written.log"
    p = _driver(run, log)
    assert p.wait() == 0, p.stderr.read()
    written = _written(log)
    assert len(written) == len(set(written)) > 2
    return run, written


def test_two_processes_split_the_conditions_and_match_one_process(reference, small_toy_nu, tmp_path):
    ref_run, ref_written = reference
    run = copy_nu(small_toy_nu, tmp_path / "run")
    logs = [tmp_path / f"written_{i}.log" for i in range(2)]
    procs = [_driver(run, log, delay=0.5) for log in logs]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    a, b = (set(_written(log)) for log in logs)
    assert a and b and not (a & b), "each condition file is written by exactly one process"
    assert a | b == set(ref_written)
    _same_artifacts(run, ref_run)
    assert not list((run / "ablation").rglob("*.claim"))


def test_a_kill_inside_a_layer_loses_only_the_group_being_computed(reference, small_toy_nu, tmp_path):
    ref_run, ref_written = reference
    run = copy_nu(small_toy_nu, tmp_path / "run")
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    p = _driver(run, first, exit_after=2)  # os._exit right after the 2nd condition group is saved
    assert p.wait() == 9, p.stderr.read()
    kept = _written(first)
    assert "baseline" in kept[0] and len(kept) < len(ref_written)
    assert list((run / "ablation").rglob("*.claim")), "a killed process leaves its claim behind"
    p = _driver(run, second)  # takes the dead process's claim over at once (same host, pid gone)
    assert p.wait() == 0, p.stderr.read()
    again = _written(second)
    assert not set(again) & set(kept) and set(again) | set(kept) == set(ref_written)
    _same_artifacts(run, ref_run)


def test_a_corrupt_condition_file_is_recomputed_alone(reference, small_toy_nu, tmp_path):
    ref_run, ref_written = reference
    run = copy_nu(small_toy_nu, tmp_path / "run")
    for f in (ref_run / "ablation").rglob("*.pt"):
        dst = run / "ablation" / f.relative_to(ref_run / "ablation")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(f.read_bytes())
    victim = run / "ablation" / next(w for w in ref_written if w.startswith("layer_"))
    victim.write_bytes(victim.read_bytes()[:100])
    log = tmp_path / "written.log"
    p = _driver(run, log)
    assert p.wait() == 0, p.stderr.read()
    assert _written(log) == [str(victim.relative_to(run / "ablation"))]
    _same_artifacts(run, ref_run)


def test_per_condition_ce_does_not_depend_on_which_conditions_share_a_forward(small_toy_nu, small_toy):
    """The claim behind claiming condition groups: stacking differently changes no CE (checked to the bit
    here; grouping is kept deterministic anyway, since other BLAS kernels may differ in the last bits)."""
    from langsae import features
    from langsae.config import build_parser, resolve
    from langsae.data import load_texts
    from langsae.forward import make_batches
    from langsae.model import load_model

    argv = ["--model", "toy", "--out-dir", str(small_toy_nu), "--languages", ",".join(LANGS5)]
    cfg = resolve(build_parser("t").parse_args(argv))
    nu = features.load_nu_results(cfg, None, 2)
    model, tok = load_model(cfg.preset, "cpu", torch.float32)
    evalset = sweep.build_eval_set(tok, load_texts(LANGS5, "evaluation", 4, cfg.split))
    batches = make_batches(evalset.token_ids, 8, tok.pad_token_id)
    L = sorted(nu.layers)[-1]
    conds = sweep.sweep_conditions(nu, LANGS5, "directional", 2, 2, 0)
    abls = [sweep.make_ablation(nu.layers[L], c.feature_ids, c.mode) for c in conds if c.layer == L]
    together = sweep.ablated_ce(model, batches, L, abls, max_rows=8 * len(abls))
    alone = torch.cat([sweep.ablated_ce(model, batches, L, [a], max_rows=8) for a in abls])
    assert torch.equal(together, alone), (together - alone).abs().max()


# ----------------------------------------------------------------------------- the nu stage on the small toy
# --cache-gb 1e-9: one layer per forward pass, so one claim at a time and two processes split the 2 layers;
# the reference (small_toy_nu) ran every layer in one pass, so the files also show that a layer's results
# do not depend on which other layers shared its forward pass.
NU_ARGS = ("--model", "toy", "--n-texts-per-lang", "8", "--cache-gb", "1e-9")


def _same_layers(a: Path, b: Path, layers=(0, 1)) -> None:
    from langsae import nu

    for L in layers:
        for name, path in nu.layer_files(a, L).items():
            assert path.read_bytes() == nu.layer_files(b, L)[name].read_bytes(), f"layer {L} {name}"


def test_two_nu_processes_split_the_layers_and_match_one_process(small_toy_nu, tmp_path):
    run = tmp_path / "run"
    logs = [tmp_path / f"written_{i}.log" for i in range(2)]
    procs = [_driver(run, log, delay=1.0, stage="nu", args=NU_ARGS) for log in logs]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    a, b = (_written(log) for log in logs)
    assert sorted(a + b) == ["layer_0", "layer_1"], "each layer is scored by exactly one process"
    _same_layers(run, small_toy_nu)
    assert json.loads((run / NU_META).read_text())["layers"] == [0, 1]  # both wait for every layer
    assert not list(run.glob("*.claim"))


def test_a_killed_nu_run_leaves_its_claim_and_the_next_run_scores_only_the_rest(small_toy_nu, tmp_path):
    run, first, second = tmp_path / "run", tmp_path / "first.log", tmp_path / "second.log"
    p = _driver(run, first, exit_after=1, stage="nu", args=NU_ARGS)  # os._exit after layer 0 is saved
    assert p.wait() == 9, p.stderr.read()
    assert _written(first) == ["layer_0"] and list(run.glob("layer_*.claim"))
    p = _driver(run, second, stage="nu", args=NU_ARGS)  # takes the dead claim over at once
    assert p.wait() == 0, p.stderr.read()
    assert _written(second) == ["layer_1"]
    _same_layers(run, small_toy_nu)
    assert [p.name for p in run.glob("*.claim")] == [
        "layer_0.claim"
    ]  # the dead run's, of a layer it finished
