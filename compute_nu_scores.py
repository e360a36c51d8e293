"""The `nu` stage (ν-scores, Fig. 1): its code is langsae/stages/nu.py.

python compute_nu_scores.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.nu import main

if __name__ == "__main__":
    sys.exit(run_main(main))
