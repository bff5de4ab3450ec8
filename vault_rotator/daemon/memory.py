"""The daemon's memory: fewer glibc malloc arenas than its threads would get.

glibc gives threads that allocate at once arenas of their own, up to 8 per core; a daemon whose
worker, start-pool, status and scheduler threads (about 40) all parse JSON at once then keeps
each arena's high-water mark (Python's own allocator serves small objects; the arenas serve the
large buffers of Vault's and the provider's answers). With two arenas and the status drawing's
changes of the same day, the 10,000-key emergency's peak RSS fell from 342 MB to 252 MB
(docs/scale.md; the arenas' own share was not measured apart). ``vault-rotator run`` asks for
:data:`ARENAS` at start (``mallopt(M_ARENA_MAX)``), unless ``MALLOC_ARENA_MAX`` is set (glibc
reads it itself: an operator's choice wins). Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import structlog

log = structlog.get_logger(__name__)

ARENAS = 2
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
