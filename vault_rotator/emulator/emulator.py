"""The :class:`Emulator`: ARouter's key-management and inference API, in process or over HTTP.

It wires the store, the dialect's handlers, faults and the HTTP server, and offers the
inspection helpers tests use. See the package docstring for an example.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from vault_rotator.emulator.app import INFERENCE_PATHS, App
from vault_rotator.emulator.clock import Clock
from vault_rotator.emulator.dialects import DIALECTS
from vault_rotator.emulator.faults import Fault, FaultTable
from vault_rotator.emulator.fields import parse_seed
from vault_rotator.emulator.inference import Inference
from vault_rotator.emulator.inspection import Inspection
from vault_rotator.emulator.management import Management, ManagementKeys
from vault_rotator.emulator.recorder import Recorder
from vault_rotator.emulator.server import HttpServer
from vault_rotator.emulator.store import KeyStore
from vault_rotator.emulator.wire import Request

PAGING_MODES = ("token", "offset")
_CALL_BODIES: dict[str, dict[str, Any] | None] = {
    "models": None,
    "chat": {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}]},
    "embeddings": {"model": "openai/text-embedding-3-small", "input": "ping"},
}
_CALL_PATHS = {route: path for path, (_, route) in INFERENCE_PATHS.items()}


class Emulator:
    """A fake ARouter serving one dialect; ``start()`` it (or use ``with``) to get a URL."""

    def __init__(
        self,
        *,
        dialect: str = "a",
        management_keys: Iterable[str] = (),
        paging: str = "token",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        clock_offset: float = 0.0,
        last_used_granularity: float = 0.0,
        usage_lag: float = 0.0,
        persist_path: str | os.PathLike[str] | None = None,
        allow_live_management: bool = False,
        seed: int = 0,
    ) -> None:
        _check_options(dialect, paging, last_used_granularity, usage_lag)
        self.dialect = DIALECTS[dialect]
        self._host, self._port = host, port
        self._clock: Clock = clock or time.time
        self._offset = float(clock_offset)
        self._persist_path = None if persist_path is None else Path(persist_path)
        self._store = KeyStore(
            dialect=dialect,
            clock=self._provider_now,
            seed=seed,
            usage_lag=usage_lag,
            granularity=last_used_granularity,
            on_change=None if self._persist_path is None else self._save,
        )
        self._load()
        self._faults = FaultTable(seed)
        self._recorder = Recorder()
        self._stopping = threading.Event()
        self._server: HttpServer | None = None
        self._management = ManagementKeys(management_keys)
        self._app = self._build_app(self._management, paging, allow_live_management)

    def _build_app(self, keys: ManagementKeys, paging: str, allow_live: bool) -> App:
        store, clock = self._store, self._provider_now
        return App(
            dialect=self.dialect,
            store=store,
            management=Management(
                dialect=self.dialect,
                store=store,
                keys=keys,
                tokens=paging == "token",
                allow_live=allow_live,
                clock=clock,
            ),
            inference=Inference(store=store, management_keys=keys, clock=clock),
            inspection=Inspection(store=store, faults=self._faults, recorder=self._recorder),
            faults=self._faults,
            recorder=self._recorder,
            clock=clock,
            sleep=self._stopping.wait,
        )

    def _provider_now(self) -> float:
        return self._clock() + self._offset

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._stopping.clear()
        self._server = HttpServer(self._app.handle, self._host, self._port)
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving; close every connection and thread. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            self._stopping.set()  # cut injected latencies short
            server.stop()

    def __enter__(self) -> Emulator:
        return self if self._server is not None else self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host = self._server.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self._server.port}"

    # -- faults ---------------------------------------------------------------------------

    def set_fault(
        self,
        route: str,
        *,
        status: int | None = None,
        error_rate: float = 1.0,
        count: int | None = None,
        retry_after: float | None = None,
        rate_limit_reset: float | None = None,
        latency: float = 0.0,
        drop_after_commit: bool = False,
        garbage: str | None = None,
        trickle: float = 0.0,
        trickle_body: float = 0.0,
    ) -> None:
        """Add a fault on ``route`` (see :mod:`vault_rotator.emulator.faults`)."""
        fault = Fault(
            route=route,
            status=status,
            error_rate=error_rate,
            count=count,
            retry_after=retry_after,
            rate_limit_reset=rate_limit_reset,
            latency=latency,
            drop_after_commit=drop_after_commit,
            garbage=garbage,
            trickle=trickle,
            trickle_body=trickle_body,
        )
        self._faults.add(fault)

    def add_management_key(self, value: str) -> None:
        """Accept another management key (as after rotating it in the provider's console)."""
        self._management.add(value)

    def revoke_management_key(self, value: str) -> None:
        """Stop accepting a management key: management calls with it get 401."""
        self._management.revoke(value)

    def clear_faults(self, route: str | None = None) -> None:
        """Remove every fault, or only ``route``'s."""
        self._faults.clear(route)

    # -- keys and traffic -----------------------------------------------------------------

    def seed_key(
        self,
        name: str,
        *,
        allowed_providers: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None,
        spending_limit: float | None = None,
        limit_reset: str | None = None,
        label: str | None = None,
        created_at: datetime | float | str | None = None,
        expires_at: datetime | float | str | None = None,
        disabled: bool = False,
    ) -> tuple[str, str]:
        """Create a key directly in the store; return ``(id, value)``. Times are provider time."""
        body = {
            "name": name,
            "allowed_providers": None if allowed_providers is None else list(allowed_providers),
            "allowed_models": None if allowed_models is None else list(allowed_models),
            "spending_limit": spending_limit,
            "limit_reset": limit_reset,
            "label": label,
            "created_at": _epoch(created_at),
            "expires_at": _epoch(expires_at),
            "disabled": disabled,
        }
        new, when = parse_seed(body)
        key, value = self._store.create(new, created_at=when)
        return key.id, value

    def call(self, value: str, route: str = "chat", *, model: str | None = None) -> int:
        """Make one inference request with ``value``; return the HTTP status.

        Over HTTP when running, else straight into the request handler.
        """
        if route not in _CALL_BODIES:
            raise ValueError(f"route must be one of {', '.join(_CALL_BODIES)}")
        path, body = _CALL_PATHS[route], _CALL_BODIES[route]
        if body is not None and model is not None:
            body = {**body, "model": model}
        method = "GET" if body is None else "POST"
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {value}", "Content-Type": "application/json"}
        if self._server is None:
            request = Request.build(method, path, headers.items(), data)
            return self._app.handle(request).status
        return _http_status(self._server, method, path, data, headers)

    def all_keys(self) -> list[dict[str, Any]]:
        """Every key ever created (deleted too), oldest first, with true usage; no values."""
        return self._store.all_keys()

    def live_keys(self) -> list[dict[str, Any]]:
        return [key for key in self._store.all_keys() if not key["deleted"]]

    def inference_log(self) -> list[dict[str, Any]]:
        return self._recorder.inference_log()

    def mutation_log(self) -> list[dict[str, Any]]:
        """Every create, update and delete request: route, key id, requested name, status."""
        return self._recorder.mutation_log()

    def request_counts(self) -> dict[str, int]:
        return self._recorder.counts()

    def request_log(self) -> list[dict[str, Any]]:
        """Every request to a spec route: route, status, ``at`` and ``answered`` (epoch
        seconds, provider clock), the fault that fired (or None), the Retry-After answered."""
        return self._recorder.request_log()

    def key_id_for_value(self, value: str) -> str | None:
        key = self._store.find(value)
        return None if key is None else key.id

    # -- persistence ----------------------------------------------------------------------

    def _load(self) -> None:
        path = self._persist_path
        if path is None or not path.exists():
            return
        try:
            self._store.load(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot load emulator state from {path}: {exc}") from exc

    def _save(self, state: dict[str, Any]) -> None:
        assert self._persist_path is not None
        scratch = self._persist_path.with_name(self._persist_path.name + ".tmp")
        scratch.write_text(json.dumps(state))
        os.replace(scratch, self._persist_path)


def _check_options(dialect: str, paging: str, granularity: float, lag: float) -> None:
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    if paging not in PAGING_MODES:
        raise ValueError(f"paging must be one of {', '.join(PAGING_MODES)}, not {paging!r}")
    if granularity < 0 or lag < 0:
        raise ValueError("last_used_granularity and usage_lag must not be negative")


def _epoch(moment: datetime | float | str | None) -> float | str | None:
    if not isinstance(moment, datetime):
        return moment
    if moment.tzinfo is None:
        raise ValueError("datetimes given to the emulator must be timezone-aware")
    return moment.timestamp()


def _http_status(
    server: HttpServer, method: str, path: str, data: bytes, headers: dict[str, str]
) -> int:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request(method, path, body=data or None, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
