"""Building the toy: the build folder and its build.json, reuse of a current build, the
transcoders' files in a local Hugging Face cache, and a build's content identity.

The training itself runs in a child process with pinned kernels (`langsae.toy.reproduce`),
which runs `langsae.toy.train`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from langsae.artifacts import (
    MODEL_PACKAGES,
    file_sha256,
    load_json,
    package_versions,
    save_json,
)
from langsae.data import DATA_DIR, EVALUATION_FILE, PAPER_LANGUAGES, ntrex_file, sib_file
from langsae.errors import UserError
from langsae.toy.reproduce import _train_in_pinned_process, fingerprint
from langsae.toy.scales import _scale
from langsae.toy.task_text import task_record
from langsae.toy_paths import TASK_LINES_KEY, TOY_ROOT

log = logging.getLogger("langsae.toy")  # one logger for the whole toy, as before the split


def hub_repo_dir(hub_cache: Path, repo_id: str) -> Path:
    return Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"


def write_mwhanna_release(
    hub_cache: Path,
    repo_id: str,
    layers: dict[int, dict[str, torch.Tensor]],
    model_name: str,
    context_size: int = 1024,
) -> Path:
    """Write transcoders as the mwhanna release lays them out, inside a Hugging Face cache.

    `layers[L]` holds W_enc [d_sae, d_in] (as stored on the hub; sae-lens transposes it),
    W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out]. Returns the snapshot folder.
    sae-lens's `mwhanna_transcoder` loader then reads it with HF_HUB_OFFLINE=1.
    """
    from safetensors.torch import save_file

    d_sae, d_model = next(iter(layers.values()))["W_enc"].shape
    digest = hashlib.sha1(repr(sorted(layers)).encode() + repo_id.encode())
    for L in sorted(layers):
        digest.update(layers[L]["W_dec"].float().numpy().tobytes()[:4096])
    sha = digest.hexdigest()
    repo = hub_repo_dir(hub_cache, repo_id)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    wandb = {
        "d_model": {"value": int(d_model)},
        "d_feature": {"value": int(d_sae)},
        "batch_size": {"value": context_size},
    }
    (snap / "wandb-config.yaml").write_text(yaml.safe_dump(wandb))
    (snap / "config.yaml").write_text(yaml.safe_dump({"model_name": model_name}))
    for L, tensors in layers.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(snap / f"layer_{L}.safetensors"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snap


# ----------------------------------------------------------------------------- the build

TOY_FORMAT = 3  # bump when the recipe changes in a way the hyper-parameters do not show
TOY_MODEL_NAME = "langsae-local/toy-qwen3"
BUILD_PARTS = ("model", "hub", "quality.json", "timings.json")  # build.json is written last, after these
PARTIAL_PREFIX = (
    ".building-"  # work folders inside the root; a kill leaves one behind, the next build removes it
)


def build_record(seed: int, scale: str) -> dict:
    """What build.json holds for a build with this seed and scale: equal records mean an equal build."""
    hp = _scale(scale)
    files = [ntrex_file(lang) for lang in PAPER_LANGUAGES] + [EVALUATION_FILE]
    if hp.task_lines:
        files += [sib_file(lang) for lang in PAPER_LANGUAGES]
    record = {
        "format": TOY_FORMAT,
        "seed": seed,
        "scale": scale,
        "hyperparameters": hp.recorded(),
        "languages": list(PAPER_LANGUAGES),
        "versions": package_versions(MODEL_PACKAGES),
        "data_sha256": {str(f.relative_to(DATA_DIR)): file_sha256(f) for f in files},
    }
    if hp.task_lines:
        record[TASK_LINES_KEY] = task_record(seed, hp.task_lid_per_language, hp.task_topic_per_language)
    return json.loads(json.dumps(record))  # the form it has after a round trip through build.json


def current_build(root: Path) -> dict | None:
    """The build.json of a complete build in `root`, if a rebuild with its own seed and scale would
    record the same."""
    root = Path(root)
    path = root / "build.json"
    if not (path.exists() and (root / "model" / "config.json").exists() and (root / "hub").is_dir()):
        return None
    try:
        record = load_json(path)
        expected = build_record(record["seed"], record["scale"])
    except (ValueError, KeyError, TypeError, UserError):
        return None
    return record if record == expected else None


def ensure_built(root: Path = TOY_ROOT) -> Path:
    """Reuse the toy build in `root` if it is complete and current (any seed or scale); else build the
    default."""
    if current_build(root) is not None:
        return Path(root)
    log.warning(
        "no current toy build in %s: building the default (scale full, seed 0), several minutes", root
    )
    start = time.perf_counter()
    build_toy(root, seed=0, scale="full", force=True)
    log.info("toy build finished in %.0f s", time.perf_counter() - start)
    return Path(root)


def build_toy(root: Path = TOY_ROOT, seed: int = 0, scale: str = "full", force: bool = False) -> Path:
    """Train the toy tokenizer, model and transcoders from `seed` and save them under `root`.

    Layout: `root/model` (save_pretrained), `root/hub` (the transcoders as an mwhanna
    release in a Hugging Face cache), `root/quality.json`, and `root/build.json`, written
    last: a folder without it is not a build. Everything is made in a work folder inside
    `root` and renamed into place, so a killed build never looks complete. A call whose
    seed, scale, versions and data match the existing build.json returns at once.
    """
    root = Path(root)
    record = build_record(seed, scale)  # refuses an unknown scale before any work
    if not force and current_build(root) == record:
        log.info("toy build in %s is current (seed %d, scale %s): reusing it", root, seed, scale)
        return root
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(root)
    work = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=root))
    try:
        _train_in_pinned_process(work, seed, scale)
        # From here until build.json is back, root holds no complete build.
        (root / "build.json").unlink(missing_ok=True)
        for name in BUILD_PARTS:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (work / name).rename(target)
        save_json(record, root / "build.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "toy build (seed %d, scale %s) written to %s in %.0f s",
        seed,
        scale,
        root,
        time.perf_counter() - start,
    )
    return root


def _remove_abandoned_work(root: Path) -> None:
    """Delete work folders of builds whose process is gone."""
    for path in root.glob(f"{PARTIAL_PREFIX}*"):
        try:
            pid = int(path.name.removeprefix(PARTIAL_PREFIX).split("-")[0])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- identity


def build_identity(root: Path) -> str | None:
    """The content identity of the build in `root` (model, tokenizer, transcoders and quality report):
    a hash of its fingerprint, whose names are relative to `root`, so a moved or copied build keeps it.
    None when `root` holds no complete build. Hashed once per build per process (the toy is a few MB)."""
    stamp = Path(root) / "build.json"
    if not stamp.exists():
        return None
    return _fingerprint_hash(Path(root).resolve(), stamp.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _fingerprint_hash(root: Path, build_stamp: int) -> str:
    """build_stamp (build.json's mtime) is only a cache key: a rebuild rewrites build.json last."""
    blob = json.dumps(fingerprint(root), sort_keys=True).encode()
    return "toy-sha256:" + hashlib.sha256(blob).hexdigest()
