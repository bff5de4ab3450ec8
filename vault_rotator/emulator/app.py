"""Routing: which handler answers a request, with faults, counts and the inference log.

Decisions where the spec is silent:

- A path the configured dialect does not serve (e.g. ``/v1/keys`` on dialect A) is a 404 with
  the error body, before any auth; a served path with another method is a 405.
- Faults, request counts and the inference log apply to the spec's routes, never to
  ``/_emulator/``. A request is counted once routed, whatever its answer.
- ``GET {item path}`` is the route ``get`` (for faults and counts).
- An unexpected exception in a handler is a 500 ``server_error``, logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import structlog

from vault_rotator.emulator.clock import Clock
from vault_rotator.emulator.dialects import Dialect
from vault_rotator.emulator.faults import COMMITTING_ROUTES, Fault, FaultTable
from vault_rotator.emulator.inference import Inference
from vault_rotator.emulator.inspection import PREFIX, Inspection
from vault_rotator.emulator.management import Management
from vault_rotator.emulator.recorder import Recorder
from vault_rotator.emulator.store import KeyStore, UnknownKeyError
from vault_rotator.emulator.wire import BadRequestError, Request, Response, error_response

log = structlog.get_logger("vault_rotator.emulator")

Handler = Callable[[Request, str | None], Response]
INFERENCE_PATHS = {
    "/v1/models": ("GET", "models"),
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/embeddings": ("POST", "embeddings"),
}


class App:
    """Maps a :class:`Request` to a :class:`Response`."""

    def __init__(
        self,
        *,
        dialect: Dialect,
        store: KeyStore,
        management: Management,
        inference: Inference,
        inspection: Inspection,
        faults: FaultTable,
        recorder: Recorder,
        clock: Clock,
        sleep: Callable[[float], object],
    ) -> None:
        self._dialect = dialect
        self._store = store
        self._management = management
        self._inference = inference
        self._inspection = inspection
        self._faults = faults
        self._recorder = recorder
        self._clock = clock
        self._sleep = sleep
        self._collection: dict[str, tuple[str, Handler]] = {
            "GET": ("list", management.list),
            "POST": ("create", management.create),
        }
        self._item: dict[str, tuple[str, Handler]] = {
            "GET": ("get", management.get),
            "PATCH": ("update", management.update),
            "DELETE": ("delete", management.delete),
        }

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except Exception:
            log.exception("emulator_error", method=request.method, path=request.path)
            return error_response(500, "internal emulator error")

    def _route(self, request: Request) -> Response:
        path = request.path
        if path == PREFIX or path.startswith(PREFIX + "/"):
            return _guarded(lambda: self._inspection.serve(request))
        if path in INFERENCE_PATHS:
            method, route = INFERENCE_PATHS[path]
            if request.method != method:
                return _not_allowed(request, [method])
            return self._infer(route, request)
        table, key_id = self._management_table(path)
        if table is None:
            return error_response(
                404,
                f"no route {request.method} {path} (this server speaks dialect "
                f"{self._dialect.name.upper()}: keys at {self._dialect.collection})",
            )
        if request.method not in table:
            return _not_allowed(request, list(table))
        route, handler = table[request.method]
        response = self._with_faults(route, lambda: self._manage(handler, request, key_id))
        if route in COMMITTING_ROUTES:
            name = _requested_name(request) if route == "create" else None
            self._recorder.log_mutation(route, key_id or None, name, response.status, self._clock())
        return response

    def _management_table(self, path: str) -> tuple[dict[str, tuple[str, Handler]] | None, str]:
        collection = self._dialect.collection
        if path == collection:
            return self._collection, ""
        key_id = path.removeprefix(collection + "/")
        if key_id != path and key_id and "/" not in key_id:
            return self._item, key_id
        return None, ""

    def _manage(self, handler: Handler, request: Request, key_id: str) -> Response:
        denial = self._management.authorize(request)
        if denial is not None:
            return denial
        return _guarded(lambda: handler(request, key_id or None))

    def _infer(self, route: str, request: Request) -> Response:
        key = self._store.find(request.api_key() or "")
        response = self._with_faults(route, lambda: self._inference.serve(route, request, key))
        key_id = None if key is None else key.id
        self._recorder.log_inference(key_id, route, response.status, self._clock())
        return response

    def _with_faults(self, route: str, process: Callable[[], Response]) -> Response:
        self._recorder.count(route)
        at = self._clock()
        fault = self._faults.draw(route)
        response = process() if fault is None else self._faulty(fault, process)
        retry_after = response.headers.get("Retry-After")
        self._recorder.log_request(
            route,
            response.status,
            at,
            self._clock(),
            fault=None if fault is None else fault.describe(),
            retry_after=_seconds(retry_after),
        )
        return response

    def _faulty(self, fault: Fault, process: Callable[[], Response]) -> Response:
        if fault.latency:
            self._sleep(fault.latency)
        if fault.status is not None:
            return fault.answer(self._clock())
        return fault.distort(process())


def _guarded(process: Callable[[], Response]) -> Response:
    """Answer 400 for a malformed request and 404 for an unknown key id."""
    try:
        return process()
    except BadRequestError as exc:
        return error_response(400, str(exc))
    except UnknownKeyError as exc:
        return error_response(404, f"no key with id {exc.args[0]!r}")


def _seconds(header: str | None) -> float | None:
    try:
        return None if header is None else float(header)
    except ValueError:
        return None


def _requested_name(request: Request) -> str | None:
    """The ``name`` a create asked for, if its body is a JSON object with a string name."""
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    name = body.get("name") if isinstance(body, dict) else None
    return name if isinstance(name, str) else None


def _not_allowed(request: Request, methods: list[str]) -> Response:
    response = error_response(405, f"{request.method} is not allowed on {request.path}")
    response.headers["Allow"] = ", ".join(methods)
    return response
