"""Fault injection: what to do instead of (or besides) answering a request normally.

Faults on one route are tried in the order they were set; each fires with probability
``error_rate`` (from a seeded RNG) and the first that fires shapes the answer. A fault with a
``count`` is spent after firing that many times.

When a fault fires, ``latency`` seconds pass first. Then:

- ``status``: that status with the spec's error body is the answer; the request is not
  processed. 429 (and any status given ``retry_after``) carries ``Retry-After``; 429 carries
  ``X-RateLimit-Limit``, ``X-RateLimit-Remaining: 0`` and ``X-RateLimit-Reset``: the provider's
  now plus ``rate_limit_reset`` seconds (default ``retry_after``, else 1), in Unix seconds.
- ``drop_after_commit`` (create/update/delete only): the request is processed, then the
  connection is closed without an answer.
- ``garbage``: the request is processed, then its answer is replaced: ``json`` truncates the
  body, ``types`` keeps the JSON but gives every field the wrong type, ``huge`` pads it to
  5 MiB, ``html`` answers 200 ``text/html``.
- ``trickle`` (seconds): the answer's status line and headers are sent one byte at a time,
  this long apart (a proxy or server dribbling its headers; a read timeout never fires). It
  goes with any of the above, or alone (the request is processed normally).
- ``trickle_body`` (seconds): the answer's body is sent in chunks of ``wire.BODY_CHUNK`` (64) bytes,
  this long apart (a slow stream: each chunk arrives well within a read timeout, the whole
  takes long). It goes with any of the above, or alone.
- none of those (``latency`` only): the request is processed normally, late.

Every request to a spec route is in the request log (:mod:`.recorder`) with the fault that
fired on it, if any (:meth:`Fault.describe`), and the ``Retry-After`` its answer carried.
"""

from __future__ import annotations

import json
import math
import random
import threading
from dataclasses import dataclass

from vault_rotator.emulator.dialects import RATE_LIMIT_RPM
from vault_rotator.emulator.wire import Response, error_response

MANAGEMENT_ROUTES = ("list", "get", "create", "update", "delete")
INFERENCE_ROUTES = ("models", "chat", "embeddings")
ROUTES = MANAGEMENT_ROUTES + INFERENCE_ROUTES
COMMITTING_ROUTES = ("create", "update", "delete")
GARBAGE = ("json", "types", "huge", "html")
HUGE_BYTES = 5 * 1024 * 1024

