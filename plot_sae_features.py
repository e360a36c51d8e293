"""The `plots` stage (Fig. 1): its code is langsae/stages/plots.py.

python plot_sae_features.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.plots import main

if __name__ == "__main__":
    sys.exit(run_main(main))
