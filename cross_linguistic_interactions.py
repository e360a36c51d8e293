"""The `interactions` stage (Sec. 5, clusters): its code is langsae/stages/interactions.py.

python cross_linguistic_interactions.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.interactions import main

if __name__ == "__main__":
    sys.exit(run_main(main))
