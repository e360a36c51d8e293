"""Where the toy lives, without importing anything that trains it (the presets need only this)."""

import os
from pathlib import Path

# Where the toy is built; LANGSAE_TOY_DIR moves it (the tests build a small one elsewhere).
TOY_ROOT = Path(os.environ.get("LANGSAE_TOY_DIR", Path(__file__).resolve().parent.parent / "toy_model"))
TOY_RELEASE = "langsae-local/toy-qwen3-transcoders"  # the transcoders' repo id in the local HF cache
