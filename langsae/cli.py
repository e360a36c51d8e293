"""What every top-level script does around its stage: logging, and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Callable

import torch

from langsae.errors import UserError


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a stage; a bad input, an out-of-memory batch or a disk fault is one line on stderr, exit 2."""
    setup_logging()
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print(
            "error: out of memory on the device; lower --batch-size (and try --dtype bfloat16)",
            file=sys.stderr,
        )
        return 2
    except (
        OSError
    ) as e:  # a disk fault while writing (ENOSPC, EROFS, EACCES...): name the file, not a traceback
        if e.strerror is None:  # not a file-system error with a cause to state
            raise
        where = f"{e.filename}: " if e.filename else ""
        why = "a file-system fault; finished units are kept, rerun once it is fixed"
        print(f"error: {where}{e.strerror} ({why})", file=sys.stderr)
        return 2
    return 0
