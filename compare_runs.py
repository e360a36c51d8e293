"""Compare runs side by side: each report claim's verdict per run, and per shared language the
peak layer as a fraction of depth, specificity, top-1 exclusivity and task deltas; for runs of one
model with different SAE releases, the decoder cosines of their top features. Its code is
langsae/compare.py.

python compare_runs.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.compare import main

if __name__ == "__main__":
    sys.exit(run_main(main))
