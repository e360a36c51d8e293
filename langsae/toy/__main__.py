"""`python -m langsae.toy`: see `langsae.toy.cli`."""

import sys

from langsae.cli import run_main
from langsae.toy.cli import main

sys.exit(run_main(main))
