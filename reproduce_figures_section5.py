"""The `section5` stage (Sec. 5, Fig. 5, 6): its code is langsae/stages/section5.py.

python reproduce_figures_section5.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.section5 import main

if __name__ == "__main__":
    sys.exit(run_main(main))
