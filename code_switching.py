"""The `code-switching` stage (Sec. 4): its code is langsae/stages/code_switching.py.

python code_switching.py --help    # what it does, and every flag
"""

import sys

from langsae.cli import run_main
from langsae.stages.code_switching import main

if __name__ == "__main__":
    sys.exit(run_main(main))
