"""Runs a stage that claims its units in its own process, for tests/test_units.py: logs each unit file it
writes (one relative path a line), optionally dies (os._exit(9), like a kill: no cleanup) right after
its Nth unit (group) is saved, or sleeps before each unit's forward so that two processes overlap.

usage: stage_driver.py STAGE LOG EXIT_AFTER DELAY_S STAGE_ARGS...
       (STAGE: section5 or nu; EXIT_AFTER 0: never)
Section 5 logs <name>/<key>.pt per condition file (a unit: a condition group of one layer);
the nu stage logs layer_<L> per layer (a unit: a layer).
"""

import os
import sys
import time

import torch

torch.set_num_threads(1)  # as tests/conftest.py does: then results match references made in the test process

log, exit_after, delay, argv = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
units = 0


def saved(lines, counts=True):
    global units
    with open(log, "a") as f:
        f.writelines(f"{line}\n" for line in lines)
    units += counts
    if exit_after and units == exit_after:
        os._exit(9)


def slowed(fn):
    def slow(*args, **kwargs):
        time.sleep(delay)
        return fn(*args, **kwargs)

    return slow


if sys.argv[1] == "section5":
    import reproduce_figures_section5 as stage
    from langsae import sweep

    put = sweep.ConditionStore.put

    def logged_put(self, name, entries):
        put(self, name, entries)
        saved([f"{name}/{key}.pt" for key in entries], name.startswith("layer_"))

    sweep.ConditionStore.put = logged_put
    sweep.ablated_ce = slowed(sweep.ablated_ce)
else:
    import compute_nu_scores as stage
    from langsae import nu

    save_layer = nu.save_layer

    def logged_save_layer(out_dir, layer, *args):
        save_layer(out_dir, layer, *args)
        saved([f"layer_{layer}"])

    nu.save_layer = logged_save_layer
    nu.collect_sae_inputs = slowed(nu.collect_sae_inputs)

from langsae.cli import run_main  # noqa: E402

sys.exit(run_main(stage.main, argv))
