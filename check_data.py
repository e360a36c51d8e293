"""The `check-data` stage ((data checks)): its code is langsae/stages/check_data.py.

python check_data.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.check_data import main

if __name__ == "__main__":
    sys.exit(run_main(main))
