"""Claiming units of work, so that concurrent runs of one stage share its units instead of each computing all.

Every stage's unit loop (Section 5 condition groups, downstream and steering units, nu layers, ...) is

    for unit in claim_units(units, claim_of, is_done):
        compute(unit); save(unit)        # saved before the next iteration: the claim is then dropped

which yields the units this process should compute: a unit already done is skipped; a unit another LIVE
process has claimed is skipped now and revisited at the end (waited for, or taken over if its owner died);
a claim whose owner died is taken over. `share` picks the units a process tries at all: every unit, or
under torchrun this rank's (`distributed.rank_share`, `units[r::n]` of the full, fixed unit list).

Mechanism: a claim is a file `<name>.claim` beside the unit's output (no artifact ends in `.claim`),
created with os.open(O_CREAT | O_EXCL), which is atomic on local file systems and on NFSv3+, and holds its
owner (host, pid, start time, a random token). Its mtime is the heartbeat: a daemon thread touches every
claim this process holds every HEARTBEAT_S seconds, so a unit may run for hours. A claim is dead when its
heartbeat is older than STALE_AFTER_S, or at once when its owner is on this host and its pid is gone.
Why not `filelock`: its flock locks do vanish with a dead owner, but they say nothing about who holds
them (for the log), are unreliable on network file systems that torchrun jobs share, and leave their
lock files behind.

Claims save time, they do not make results right: every output is written atomically and deterministic,
so the rare race in which two processes both take over one dead claim costs a duplicate computation, never
a wrong or torn file. A shared file that is read, modified and rewritten still needs a real lock.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from langsae import distributed
from langsae.artifacts import config_hash, read_json, save_json, save_text, verify_file
from langsae.errors import CorruptArtifact

log = logging.getLogger(__name__)

T = TypeVar("T")
SUFFIX = ".claim"
HEARTBEAT_S = 30.0  # how often a held claim's mtime is touched
STALE_AFTER_S = 600.0  # a claim not touched for this long is dead (its owner hung, or died on another host)
POLL_S = 2.0  # how often a unit claimed by another live process is looked at again


def claim_file(folder: Path, name: str) -> Path:
    """The claim of the unit whose outputs are named `name` in `folder`."""
    return Path(folder) / f"{name}{SUFFIX}"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float
    token: str

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _STARTED, secrets.token_hex(8))


_STARTED = time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_owner(path: Path) -> Owner | None:
    """The owner a claim file names; None when it is gone or not (yet) written whole."""
    try:
        return Owner(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def is_dead(path: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether the claim at `path` belongs to nobody alive (module docstring); False when it is gone."""
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return False
    if age > stale_after:
        return True
    owner = read_owner(path)
    return owner is not None and owner.host == socket.gethostname() and not _pid_alive(owner.pid)


class _Heartbeat:
    """One daemon thread touching every claim this process holds."""

    def __init__(self):
        self.held: set[Path] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        with self.lock:
            self.held.add(path)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="unit-claims", daemon=True)
                self.thread.start()

    def discard(self, path: Path) -> None:
        with self.lock:
            self.held.discard(path)

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self.lock:
                held = list(self.held)
            for p in held:
                try:
                    os.utime(p)
                except OSError:  # taken over after all (e.g. this process was suspended past STALE_AFTER_S)
                    pass


_HEARTBEAT = _Heartbeat()


class Claim:
    """A held claim: released (its file removed, if still ours) on exit from the `with` block."""

    def __init__(self, path: Path, owner: Owner):
        self.path, self.owner = path, owner
        _HEARTBEAT.add(path)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        _HEARTBEAT.discard(self.path)
        owner = read_owner(self.path)
        if owner is not None and owner.token == self.owner.token:
            self.path.unlink(missing_ok=True)


