"""Runs the ν stage and the feature figures (through run_pipeline.py, which runs `plots` on rank 0 alone),
then the Section 5, downstream and steering stages on the small toy into one run folder, for
tests/test_torchrun.py: alone (`python torchrun_driver.py RUN LOG EXIT_AFTER`) or as every rank of
`torchrun --nproc-per-node 2 torchrun_driver.py ...`. Each rank appends the unit files it saves to
LOG.<rank> (one relative path a line); EXIT_AFTER N > 0 makes rank 1 die (os._exit(9), like a kill: no
cleanup) right after its Nth saved unit.
"""

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)  # as tests/conftest.py does

from langsae import distributed, nu, sweep, units  # noqa: E402
from langsae.cli import run_main  # noqa: E402
from langsae.stages import downstream, section5, steering  # noqa: E402
from run_pipeline import main as pipeline  # noqa: E402

LANGS = "eng_Latn,spa_Latn,jpn_Jpan,cmn_Hans"
TOY = ["--model", "toy", "--languages", LANGS]
STAGES = (
    (None, ["--n-texts-per-lang", "4", "--stages", "nu,plots"]),  # run_pipeline.py
    (section5, ["--n-texts", "3", "--random-draws", "1", "--rows-per-forward", "8", "--batch-size", "4"]),
    (
        downstream,
        ["--layers", "1", "--max-new-tokens", "3", "--tasks", "qa", "--n-items", "3", "--random-draws", "1"],
    ),
    (
        steering,
        ["--n-texts", "2", "--max-new-tokens", "3", "--lid-max-new-tokens", "2", "--methods", "sv"],
    ),
)

run, log, exit_after = Path(sys.argv[1]), Path(f"{sys.argv[2]}.{distributed.rank()}"), int(sys.argv[3])
saved = 0


def logged(fn, names):
    def wrapped(*args, **kwargs):
        global saved
        out = fn(*args, **kwargs)
        with open(log, "a") as f:
            f.writelines(f"{n}\n" for n in names(*args))
        saved += 1
        if exit_after and distributed.rank() == 1 and saved == exit_after:
            os._exit(9)
        return out

    return wrapped


nu.save_layer = logged(nu.save_layer, lambda out_dir, layer, *a: [f"layer_{layer}"])
sweep.ConditionStore.put = logged(sweep.ConditionStore.put, lambda self, name, entries: [*entries])
units.UnitStore.save = logged(units.UnitStore.save, lambda self, task, lang, u, *a: [f"{task}/{lang}/{u}"])

for stage, flags in STAGES:
    code = run_main(stage.main if stage else pipeline, [*TOY, "--out-dir", str(run), *flags])
    if code:
        sys.exit(code)
