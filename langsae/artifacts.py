"""Artifacts are the interface between stages: atomic writes, metadata, staleness.

Every file is written to a temporary name in the same folder and renamed into place, so a
kill at any moment leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

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
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_torch(obj: Any, path: Path) -> None:
    # Through a buffer: torch.save names its zip records after the file, and the temporary
    # name is random; this keeps identical results byte-identical.
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def save_json(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def save_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_csv(rows: list[dict], path: Path, columns: Sequence[str] | None = None) -> None:
    """Rows of dicts as CSV, written atomically; floats with 6 significant digits."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    save_text(buf.getvalue(), path)


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


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


MODEL_PACKAGES = ("torch", "transformers", "sae-lens", "tokenizers", "numpy")  # what a model's numbers depend on


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
