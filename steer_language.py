"""The `steering` stage (Sec. 6): its code is langsae/stages/steering.py.

python steer_language.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.steering import main

if __name__ == "__main__":
    sys.exit(run_main(main))
