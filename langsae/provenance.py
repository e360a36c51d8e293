"""What data a stage read, for its *_meta.json: the SHA-256 of every bundled file and the pinned
revision of every hub dataset, so that a run can say which data made its numbers.

Paths are relative to the project root (a run stays valid when the project moves); a file
outside it keeps its absolute path. Each file is hashed once per process (and again only if
its size or modification time changes), so the pipeline's stages share the work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from langsae.artifacts import cached_sha256
from langsae.config import PROJECT_ROOT
from langsae.data import Texts, source_files
from langsae.tasks import task_sources


def project_path(path: Path) -> str:
    """`path` relative to the project root, or absolute when it lies outside the project."""
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def data_record(
    cfg=None, sets: Iterable = (), tasks: Mapping[str, Iterable] | None = None, files: Iterable[Path] = ()
) -> dict:
    """{"bundled": {project path: sha256}, "hub": {repo: revision}} of the data a stage read.

    sets: FLORES text sets, each a loaded `data.Texts`, or "selection" / "evaluation" for the set
    of cfg's languages on cfg's split; tasks: downstream task -> the languages whose items were
    read (any iterable of codes, a dict's keys too); files: any other bundled file read.
    """
    paths, hub = [Path(f) for f in files], {}
    for s in sets:
        found = (list(s.files), s.hub) if isinstance(s, Texts) else source_files(cfg.languages, s, cfg.split)
        paths, hub = paths + found[0], hub | found[1]
    for task, languages in (tasks or {}).items():
        found = task_sources(task, languages)
        paths, hub = paths + found[0], hub | found[1]
    bundled = {project_path(p): cached_sha256(p) for p in paths}
    return {"bundled": dict(sorted(bundled.items())), "hub": dict(sorted(hub.items()))}
