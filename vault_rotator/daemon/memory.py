"""The daemon's memory: fewer glibc malloc arenas than its threads would get.

glibc gives threads that allocate at once arenas of their own, up to 8 per core; a daemon whose
worker, start-pool, status and scheduler threads (about 40) all parse JSON at once then keeps
each arena's high-water mark (Python's own allocator serves small objects; the arenas serve the
large buffers of Vault's and the provider's answers). With two arenas and the status drawing's
changes of the same day, the 10,000-key emergency's peak RSS fell from 342 MB to 252 MB
(docs/scale.md; the arenas' own share was not measured apart). ``vault-rotator run`` asks for
:data:`ARENAS` at start (``mallopt(M_ARENA_MAX)``), unless ``MALLOC_ARENA_MAX`` is set (glibc
reads it itself: an operator's choice wins). Other C libraries (musl, macOS) are left alone.

**The cyclic garbage collector** runs far less often than Python's defaults (a young
collection every 700 net allocations): a daemon of 10,000 keys holds millions of objects
(books, policies, rows kept for GET /v1/status), and in its emergency the collector ran 69
full collections, 29 s of the 371 s, and 53 s in all (py-spy and gc.callbacks, docs/scale.md).
Nearly everything the daemon frees goes by reference counting (frozen records, dicts); only
cycles wait for the collector, and :data:`GC_THRESHOLDS` lets at most some tens of thousands
of young objects wait for it. ``vault-rotator run`` sets them at start (:func:`tune_gc`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

ARENAS = 2
GC_THRESHOLDS = (50_000, 20, 10)  # young collection every 50,000 net allocations (700)
M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; whether it was done (False: not glibc, or set by the
    environment)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    log.debug("malloc arenas capped", arenas=arenas, done=done)
    return done


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Run the cyclic garbage collector less often (see the module docstring)."""
    gc.set_threshold(*thresholds)
    log.debug("garbage collector thresholds set", thresholds=list(thresholds))


TRIM_EVERY_S = 10.0  # the heap's free memory handed back to the system at most this often


class HeapTrimmer:
    """Hands glibc's free heap memory back to the system (``malloc_trim(0)``), at most once
    per ``every`` seconds however often it is called (the daemon calls it after each tick).

    The daemon's live Python objects at the peak of a 1,000-key emergency came to 22 MB
    (tracemalloc) while its resident memory grew by 80 MB: freed buffers of Vault's and the
    provider's answers and of status answers stay in the heap, resident, unless trimmed.
    Measured at 10,000 keys (the emergency's profiling harness, the same code with and
    without): resident memory when the emergency opened 129 MB instead of 156 MB; the peak
    during the emergency was 290 MB either way (a burst of live buffers, not freed memory).
    A no-op where the C library is not glibc."""

    def __init__(self, every: float = TRIM_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self._last = -float("inf")
        self._lock = threading.Lock()
        self._trim = _malloc_trim()
        self.trims = 0

    def __call__(self) -> None:
        if self._trim is None:
            return
        with self._lock:
            now = self.clock()
            if now - self._last < self.every:
                return
            self._last = now
        self._trim(0)
        self.trims += 1


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
