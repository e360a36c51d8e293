"""Where the toy lives, and what its build record forbids, without importing anything that trains it
(the presets and `config.resolve` need only this)."""

import json
import os
from pathlib import Path

from langsae.errors import UserError

# Where the toy is built; LANGSAE_TOY_DIR moves it (the tests build a small one elsewhere).
TOY_ROOT = Path(os.environ.get("LANGSAE_TOY_DIR", Path(__file__).resolve().parent.parent / "toy_model"))
TOY_RELEASE = "langsae-local/toy-qwen3-transcoders"  # the transcoders' repo id in the local HF cache
TASK_LINES_KEY = "task_lines"  # build.json's record of a build trained on task lines


# Whether the default build (scale full) trains on task lines; here so that the presets need not import
# the toy's training code (tests/test_toy_task_text.py checks it against langsae.toy.scales).
DEFAULT_BUILD_HAS_TASK_LINES = True


def refuse_devtest(build_json: Path, split: str, unbuilt_is_default: bool = False) -> None:
    """One-line refusal of a devtest run on a toy whose build.json records task lines: its devtest
    selection and evaluation sets are made of the FLORES devtest sentences the topic lines train on.
    unbuilt_is_default: no build.json yet means the default build is made first (the toy preset)."""
    path = Path(build_json)
    if split != "devtest":
        return
    if not path.is_file():
        if unbuilt_is_default and DEFAULT_BUILD_HAS_TASK_LINES:
            raise UserError(
                f"--split devtest: the toy in {path.parent} is not built yet, and its default build trains "
                "on FLORES devtest sentences (topic task lines); run it on --split dev"
            )
        return
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError):
        return  # not a build's record: the build's own checks say so
    if isinstance(record, dict) and record.get(TASK_LINES_KEY):
        raise UserError(
            f"--split devtest: the toy in {path.parent} was trained on FLORES devtest sentences (topic task "
            f"lines, see {TASK_LINES_KEY} in {path}); run it on --split dev or build a toy without task lines"
        )
