"""The `downstream` stage (task claims): its code is langsae/stages/downstream.py.

python downstream_ablation.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.downstream import main

if __name__ == "__main__":
    sys.exit(run_main(main))
