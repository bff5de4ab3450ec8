"""What the emulator saw: requests per route, every inference answer, every management
write (create, update, delete: the route, the key id in the path, the name a create asked for,
the status; never a body or a value), and every request to a spec route in the request log
(route, status, the fault that fired if any, the ``Retry-After`` answered if any, and when it
arrived and was answered, in epoch seconds of the provider's clock: for back-off checks).

Each log keeps its newest 100,000 entries; none survives a restart.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from vault_rotator.emulator.clock import iso
from vault_rotator.emulator.faults import ROUTES

LOG_LIMIT = 100_000


class Recorder:
    """Thread-safe request counts and inference log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(ROUTES, 0)
        self._log: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self._mutations: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self._requests: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)

    def count(self, route: str) -> None:
        with self._lock:
            self._counts[route] += 1

    def log_inference(self, key_id: str | None, route: str, status: int, at: float) -> None:
        entry = {"key_id": key_id, "route": route, "status": status, "at": iso(at)}
        with self._lock:
            self._log.append(entry)

    def log_mutation(
        self, route: str, key_id: str | None, name: str | None, status: int, at: float
    ) -> None:
        entry = {"route": route, "key_id": key_id, "name": name, "status": status, "at": iso(at)}
        with self._lock:
            self._mutations.append(entry)

    def log_request(self, route: str, status: int, at: float, answered: float, **more: Any) -> None:
        """One request to a spec route: ``more`` is ``fault`` and ``retry_after`` (or None)."""
        entry = {"route": route, "status": status, "at": at, "answered": answered, **more}
        with self._lock:
            self._requests.append(entry)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def inference_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def mutation_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._mutations]

    def request_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._requests]
