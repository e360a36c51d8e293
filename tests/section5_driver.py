"""Runs reproduce_figures_section5.py in its own process for tests/test_units.py, logging each condition
file it writes (one relative path a line), optionally dying (os._exit(9), like a kill: no cleanup) right
after its Nth condition group is saved, or sleeping before each group so that two processes overlap.

usage: section5_driver.py LOG EXIT_AFTER DELAY_S STAGE_ARGS...   (EXIT_AFTER 0: never)
"""

import os
import sys
import time

import reproduce_figures_section5
from langsae import sweep
from langsae.cli import run_main

log, exit_after, delay, argv = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
put, ablated_ce = sweep.ConditionStore.put, sweep.ablated_ce
groups = 0


def logged_put(self, name, entries):
    global groups
    put(self, name, entries)
    with open(log, "a") as f:
        f.writelines(f"{name}/{key}.pt\n" for key in entries)
    groups += name.startswith("layer_")
    if exit_after and groups == exit_after:
        os._exit(9)


def slow_ablated_ce(*args, **kwargs):
    time.sleep(delay)
    return ablated_ce(*args, **kwargs)


sweep.ConditionStore.put = logged_put
sweep.ablated_ce = slow_ablated_ce
sys.exit(run_main(reproduce_figures_section5.main, argv))
