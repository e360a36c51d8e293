"""Load the next item on a background thread while the current one is in use.

The nu stage reads one transcoder per layer (1.34 GB of fp32 on disk each). Reading it is
I/O and memory traffic that torch and safetensors do with the GIL released, so one
background thread can read layer L+1 while layer L encodes the cached inputs. On a GPU,
where the encodes take milliseconds, the reads are nearly the whole stage.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Generic, Hashable, Iterable, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

WAIT_REPORT_S = 0.5  # a wait longer than this is logged: the read was not hidden behind the work


class Prefetcher(Generic[K, V]):
    """`load(key)` for each key in order, at most one load ahead of the caller, on one thread.

    Use as a context manager and `take` the keys in the order given:

        with Prefetcher(layers, load_layer, "SAE layer") as saes:
            for L in layers:
                sae = saes.take(L)
                ...
                del sae  # before the next take: at most two items are alive

    The first load starts at construction, so it overlaps whatever the caller does before
    its first `take`. `take(k)` waits for k, starts the load of the key after it, and
    returns k's value, so that load overlaps the caller's work on k. Memory holds at most
    two items (the one in use and the one being read) as long as the caller drops an item
    before taking the next.

    An exception raised by `load` is raised unchanged by the `take` of that key, in the
    caller's thread, at the point where a sequential loop would have raised it; later keys
    are not loaded. Leaving the `with` block cancels what has not started and waits for a
    load in progress (a thread cannot be interrupted); loads only read, so an interrupted
    run leaves nothing of theirs behind.
    """

    def __init__(self, keys: Iterable[K], load: Callable[[K], V], desc: str = "item"):
        self._keys = list(keys)
        self._load = load
        self._desc = desc
        self._taken = 0  # index of the key the next `take` must ask for
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._future: Future | None = None
        self._start(0)

    def _start(self, index: int) -> None:
        if index < len(self._keys):
            self._future = self._pool.submit(self._load, self._keys[index])

    def take(self, key: K) -> V:
        """The value of `key` (the next key in order), once loaded; raises what `load` raised."""
        if self._taken >= len(self._keys) or self._keys[self._taken] != key:
            expected = self._keys[self._taken] if self._taken < len(self._keys) else None
            raise ValueError(f"take({key!r}) out of order: the next key is {expected!r}")
        future, self._future = self._future, None  # the future holds the value: drop it here
        if future is None:
            raise ValueError(f"take({key!r}) after its load failed or the prefetcher was closed")
        value = _wait(future, f"waiting for {self._desc} {key}")
        self._taken += 1
        self._start(self._taken)
        return value

    def close(self) -> None:
        """Cancel loads not started; wait for the one in progress (its value is dropped)."""
        self._future = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[K, V]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait(future: Future, desc: str) -> object:
    """future.result(), with a progress line while it is not done; a long wait is logged."""
    t0 = time.perf_counter()
    if not future.done():
        with tqdm(desc=desc, bar_format="{desc}: {elapsed}", leave=False) as bar:
            while not wait([future], timeout=0.5).done:
                bar.refresh()
    waited = time.perf_counter() - t0
    if waited > WAIT_REPORT_S:
        log.info("%s: %.1fs (its read was not hidden behind the previous work)", desc, waited)
    return future.result()