_HTML = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><h1>Checking your browser before accessing api.arouter.ai</h1></body></html>"
)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@dataclass(slots=True)
class Fault:
    """One injected fault; see the module docstring. Invalid arguments raise ValueError."""

    route: str
    status: int | None = None
    error_rate: float = 1.0
    count: int | None = None
    retry_after: float | None = None
    rate_limit_reset: float | None = None
    latency: float = 0.0
    drop_after_commit: bool = False
    garbage: str | None = None
    trickle: float = 0.0
    trickle_body: float = 0.0

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"fault on {self.route!r}: {problem}")

    def _problem(self) -> str | None:  # noqa: PLR0911 - one line per rule reads best
        if self.route not in ROUTES:
            return f"route must be one of {', '.join(ROUTES)}"
        if self.status is not None and not (
            isinstance(self.status, int) and 400 <= self.status <= 599
        ):
            return "status must be an HTTP error status (400-599)"
        if not _number(self.error_rate) or self.error_rate > 1:
            return "error_rate must be between 0 and 1"
        if self.count is not None and not (isinstance(self.count, int) and self.count >= 1):
            return "count must be a positive integer or None"
        timings = (self.latency, self.retry_after or 0, self.trickle, self.trickle_body)
        if not all(_number(v) for v in timings):
            return "latency, retry_after, trickle and trickle_body must be non-negative numbers"
        if not _number(self.rate_limit_reset or 0):
            return "rate_limit_reset must be a non-negative number of seconds"
        if self.garbage not in (None, *GARBAGE):
            return f"garbage must be one of {', '.join(GARBAGE)}"
        if self.drop_after_commit and self.route not in COMMITTING_ROUTES:
            return "drop_after_commit applies to create, update and delete only"
        effects = (self.status is not None, bool(self.drop_after_commit), self.garbage is not None)
        if sum(effects) > 1:
            return "choose one of status, drop_after_commit and garbage"
        if sum(effects) == 0 and not (self.latency or self.trickle or self.trickle_body):
            return (
                "a fault needs a status, latency, trickle, trickle_body, drop_after_commit "
                "or garbage"
            )
        return None

    def describe(self) -> str:
        """What this fault does, in a few words (for the request log): ``status 429``,
        ``drop``, ``garbage json``, ``latency 0.5``, ``trickle 0.01``..., joined by ``+``."""
        parts = []
        if self.status is not None:
            parts.append(f"status {self.status}")
        if self.drop_after_commit:
            parts.append("drop")
        if self.garbage is not None:
            parts.append(f"garbage {self.garbage}")
        for name in ("latency", "trickle", "trickle_body"):
            if value := getattr(self, name):
                parts.append(f"{name} {value:g}")
        return "+".join(parts)

    def answer(self, now: float) -> Response:
        """The error answer of a ``status`` fault, at provider time ``now``."""
        assert self.status is not None
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = format(self.retry_after, "g")
        if self.status == 429:
            reset_in = self.rate_limit_reset
            if reset_in is None:
                reset_in = 1.0 if self.retry_after is None else self.retry_after
            headers["X-RateLimit-Limit"] = str(RATE_LIMIT_RPM)
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Reset"] = str(math.ceil(now + reset_in))
        response = error_response(self.status, "injected fault", headers=headers)
        response.trickle, response.trickle_body = self.trickle, self.trickle_body
        return response

    def distort(self, response: Response) -> Response:
        """Apply ``drop_after_commit``, ``garbage`` and the trickles to the real answer."""
        if self.drop_after_commit:
            response.drop = True
        if self.garbage is not None:
            response = _GARBLERS[self.garbage](response)
        response.trickle, response.trickle_body = self.trickle, self.trickle_body
        return response


class FaultTable:
    """The faults currently set, per route. Thread-safe; its RNG is seeded."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(f"faults:{seed}")  # noqa: S311 - reproducible on purpose
        self._lock = threading.Lock()
        self._faults: dict[str, list[Fault]] = {}

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.setdefault(fault.route, []).append(fault)

    def clear(self, route: str | None = None) -> None:
        with self._lock:
            if route is None:
                self._faults.clear()
            else:
                self._faults.pop(route, None)

    def draw(self, route: str) -> Fault | None:
        """The fault that fires on this request, if any (spending one of its ``count``)."""
        with self._lock:
            faults = self._faults.get(route, [])
            for fault in faults:
                if self._rng.random() < fault.error_rate:
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count == 0:
                            faults.remove(fault)
                    return fault
            return None


def _mistype(value: object) -> object:
    """The same structure with every leaf of the wrong JSON type."""
    if isinstance(value, dict):
        return {name: _mistype(item) for name, item in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            return [_mistype(item) for item in value]
        return {"items": value}
    if isinstance(value, str):
        return len(value)
    if value is None:
        return 0
    return json.dumps(value)  # numbers and booleans become strings


def _body_status(response: Response) -> int:
    return 200 if response.status == 204 else response.status


def _truncated(response: Response) -> Response:
    body = response.body[: len(response.body) // 2] or b'{"data": ['
    return Response(_body_status(response), body, "application/json")


def _wrong_types(response: Response) -> Response:
    payload = response.payload()
    body = json.dumps(_mistype({"deleted": True} if payload is None else payload)).encode()
    return Response(_body_status(response), body, "application/json")


def _huge(response: Response) -> Response:
    payload = response.payload()
    padded = dict(payload) if isinstance(payload, dict) else {"data": payload}
    padded["padding"] = "x" * HUGE_BYTES
    return Response(_body_status(response), json.dumps(padded).encode(), "application/json")


def _html(_response: Response) -> Response:
    return Response(200, _HTML, "text/html; charset=utf-8")


_GARBLERS = {"json": _truncated, "types": _wrong_types, "huge": _huge, "html": _html}
