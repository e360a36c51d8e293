"""The `cluster-synergy` stage (Sec. 5 synergy across language pairs).

Its code is langsae/stages/cluster_synergy.py.

    python cluster_synergy.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.cluster_synergy import main

if __name__ == "__main__":
    sys.exit(run_main(main))
