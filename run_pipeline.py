"""Run every stage that exists, in order, with the same common flags.

    python run_pipeline.py --model toy          # offline, minutes on a laptop CPU
    python run_pipeline.py                      # Qwen3-0.6B, needs the model and transcoders

Each stage skips work it has already cached, so rerunning resumes. Stage-specific flags
(e.g. --mode of the Section 5 stage) are set by running that stage's script directly.
"""

from __future__ import annotations

import logging
import sys

import compute_nu_scores
import reproduce_figures_section5
from langsae.cli import run_main
from langsae.config import build_parser

STAGES = [("nu-scores", compute_nu_scores.main), ("section 5", reproduce_figures_section5.main)]
log = logging.getLogger("run_pipeline")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    build_parser(__doc__.split("\n\n")[0]).parse_args(argv)  # --help, and bad flags fail before any stage
    for name, stage in STAGES:
        log.info("stage %s", name)
        stage(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
