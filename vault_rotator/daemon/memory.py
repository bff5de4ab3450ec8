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
