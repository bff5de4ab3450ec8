"""The ``/_emulator/`` routes: inspect and drive a running emulator over HTTP (no auth).

::

    GET    /_emulator/keys            {"data": [every key, deleted ones too; no values]}
    POST   /_emulator/keys            {"name", ...seed_key arguments} -> 201 {"id", "key"}
    GET    /_emulator/inference-log   {"data": [{"key_id", "route", "status", "at"}, ...]}
    GET    /_emulator/mutation-log    {"data": [{"route", "key_id", "name", "status", "at"}, ...]}
    GET    /_emulator/request-log     {"data": [{"route", "status", "at", "answered", "fault",
                                                 "retry_after"}, ...]}
    GET    /_emulator/requests        {"data": {route: count}}
    POST   /_emulator/faults          {"route", ...set_fault arguments} -> 204
    DELETE /_emulator/faults          clear every fault (``?route=R``: only R's) -> 204

They are a loopback test helper: bind the emulator to a public address only on purpose.
"""

from __future__ import annotations

from collections.abc import Callable

from vault_rotator.emulator.faults import Fault, FaultTable
from vault_rotator.emulator.fields import parse_seed
from vault_rotator.emulator.recorder import Recorder
from vault_rotator.emulator.store import KeyStore
from vault_rotator.emulator.wire import (
    BadRequestError,
    Request,
    Response,
    empty_response,
    error_response,
    json_response,
)

PREFIX = "/_emulator"


class Inspection:
    """Handlers for ``/_emulator/`` routes."""

    def __init__(self, *, store: KeyStore, faults: FaultTable, recorder: Recorder) -> None:
        self._store = store
        self._faults = faults
        self._recorder = recorder
        self._routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("GET", "/keys"): lambda _: json_response(200, {"data": self._store.all_keys()}),
            ("POST", "/keys"): self._seed,
            ("GET", "/inference-log"): lambda _: self._data(self._recorder.inference_log()),
            ("GET", "/mutation-log"): lambda _: self._data(self._recorder.mutation_log()),
            ("GET", "/request-log"): lambda _: self._data(self._recorder.request_log()),
            ("GET", "/requests"): lambda _: self._data(self._recorder.counts()),
            ("POST", "/faults"): self._set_fault,
            ("DELETE", "/faults"): self._clear_faults,
        }

    def serve(self, request: Request) -> Response:
        sub = request.path.removeprefix(PREFIX)
        handler = self._routes.get((request.method, sub))
        if handler is not None:
            return handler(request)
        if any(path == sub for _, path in self._routes):
            return error_response(405, f"{request.method} is not allowed on {request.path}")
        return error_response(404, f"no emulator route {request.path}")

    @staticmethod
    def _data(data: object) -> Response:
        return json_response(200, {"data": data})

    def _seed(self, request: Request) -> Response:
        new, created_at = parse_seed(request.json_object())
        key, value = self._store.create(new, created_at=created_at)
        return json_response(201, {"id": key.id, "key": value})

    def _set_fault(self, request: Request) -> Response:
        try:
            self._faults.add(Fault(**request.json_object()))
        except (TypeError, ValueError) as exc:  # an unknown or invalid argument
            raise BadRequestError(str(exc)) from exc
        return empty_response(204)

    def _clear_faults(self, request: Request) -> Response:
        self._faults.clear(request.param("route"))
        return empty_response(204)
