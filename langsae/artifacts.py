"""Artifacts are the interface between stages: atomic writes, metadata, staleness.

Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import pickle
import platform
import re
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from langsae import distributed
from langsae.errors import CorruptArtifact, UserError

_PROC_STATUS = "/proc/self/status"


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux's /proc/self/status).

    Elsewhere it can only be read by setting it and setting it back; the umask is process-wide,
    so for that instant it is 0o077 rather than 0: a file another thread creates meanwhile comes
    out private rather than world-writable.
    """
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The file gets the mode a plain open() would give it (0o666 minus the umask): mkstemp makes
    0600 files and the rename keeps that, which would hide every artifact and figure from the
    rest of a research group on a shared server.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a write to the temporary (ENOSPC...) names no file: name the one being written
        if e.filename is None or e.filename == tmp:
            e.filename, e.filename2 = str(path), None
        raise
    finally:  # also on KeyboardInterrupt and other BaseExceptions: no temporary is left behind
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_bytes(data: bytes, path: Path) -> dict:
    """Write `data` atomically; return its file_record, computed from the bytes, not by re-reading."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ----------------------------------------------------------------------------- before a stage starts

STALE_TMP_S = 15 * 60  # a temporary this old is left over from a killed run, not one being written now
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # atomic_path's mkstemp names: .<name>.<random>.tmp


def preflight(cfg: Any, min_free_mb: float) -> None:
    """Check, before any model loads, that the run's artifact and figure folders can be created and
    written and hold `min_free_mb` MB free; otherwise a one-line UserError naming the folder and the
    reason. A file system that fails here would otherwise fail only after the whole computation.

    `min_free_mb` is each stage's rough estimate of what it writes (a constant per stage, stated where
    it is called). It also removes stale temporaries of atomic_path under both folders: only those
    untouched for STALE_TMP_S, since a concurrent run of the same stage may be writing its own now.
    Folders it had to create are removed again when still empty (the stage makes them as it writes),
    so a stage whose later input checks fail leaves nothing behind. Under torchrun rank 0 alone checks the
    shared folders (another rank's check could find a folder rank 0 has just removed again)."""
    if not distributed.is_main():
        return
    for folder in dict.fromkeys([Path(cfg.output_dir), Path(cfg.features_dir)]):
        created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        try:
            for attempt in range(3):  # a concurrent run's preflight may remove the folder this one just made
                try:
                    _check_writable(folder)
                    free_mb = shutil.disk_usage(folder).free / 1e6
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            if free_mb < min_free_mb:
                raise UserError(
                    f"{folder} has {free_mb:.0f} MB free; this stage needs about {min_free_mb:.0f} MB there: "
                    "free some space or choose another folder (--out-dir / --figures-dir)"
                )
            remove_stale_temporaries(folder)
        finally:
            for made in created:
                try:
                    made.rmdir()
                except OSError:  # not empty (a concurrent run wrote there) or never made
                    break


def _check_writable(folder: Path) -> None:
    """Create `folder` and write and remove a probe file in it; an OSError becomes one UserError line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), folder)
        raise UserError(f"cannot create folder {folder}: {blocker} is a file; choose another one") from None
    except OSError as e:
        raise UserError(f"cannot create folder {folder}: {e.strerror or e}; choose another folder") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".preflight.", suffix=".probe", dir=folder)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except FileNotFoundError:  # the folder went between mkdir and the probe: preflight tries again
        raise
    except OSError as e:
        raise UserError(f"cannot write in {folder}: {e.strerror or e}; choose another folder") from None


def remove_stale_temporaries(folder: Path, older_than_s: float = STALE_TMP_S) -> list[Path]:
    """Delete atomic_path temporaries under `folder` not modified for `older_than_s` seconds; return them."""
    cutoff, removed = time.time() - older_than_s, []
    for p in Path(folder).rglob(".*.tmp"):
        try:
            if _TMP_NAME.match(p.name) and p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # another run finished or removed it meanwhile
            continue
    return removed


def save_torch(obj: Any, path: Path) -> dict:
    """torch.save atomically; returns the file's record for a done marker.

    Through a buffer: torch.save names its zip records after the file, and the temporary
    name is random; this keeps identical results byte-identical."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return _write_bytes(buf.getvalue(), path)


def save_json(obj: Any, path: Path) -> dict:
    return save_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", path)


def save_text(text: str, path: Path) -> dict:
    return _write_bytes(text.encode("utf-8"), path)


def save_csv(rows: list[dict], path: Path, columns: Sequence[str] | None = None) -> dict:
    """Rows of dicts as CSV, written atomically; floats with 6 significant digits."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return save_text(buf.getvalue(), path)


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- integrity
# Every artifact's size and SHA-256 are recorded when it is written (in its unit's done marker or
# the stage's meta) and checked when it is read. Hashing at read costs about 1 s per GB (a Qwen3
# layer's values file is tens of MB), small next to recomputing anything.


def file_record(path: Path) -> dict:
    """{"size", "sha256"} of a file on disk, the form a done marker stores."""
    return {"size": Path(path).stat().st_size, "sha256": file_sha256(path)}


def _broken(path: Path, state: str, remake: str) -> CorruptArtifact:
    """The error, carrying `path` and `state` for a caller that recomputes rather than reports."""
    e = CorruptArtifact(f"{path} is {state}; remake it with `{remake}`")
    e.path, e.state = Path(path), state
    return e


def verify_file(path: Path, record: dict | None, remake: str) -> None:
    """Raise CorruptArtifact unless `path` exists and (given a record) has its size and SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise _broken(path, "missing", remake)
    if record is None:
        return
    size, want = path.stat().st_size, int(record["size"])
    if size < want:
        raise _broken(path, f"truncated ({size} of {want} bytes)", remake)
    if size != want:
        raise _broken(path, f"corrupted ({size} bytes, {want} when written)", remake)
    if file_sha256(path) != record["sha256"]:
        raise _broken(path, "corrupted (its SHA-256 differs from the one recorded at writing)", remake)


def read_json(path: Path, remake: str) -> Any:
    """Parsed JSON; a missing or unparseable file is a CorruptArtifact naming it and `remake`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _broken(path, "missing", remake) from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise _broken(path, f"corrupted (not valid JSON: {e})", remake) from None


def read_torch(
    path: Path, remake: str, record: dict | None = None, weights_only: bool = True, map_location: Any = "cpu"
) -> Any:
    """torch.load after verify_file; a file torch cannot read (a torn zip raises RuntimeError, OSError
    or EOFError, a torn pickle UnpicklingError) is a CorruptArtifact naming it and `remake`."""
    verify_file(path, record, remake)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (EOFError, RuntimeError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise _broken(Path(path), f"corrupted (torch cannot read it: {why})", remake) from None


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-serialisable config, used to decide whether a result is stale."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_sha256(path: Path) -> str:
    """file_sha256, computed once per process while the file's size and mtime are unchanged: for inputs
    (bundled data, a local model's files) that every stage of a pipeline names. Never for checking an
    artifact against its record (verify_file), where a damaged file must be read again."""
    path = Path(path).resolve()
    st = path.stat()
    return _cached_sha256(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


MODEL_PACKAGES = (
    "torch",
    "transformers",
    "sae-lens",
    "tokenizers",
    "numpy",
)  # what a model's numbers depend on


def package_versions(packages: tuple[str, ...] = (*MODEL_PACKAGES, "py3langid")) -> dict[str, str]:
    """Versions of everything that can change a number, recorded in every artifact's metadata.

    A build keyed by its versions (the toy) passes MODEL_PACKAGES, so that adding a package the
    model never uses (e.g. the language identifier) does not invalidate it."""
    from importlib.metadata import PackageNotFoundError, version

    import langsae

    out = {"python": platform.python_version(), "langsae": langsae.__version__}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