def try_claim(path: Path, stale_after: float = STALE_AFTER_S) -> Claim | None:
    """Claim `path`, taking it over if its owner is dead; None if a live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # the second try follows the removal of a dead claim
        owner = Owner.me()
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if not _break_dead(path, stale_after):
                return None
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(owner)))
        return Claim(path, owner)
    return None


def _break_dead(path: Path, stale_after: float) -> bool:
    """Remove the claim at `path` if its owner is dead. It is first renamed aside, so that of several
    processes breaking it at once one succeeds; a live claim that replaced it meanwhile is put back."""
    if not is_dead(path, stale_after):
        return False
    dead = read_owner(path)
    aside = path.with_name(f"{path.name}.{secrets.token_hex(4)}.dead")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else removed it: try to create ours
    moved = read_owner(aside)
    if moved != dead and not is_dead(aside, stale_after):  # a fresh claim appeared in between: give it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
    who = "an unreadable owner" if dead is None else f"{dead.host}:{dead.pid}"
    log.warning("took over the claim %s of %s", path, who)
    return True


def everything(units: Sequence[T]) -> Sequence[T]:
    """The default share: this process tries every unit."""
    return units


def claim_units(
    units: Sequence[T],
    claim_of: Callable[[T], Path],
    is_done: Callable[[T], bool],
    share: Callable[[Sequence[T]], Sequence[T]] = everything,
    wait: bool = True,
    stale_after: float = STALE_AFTER_S,
    poll: float | None = None,  # None: POLL_S
) -> Iterator[T]:
    """Yield, in order, the units of `share(units)` this process should compute, each with its claim held
    until the loop asks for the next one (so save the unit's output inside the loop body). Units claimed by
    a live other process are revisited after the others; with wait=True this returns once every unit is done
    (by whichever process), else it leaves them to their owners."""
    later = []
    for unit in share(units):
        if not is_done(unit):
            got = yield from _attempt(unit, claim_of, is_done, stale_after)
            if not got:
                later.append(unit)
    while later and wait:
        time.sleep(POLL_S if poll is None else poll)
        pending = []
        for unit in later:
            if not is_done(unit):
                got = yield from _attempt(unit, claim_of, is_done, stale_after)
                if not got:
                    pending.append(unit)
        later = pending


def _attempt(unit, claim_of, is_done, stale_after):
    """Claim `unit` and yield it unless it got done meanwhile; False when a live process holds it."""
    claim = try_claim(claim_of(unit), stale_after)
    if claim is None:
        return False
    with claim:
        if not is_done(unit):  # another process may have finished it between our check and our claim
            yield unit
    return True


def claim_batches(
    units: Sequence[T],
    claim_of: Callable[[T], Path],
    is_done: Callable[[T], bool],
    stale_after: float = STALE_AFTER_S,
    poll: float | None = None,  # None: POLL_S
    most: int | None = None,
    share: Callable[[Sequence[T]], Sequence[T]] = everything,
) -> Iterator[list[T]]:
    """Like claim_units, for units computed together (stacked along the batch): yields every unfinished
    unit this process can claim now as one list (at most `most` of them: the rest stay free for other
    processes and are tried after this list), claims held until the loop asks for the next list; then
    the units that were held by live processes and have not been finished since, once they are claimable.
    Returns once every unit of `share(units)` is done."""
    pending = [u for u in share(units) if not is_done(u)]
    while pending:
        held, later = [], []
        for unit in pending:
            claim = None if most is not None and len(held) >= most else try_claim(claim_of(unit), stale_after)
            if claim is None:
                later.append(unit)
            elif is_done(unit):  # finished between our check and our claim
                claim.release()
            else:
                held.append((unit, claim))
        try:
            if held:
                yield [u for u, _ in held]
        finally:
            for _, claim in held:
                claim.release()
        if later and not held:
            time.sleep(POLL_S if poll is None else poll)
        pending = [u for u in later if not is_done(u)]


# ----------------------------------------------------------------------------- a store of finished units


class UnitStore:
    """Per-item results of finished units: <root>/<task>/<lang>/<unit>.jsonl and its sidecar <unit>.json
    (downstream tasks, steering): the sidecar, written last, holds the config hash that made the unit."""

    def __init__(self, root: Path, settings: dict):
        self.root, self.settings = Path(root), settings

    def key(self, what: dict) -> str:
        """The config hash of a unit made from `what` (what its records depend on besides the settings)."""
        return config_hash({**self.settings, **what})

    def _paths(self, task: str, lang: str, unit: str) -> tuple[Path, Path]:
        folder = self.root / task / lang
        return folder / f"{unit}.jsonl", folder / f"{unit}.json"

    def claim_of(self, task: str, lang: str, unit: str) -> Path:
        """The claim file of a unit, beside its results."""
        return claim_file(self.root / task / lang, unit)

    def load(self, task: str, lang: str, unit: str, key: str) -> list[dict] | None:
        """The unit's records; None when it is not done, stale, or its files are corrupt (then it is
        computed again: the sidecar records the JSONL's size and SHA-256)."""
        data, done = self._paths(task, lang, unit)
        remake = "its stage"  # never shown: a unit that cannot be read is computed again
        try:
            marker = read_json(done, remake)
            if marker.get("config_hash") != key:
                return None
            verify_file(data, marker.get("jsonl"), remake)
            with open(data, encoding="utf-8") as f:
                return [json.loads(line) for line in f]
        except (CorruptArtifact, OSError, ValueError, AttributeError):  # absent, torn or not JSON
            return None

    def save(self, task: str, lang: str, unit: str, key: str, records: list[dict], meta: dict) -> None:
        data, done = self._paths(task, lang, unit)
        record = save_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), data)
        marker = {**meta, "config_hash": key, "n_items": len(records), "jsonl": record}
        save_json(marker, done)  # written last: the unit is done

    def run(
        self,
        task: str,
        lang: str,
        units: Sequence[tuple[str, str, dict]],
        compute: Callable[[list[tuple[str, str, dict]]], list[list[dict]]],
        n_items: int | None = None,
        force: bool = False,
    ) -> tuple[dict[str, list[dict]], int]:
        """Per-item records of each unit (name, key, meta) of (task, lang): {name: records}, and how many
        this process computed. Finished units are read (with n_items, only if they hold that many records;
        force: none is); the rest are claimed (claim_batches) and those held at once are computed together
        by compute(units) -> one record list per unit, each saved as soon as computed; units a live other
        process holds are waited for. Under torchrun this rank computes only its share and, after a
        barrier, reads the other ranks' units (the count is then every rank's). The one unit loop of
        downstream tasks and steering."""
        out: dict[str, list[dict]] = {}

        def done(u) -> bool:
            name, key, _ = u
            if name not in out and not force:
                cached = self.load(task, lang, name, key)
                if cached is not None and (n_items is None or len(cached) == n_items):
                    out[name] = cached
            return name in out

        n_computed = 0
        claim_of = lambda u: self.claim_of(task, lang, u[0])  # noqa: E731
        for todo in claim_batches(units, claim_of, done, share=distributed.rank_share):
            for (name, key, meta), records in zip(todo, compute(todo)):
                self.save(task, lang, name, key, records, meta)
                out[name] = records
            n_computed += len(todo)
        distributed.barrier()  # under torchrun the other ranks' shares are read back (as cached units)
        for name, key, _ in units:
            if name not in out and (got := self.load(task, lang, name, key)) is not None:
                out[name] = got
        if len(out) < len({u[0] for u in units}):  # only under torchrun: another rank's unit is missing
            raise RuntimeError(f"{task} {lang}: units of another rank are missing under {self.root}")
        return out, distributed.total(n_computed)  # by every rank under torchrun
