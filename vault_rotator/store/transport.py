"""A lean HTTP/1.1 transport for the KV v2 calls the rotation makes by the thousand.

hvac sends through requests, whose per-call work (preparing, merging settings, cookie jars,
header objects) costs several times what the call itself costs on a loopback or LAN Vault; a
mass rotation makes about fifteen Vault calls per key. :class:`Transport` sends those calls
(read, write, metadata, list, destroy: :class:`~.vault.VaultKv`) over plain ``http.client``
connections kept alive, one per thread, and answers what hvac's JSON adapter would: the decoded
JSON of a 2xx answer (None without a body), or hvac's own exception for any other status
(``hvac.utils.raise_for_error``), so errors are translated exactly as before. Logins, token
lookups and capabilities still go through hvac.

It is used only where it behaves as requests would: not when a proxy variable applies to
``VAULT_ADDR`` (requests' proxy support is then kept), and not for an answer that redirects
(a standby node's 307: :class:`Redirected`, the caller sends that call through hvac, which
follows it). TLS: the same ``verify`` (a CA bundle, True for the system's, False to skip: warned
once per connection as urllib3 does). A connection idle longer than :data:`IDLE_S` is opened
afresh (servers close idle ones), and a GET or LIST whose kept-alive connection turns out
closed is sent once more on a new one; a write never is (as with requests). An answer 429 (a
rate-limit quota: nothing was done) is sent again, writes included, after the waits of
:class:`~.backoff.Backoff`; the 429 it gives up on is answered as any other status.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
import warnings
import weakref
from typing import Any

import hvac.utils
import urllib3.exceptions

from vault_rotator.errors import AnswerTooLargeError
from vault_rotator.store.backoff import Backoff

IDLE_S = 20.0  # reopen a connection idle this long (Vault closes idle ones after minutes)
RETRYABLE_METHODS = frozenset({"GET", "LIST"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# An answer larger than this is not read: the largest record the rotator writes is an emergency
# shard (about 86 KB) and raft's entries stop at 1 MiB, so only a hostile writer's record (on a
# backend without that limit) gets here; a pass's bytes read stay bounded by its reads.
MAX_ANSWER_BYTES = 2 * 1024 * 1024


class Redirected(Exception):
    """The answer was a redirect (nothing was done): send the call the other way."""


class Transport:
    """Vault's HTTP API over kept-alive ``http.client`` connections, one per thread."""

    def __init__(
        self,
        addr: str,
        *,
        verify: bool | str,
        timeout: float,
        namespace: str | None,
        backoff: Backoff | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(addr)
        self.https = url.scheme == "https"
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if self.https else 80)
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        self.namespace = namespace
        self.verify = verify
        self.backoff = backoff or Backoff()
        self._context: ssl.SSLContext | None = self._tls(verify) if self.https else None
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()  # every thread's, for close()
        self._lock = threading.Lock()
        # closed with the transport, as urllib3 closes its pool's (no socket left to the GC)
        weakref.finalize(self, _close_all, self._open)

    @staticmethod
    def _tls(verify: bool | str) -> ssl.SSLContext:
        if verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)

    def _connection(self) -> http.client.HTTPConnection:
        local = self._local
        conn: http.client.HTTPConnection | None = getattr(local, "conn", None)
        fresh = conn is not None and time.monotonic() - local.used_at < IDLE_S
        if conn is not None and fresh and conn in self._open:
            return conn
        if conn is not None:
            self._forget(conn)
        if self.https:
            if self.verify is False:
                warnings.warn(
                    f"Unverified HTTPS request is being made to host '{self.host}' "
                    "(VAULT_SKIP_VERIFY)",
                    urllib3.exceptions.InsecureRequestWarning,
                    stacklevel=4,
                )
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        with self._lock:
            self._open.add(conn)
        local.conn, local.used_at = conn, time.monotonic()
        return conn

    def _forget(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        with self._lock:
            self._open.discard(conn)

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._forget(conn)
            self._local.conn = None

    def close(self) -> None:
        """Close every thread's connection (a thread that calls again opens a new one)."""
        with self._lock:
            conns = list(self._open)
            self._open.clear()
        for conn in conns:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        token: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one call; its JSON (None if no body) or hvac's exception for the status."""
        target = self.prefix + path
        if params:
            target += "?" + urllib.parse.urlencode(params)
        headers = {"X-Vault-Request": "true", "Accept": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        status, kind, payload, _ = self.backoff.send(
            lambda: self._send(method, target, headers, data),
            lambda answer: answer[0],
            lambda answer: answer[3],
            what=f"{method} {path}",
        )
        if status in REDIRECTS:
            raise Redirected(f"{method} {path} answered {status}")
        return _answer(method, target, status, kind, payload)

    def _send(
        self, method: str, target: str, headers: dict[str, str], data: bytes | None
    ) -> tuple[int, str, bytes, str | None]:
        """(status, content type, body, Retry-After) of one call."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = getattr(conn, "sock", None) is not None
            try:
                conn.request(method, target, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read(MAX_ANSWER_BYTES + 1)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop()
                if attempt == 1 and reused and method in RETRYABLE_METHODS:
                    continue  # the server had closed the kept-alive connection
                raise
            except Exception:
                self._drop()
                raise
            if len(payload) > MAX_ANSWER_BYTES:
                self._drop()  # the rest is unread: this connection is done
                raise AnswerTooLargeError(
                    f"Vault answered {method} {target.split('?', 1)[0]} with more than "
                    f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB: not read (no record the rotator "
                    "writes is that large)"
                )
            self._local.used_at = time.monotonic()
            if response.will_close:
                self._drop()
            kind = response.getheader("Content-Type", "") or ""
            return response.status, kind, payload, response.getheader("Retry-After")
        raise AssertionError("unreachable")  # pragma: no cover


def _close_all(conns: set[http.client.HTTPConnection]) -> None:
    for conn in list(conns):
        conn.close()


def _answer(method: str, target: str, status: int, kind: str, payload: bytes) -> Any:
    """What hvac's JSON adapter returns for an answer, or the exception it raises."""
    parsed: Any = None
    if payload and kind.startswith("application/json"):
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = None
    if 200 <= status < 300:
        return parsed
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    text = payload.decode("utf-8", "replace")
    hvac.utils.raise_for_error(
        method.lower(),
        target,
        status,
        None if errors is not None else text,
        errors=errors,
        text=text,
        json=parsed if isinstance(parsed, dict) else None,
    )
    raise AssertionError("raise_for_error returned")  # pragma: no cover
