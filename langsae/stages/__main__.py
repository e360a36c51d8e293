"""Run one stage by its name: `python -m langsae.stages <name> [flags]` (`--help` after the name lists
its flags).

Every stage has this entry, including one added without a root script; the root scripts
(`steer_language.py`, ...) are the same `main` under the names users know.
"""

import sys

from langsae.cli import run_main
from langsae.errors import UserError
from langsae.stages import registry


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    stages = {s.name: s for s in registry()}
    if not argv or argv[0] in ("-h", "--help"):
        print(" ".join(__doc__.split("\n\n")[0].split()), "\n\nstages:", ", ".join(stages))  # first paragraph
        return None
    if argv[0] not in stages:
        raise UserError(f"unknown stage {argv[0]!r}; choose from {', '.join(stages)}")
    return stages[argv[0]].main(argv[1:])


if __name__ == "__main__":
    sys.exit(run_main(main))
