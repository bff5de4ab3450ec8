"""The Vault / OpenBao adapter: the only module that imports hvac.

hvac's exceptions are translated at this boundary into :mod:`vault_rotator.errors`:
a sealed or unreachable server is :class:`StoreUnavailableError`, a revoked token or missing
capability :class:`StorePermissionError`, a lost check-and-set :class:`CasConflictError`.
Messages name the operation and the path, never the token or a secret value.

A 429 (a rate-limit quota) is backed off on every call, KV and hvac alike (:mod:`.backoff`:
jittered, honouring ``Retry-After``, within a deadline); past that it is a
:class:`StoreUnavailableError` saying "rate limited (429)", which the daemon retries next poll.

A :class:`VaultConnection` logs in lazily with an :class:`~.auth.Authenticator` (token, AppRole
or Kubernetes) and keeps its token alive through a :class:`~.session.TokenSession`: before each
operation the token is renewed when less than a third of its TTL is left, or replaced by a new
login when it cannot be; an operation refused with 403 is retried once after a new login when
the token itself was at fault. Logins go out without a token; the caller-token methods
(:meth:`VaultConnection.lookup_token`, :meth:`VaultConnection.capabilities_of`) never touch the
session.

Connection settings follow Vault's own names (:func:`connect_from_env`): ``VAULT_ADDR``,
``VAULT_NAMESPACE``, ``VAULT_CACERT``, ``VAULT_SKIP_VERIFY``, and for the login
``VAULT_AUTH_METHOD`` with ``VAULT_TOKEN`` / ``VAULT_TOKEN_FILE`` (token),
``VAULT_ROLE_ID_FILE`` / ``VAULT_SECRET_ID_FILE`` (approle), ``VAULT_K8S_ROLE`` /
``VAULT_K8S_JWT_FILE`` (kubernetes), ``VAULT_AUTH_MOUNT`` (either login's mount).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, urlsplit

import hvac
import hvac.exceptions
import requests
import requests.adapters
import requests.utils
import structlog

from vault_rotator.display import shown
from vault_rotator.errors import (
    CasConflictError,
    ConfigError,
    RecordTooLargeError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.ports.kv import Versioned
from vault_rotator.secret import Secret
from vault_rotator.store.auth import Authenticator, TokenAuth, auth_from_env
from vault_rotator.store.backoff import Backoff
from vault_rotator.store.session import Step, TokenSession
from vault_rotator.store.transport import Redirected, Transport

T = TypeVar("T")
log = structlog.get_logger(__name__)
DEFAULT_TIMEOUT_S = 10.0
POOL_SIZE = 32  # kept-alive connections to Vault: the daemon's workers share them
WRITE_OPERATIONS = frozenset({"write", "update metadata", "destroy"})
_HEALTH = "/v1/sys/health"


@contextlib.contextmanager
def _translate(op: str, where: str) -> Iterator[None]:
    """Turn hvac/requests failures of ``op`` on ``where`` into project errors."""
    try:
        yield
    except hvac.exceptions.Forbidden as exc:
        raise StorePermissionError(
            f"Vault denied {op} on {where}: permission denied "
            "(token revoked, expired or lacking the capability)"
        ) from exc
    except hvac.exceptions.VaultDown as exc:
        raise StoreUnavailableError(f"Vault is sealed or down ({op} on {where})") from exc
    except (hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway) as exc:
        raise StoreUnavailableError(f"Vault failed {op} on {where}: server error") from exc
    except hvac.exceptions.RateLimitExceeded as exc:  # what .backoff gave up on
        raise StoreUnavailableError(
            f"Vault rate limited (429) {op} on {where}: still refused after backing off"
        ) from exc
    except hvac.exceptions.InvalidRequest as exc:
        if "check-and-set" in str(exc):
            raise CasConflictError(f"check-and-set conflict on {where}") from exc
        if _too_large(exc):
            raise RecordTooLargeError(f"Vault refused {op} on {where} as too large: "
                                      f"{_first_line(exc)}") from exc  # fmt: skip
        raise StoreError(f"Vault rejected {op} on {where}: {_first_line(exc)}") from exc
    except hvac.exceptions.Unauthorized as exc:
        raise StorePermissionError(f"Vault refused the token ({op} on {where})") from exc
    except hvac.exceptions.VaultError as exc:
        if _too_large(exc):
            raise RecordTooLargeError(f"Vault refused {op} on {where} as too large: "
                                      f"{_first_line(exc)}") from exc  # fmt: skip
        raise StoreError(f"Vault failed {op} on {where}: {_first_line(exc)}") from exc
    except (requests.exceptions.RequestException, OSError, http.client.HTTPException) as exc:
        raise StoreUnavailableError(
            f"Vault unreachable ({op} on {where}): {type(exc).__name__}"
        ) from exc
    except RecursionError as exc:  # JSON nested past the parser's depth (anyone may write it)
        raise StoreError(f"Vault answered {op} on {where} with JSON nested too deep") from exc


def _too_large(exc: Exception) -> bool:
    """Vault refused a body past its listener's limits: ``max_request_json_strings`` and the
    like ("refused JSON input due to high complexity"), or ``max_request_size`` (413)."""
    text = str(exc).lower()
    return "high complexity" in text or "exceeded maximum" in text or "too large" in text


def _deleted_version(exc: hvac.exceptions.InvalidPath) -> bool:
    """hvac's test for a 404 that carries a deleted version's metadata (read_secret_version
    with ``raise_on_deleted_version=False``)."""
    try:
        return exc.json is not None and exc.json["data"]["metadata"]["deletion_time"] != ""
    except (KeyError, TypeError):
        return False


def _destroyed_version(exc: StoreError) -> dict[str, Any] | None:
    """The body of KV v2's 404 for a version destroyed alone (it carries the version's
    metadata, ``destroyed: true``; hvac re-raises it because its ``deletion_time`` is empty)."""
    cause = exc.__cause__
    if not isinstance(cause, hvac.exceptions.InvalidPath) or not isinstance(cause.json, dict):
        return None
    body = cause.json.get("data")
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        return cause.json
    return None


def _no_such_secret(exc: StoreError, where: str) -> bool:
    """True for KV v2's own "nothing here" 404 (``{"errors": []}``); raise for any other 404.

    A 404 that names an error (``no handler for route`` for a wrong mount, ``namespace not
    found``) or is not Vault's JSON at all (a proxy answering 404 to everything) is not "no
    data": taking it for one would show every key as never rotated.
    """
    cause = exc.__cause__
    if not isinstance(cause, hvac.exceptions.InvalidPath):
        return False
    if isinstance(cause.json, dict) and cause.json.get("errors") == []:
        return True
    errors = cause.errors if isinstance(cause.errors, list) else [cause.errors]
    said = str(errors[0]) if errors and errors[0] else "an answer that is not Vault's JSON"
    said = said[:120].encode("unicode_escape").decode("ascii")
    raise StoreError(
        f"Vault answered 404 for {where}, not as a KV v2 mount does ({said}): check "
        "VAULT_ADDR, VAULT_NAMESPACE and the policy's kv_mount"
    ) from cause


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


class VaultKv:
    """A KV v2 mount of one Vault server, implementing :class:`~.port.KvStore`."""

    def __init__(self, conn: VaultConnection, mount: str) -> None:
        self._conn = conn
        self._mount = mount.strip("/")
        self.write_count: collections.Counter[str] = collections.Counter()

    @property
    def mount(self) -> str:
        return self._mount

    def _where(self, path: str) -> str:
        return f"{self._mount}/{path}"

    def _api(
        self,
        client: hvac.Client,
        method: str,
        kind: str,
        path: str,
        through_hvac: Callable[[hvac.Client], T],
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """One KV v2 call: through the lean transport when the connection has one, else (or
        for an answer that redirects) through hvac. Either way hvac's answer and exceptions."""
        transport = self._conn.transport
        if transport is None:
            return through_hvac(client)
        api_path = f"/v1/{quote(self._mount)}/{kind}/{quote(path)}"
        try:
            return transport.request(method, api_path, client.token, params=params, body=body)
        except Redirected:
            return through_hvac(client)

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        def read_version(c: hvac.Client) -> Any:
            try:
                return self._api(
                    c,
                    "GET",
                    "data",
                    path,
                    lambda c: c.secrets.kv.v2.read_secret_version(
                        path=path,
                        version=version,
                        mount_point=self._mount,
                        raise_on_deleted_version=False,
                    ),
                    params=None if version is None else {"version": version},
                )
            except hvac.exceptions.InvalidPath as exc:  # as hvac does: a deleted version's
                if _deleted_version(exc):  # metadata comes back instead of an error
                    return exc.json
                raise

        try:
            resp = self._conn.call(read_version, "read", self._where(path))
        except StoreError as exc:
            if (destroyed := _destroyed_version(exc)) is not None:
                return _parse_version(destroyed, self._where(path))
            if _no_such_secret(exc, self._where(path)):
                return None
            raise
        return _parse_version(resp, self._where(path))

    def current_version(self, path: str) -> int:
        meta = self._metadata(path)
        if meta is None:
            return 0
        value = meta.get("current_version", 0)
        if not isinstance(value, int):
            raise StoreError(f"Vault metadata of {self._where(path)} has no integer version")
        return value

    def _metadata(self, path: str) -> Mapping[str, Any] | None:
        try:
            resp = self._conn.call(
                lambda c: self._api(
                    c,
                    "GET",
                    "metadata",
                    path,
                    lambda c: c.secrets.kv.v2.read_secret_metadata(
                        path=path, mount_point=self._mount
                    ),
                ),
                "read metadata",
                self._where(path),
            )
        except StoreError as exc:
            if _no_such_secret(exc, self._where(path)):
                return None
            raise
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            raise StoreError(f"Vault answered malformed metadata for {self._where(path)}")
        return data

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        resp = self._conn.call(
            lambda c: self._api(
                c,
                "POST",
                "data",
                path,
                lambda c: c.secrets.kv.v2.create_or_update_secret(
                    path=path, secret=dict(data), cas=cas, mount_point=self._mount
                ),
                body={"options": {"cas": cas}, "data": dict(data)},
            ),
            "write",
            self._where(path),
        )
        self.write_count[path] += 1
        version = resp.get("data", {}).get("version") if isinstance(resp, dict) else None
        if not isinstance(version, int):
            raise StoreError(f"Vault answered a write of {self._where(path)} without a version")
        return version

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        self._conn.call(
            lambda c: self._api(
                c,
                "POST",
                "metadata",
                path,
                lambda c: c.secrets.kv.v2.update_metadata(
                    path=path, custom_metadata=dict(metadata), mount_point=self._mount
                ),
                body={"delete_version_after": "0s", "custom_metadata": dict(metadata)},
            ),
            "update metadata",
            self._where(path),
        )

    def destroy(self, path: str) -> None:
        self._conn.call(
            lambda c: self._api(
                c,
                "DELETE",
                "metadata",
                path,
                lambda c: c.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=path, mount_point=self._mount
                ),
            ),
            "destroy",
            self._where(path),
        )
        self.write_count[path] += 1

    def list(self, prefix: str) -> Sequence[str]:
        try:
            resp = self._conn.call(
                lambda c: self._api(
                    c,
                    "LIST",
                    "metadata",
                    prefix,
                    lambda c: c.secrets.kv.v2.list_secrets(path=prefix, mount_point=self._mount),
                ),
                "list",
                self._where(prefix),
            )
        except StoreError as exc:
            if _no_such_secret(exc, self._where(prefix)):
                return []
            raise
        keys = resp.get("data", {}).get("keys") if isinstance(resp, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise StoreError(f"Vault answered a malformed list of {self._where(prefix)}")
        return keys

    def capabilities(self, paths: Sequence[str]) -> dict[str, frozenset[str]]:
        result: dict[str, frozenset[str]] = {}
        for chunk in _chunks(paths):

            def ask(c: hvac.Client, chunk: list[str] = chunk) -> Any:
                return c.sys.get_capabilities(chunk)

            resp = self._conn.call(ask, "check capabilities", _named(chunk))
            result.update(_parse_capabilities(resp, chunk))
        return result


CAPABILITY_CHUNK = 500  # paths per sys/capabilities(-self) request: a listener takes 1000 strings


def _chunks(paths: Sequence[str]) -> list[list[str]]:
    """The paths in requests a default listener takes (an empty list is still asked once)."""
    items = list(paths)
    return [items[i : i + CAPABILITY_CHUNK] for i in range(0, max(len(items), 1), CAPABILITY_CHUNK)]


def _named(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _parse_capabilities(resp: Any, paths: Sequence[str]) -> dict[str, frozenset[str]]:
    data = resp.get("data", resp) if isinstance(resp, dict) else {}
    result: dict[str, frozenset[str]] = {}
    for path in paths:
        caps = data.get(path, []) if isinstance(data, dict) else None
        if not isinstance(caps, list):
            raise StoreError(f"Vault answered malformed capabilities for {path}")
        result[path] = frozenset(str(c) for c in caps)
    return result


def _parse_version(resp: Any, where: str) -> Versioned | None:
    body = resp.get("data") if isinstance(resp, dict) else None
    if not isinstance(body, dict):
        raise StoreError(f"Vault answered a malformed read of {where}")
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("version"), int):
        raise StoreError(f"Vault answered a read of {where} without version metadata")
    data = body.get("data")
    deleted = data is None or bool(meta.get("deletion_time")) or bool(meta.get("destroyed"))
    if data is not None and not isinstance(data, dict):
        raise StoreError(f"Vault answered a read of {where} whose data is not a map")
    custom = meta.get("custom_metadata") or {}
    return Versioned(
        data=data or {},
        version=meta["version"],
        created_time=str(meta.get("created_time", "")),
        deleted=deleted,
        custom_metadata={str(k): str(v) for k, v in custom.items()},
    )


class TokenInfo(NamedTuple):
    """What ``auth/token/lookup`` says of a caller's token (never the token itself)."""

    accessor: str
    display_name: str
    policies: tuple[str, ...]  # token and identity policies, sorted, without duplicates


class _CallerTokenError(StorePermissionError):
    """A caller-supplied token was refused: no reason to doubt our own session."""


class VaultConnection:
    """One Vault client whose token is obtained, renewed and replaced as needed.

    ``token`` (kept for compatibility) is shorthand for ``auth=TokenAuth(token)``; give one of
    the two. ``clock`` decides when to renew (epoch seconds); Vault decides expiry. ``backoff``
    waits out a 429 (:mod:`.backoff`; tests give one whose ``sleep`` does not wait).
    """

    def __init__(
        self,
        addr: str,
        token: str | None = None,
        *,
        auth: Authenticator | None = None,
        namespace: str | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        if not addr:
            raise ConfigError("VAULT_ADDR is not set: say where Vault is")
        if not addr.startswith(("http://", "https://")):
            raise ConfigError(
                f"VAULT_ADDR {shown(addr, 80)!r} is not an http:// or https:// URL "
                "(for example https://vault.example:8200)"
            )
        if auth is not None and token is not None:
            raise ConfigError("give VaultConnection a token or an authenticator, not both")
        self.addr = addr
        self._settings: dict[str, Any] = {
            "url": addr,
            "namespace": namespace,
            "verify": verify,
            "timeout": timeout,
        }
        self.backoff = backoff or Backoff()
        session = _lean_session(addr, self.backoff)
        # hvac takes a given session's verify over its own argument: set it on the session
        session.verify = self._settings["verify"] = _verify_once(verify)
        self._client = hvac.Client(token="", session=session, **self._settings)
        # KV calls go the lean way unless a proxy applies to Vault (then requests handles it)
        self.transport: Transport | None = None
        if not session.proxies:
            self.transport = Transport(
                addr,
                verify=session.verify,
                timeout=timeout,
                namespace=namespace,
                backoff=self.backoff,
            )
        self._mounts: dict[str, VaultKv] = {}
        # (operation, "ok" or the error's class name), for the daemon's metrics
        self.on_request: Callable[[str, str], None] = lambda _op, _status: None
        self._counts_lock = threading.Lock()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.session = TokenSession(
            auth if auth is not None else TokenAuth(token),
            _HvacAuthApi(self),
            on_token=self._use_token,
            clock=clock,
        )

    def _use_token(self, token: Secret) -> None:
        self._client.token = token.reveal()

    def _client_for(self, token: str) -> hvac.Client:
        """A client acting as ``token`` ("" for none), sharing this connection's HTTP pool."""
        return hvac.Client(token=token, session=self._client.session, **self._settings)

    def kv(self, mount: str) -> VaultKv:
        """The KV v2 mount at ``mount`` (one adapter per mount, shared)."""
        key = mount.strip("/")
        if key not in self._mounts:
            self._mounts[key] = VaultKv(self, key)
        return self._mounts[key]

    def check(self) -> None:
        """Raise a clear error if Vault is sealed/unreachable or the token is not accepted."""
        with _translate("health check", self.addr):
            status = self._client.sys.read_health_status(method="GET")
        if isinstance(status, dict) and status.get("sealed"):
            raise StoreUnavailableError(f"Vault at {self.addr} is sealed")
        self.call(lambda c: c.auth.token.lookup_self(), "token lookup", "auth/token/lookup-self")

    def call(self, fn: Callable[[hvac.Client], T], op: str, where: str) -> T:
        """Run an hvac call as this connection's token, with error translation.

        The token is renewed or replaced first when due; a 403 caused by the token itself
        (revoked, expired) leads to a new login and one retry.
        """
        used = self.session.token()
        try:
            return self._counted(fn, op, where)
        except _CallerTokenError:
            raise
        except StorePermissionError:
            if not self.session.recover(used):
                raise
        return self._counted(fn, op, where)

    def _counted(self, fn: Callable[[hvac.Client], T], op: str, where: str) -> T:
        """One translated call, reported to ``on_request`` as (operation, "ok" or error class)."""
        try:
            with _translate(op, where):
                result = fn(self._client)
        except StoreError as exc:
            self._count(op, type(exc).__name__)
            raise
        self._count(op, "ok")
        return result

    def _count(self, op: str, status: str) -> None:
        with self._counts_lock:
            self.counts[(op, status)] += 1
        self.on_request(op, status)

    def writes(self) -> int:
        """Vault writes sent so far (``write``, ``update metadata``, ``destroy``), any result."""
        with self._counts_lock:
            return sum(n for (op, _), n in self.counts.items() if op in WRITE_OPERATIONS)

    def reads(self) -> int:
        """Every other Vault request sent so far (reads, metadata reads, lists, capabilities)."""
        with self._counts_lock:
            return sum(n for (op, _), n in self.counts.items() if op not in WRITE_OPERATIONS)

    def renew_or_relogin(self, *, force: bool = False) -> Step:
        """Renew the token when due, or log in again when it cannot be renewed (a daemon timer).

        Returns what was done. ``force`` renews (or logs in) even when nothing is due.
        """
        return self.session.refresh(force=force)

    @property
    def refresh_at(self) -> float | None:
        """When the token will next need renewing (clock time); None if never or not logged in."""
        lease = self.session.lease
        return lease.refresh_at if lease is not None else None

    def lookup_token(self, token: str | Secret) -> TokenInfo:
        """Accessor, display name and policies of a caller's token.

        Asked AS that token (``auth/token/lookup-self``, which Vault's default policy grants),
        so the daemon needs no extra privilege. An unknown, expired or revoked caller token is
        :class:`StorePermissionError`; our own session is never touched.
        """
        value = token.reveal() if isinstance(token, Secret) else token
        if not value:
            raise StorePermissionError("no caller token given (auth/token/lookup-self)")
        where = "auth/token/lookup-self"
        try:
            with _translate("look up the caller's token", where):
                resp = self._client_for(value).auth.token.lookup_self()
        except StorePermissionError as exc:
            raise _CallerTokenError(
                f"Vault refused the caller's token ({where}): unknown, expired or revoked"
            ) from exc.__cause__
        return _token_info(resp)

    def capabilities_of(
        self, token: str | Secret, paths: Sequence[str]
    ) -> dict[str, frozenset[str]]:
        """A caller's capabilities on each path, asked as that token (``sys/capabilities-self``).

        An unknown, expired or revoked caller token is :class:`StorePermissionError`.
        """
        value = token.reveal() if isinstance(token, Secret) else token
        if not value:
            raise StorePermissionError("no caller token given (sys/capabilities-self)")
        where = "sys/capabilities-self"
        result: dict[str, frozenset[str]] = {}
        for chunk in _chunks(paths):
            try:
                with _translate("check caller capabilities", where):
                    resp = self._client_for(value).sys.get_capabilities(chunk)
            except StorePermissionError as exc:
                raise StorePermissionError(
                    f"Vault refused the caller's token ({where}): "
                    "unknown, expired, revoked or without the default policy"
                ) from exc.__cause__
            result.update(_parse_capabilities(resp, chunk))
        return result

    def close(self) -> None:
        """Close the connection; a token this connection logged in for is revoked first.

        A token handed to us (``token`` method) belongs to the caller and is left alone.
        """
        if self.session.auth.method != "token" and self.session.lease is not None:
            try:
                with _translate("revoke our token", "auth/token/revoke-self"):
                    self._client.auth.token.revoke_self()
            except StoreError as exc:  # it expires on its own; closing must not fail
                log.warning("could not revoke the login token", error=str(exc))
        if self.transport is not None:
            self.transport.close()
        self._client.adapter.close()


class _LeanSession(requests.Session):
    """A requests session for hvac's calls that skips requests' per-call merging.

    ``Session.request`` merges session-level params, headers, cookies, hooks and environment
    settings into every request; hvac sets none of them on the session, so that work (a fifth
    of a small call's CPU) is skipped: the request is prepared from what hvac passes and sent
    through the session (redirects, the pool and TLS as usual). A 429 is sent again after the
    waits of :class:`~.backoff.Backoff` (every hvac call: logins, lookups, renewals,
    capabilities), except on ``sys/health``, where a standby's 429 is an answer, not a refusal.
    """

    backoff = Backoff()

    def request(  # type: ignore[override]  # hvac passes keywords only
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        data: Any = None,
        json: Any = None,
        headers: Any = None,
        timeout: Any = None,
        verify: Any = None,
        cert: Any = None,
        allow_redirects: bool = True,
        **_ignored: Any,
    ) -> requests.Response:
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=method.upper(), url=url, headers=headers, params=params, data=data, json=json
        )

        def send() -> requests.Response:
            return self.send(
                prepared.copy(),
                timeout=timeout,
                verify=verify,
                cert=cert,
                proxies=self.proxies,
                allow_redirects=allow_redirects,
            )

        path = urlsplit(prepared.url or "").path
        if path.endswith(_HEALTH):
            return send()
        return self.backoff.send(
            send,
            lambda response: response.status_code,
            lambda response: response.headers.get("Retry-After"),
            what=f"{prepared.method} {path}",
        )


def _lean_session(addr: str, backoff: Backoff) -> requests.Session:
    """A requests session that reads the environment once, not on every call.

    requests looks up the proxy variables (and ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, see
    :func:`_verify_once`) for each request: about a third of a small call's CPU. They are read
    here, once, and the per-call lookup is turned off; the result is the same for any
    environment that does not change while the process runs. Its pool keeps up to
    :data:`POOL_SIZE` connections alive, one per worker that talks to Vault at once.
    """
    session = _LeanSession()
    session.backoff = backoff
    session.proxies.update(requests.utils.get_environ_proxies(addr))
    session.trust_env = False
    pool = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("http://", pool)
    session.mount("https://", pool)
    return session


def _verify_once(verify: bool | str) -> bool | str:
    """``verify`` as requests would resolve it from the environment on each call (once)."""
    if verify is not True:
        return verify
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _token_info(resp: Any) -> TokenInfo:
    data = resp.get("data") if isinstance(resp, dict) else None
    if not isinstance(data, dict):
        raise StoreError("Vault answered auth/token/lookup without data")
    accessor, name = data.get("accessor"), data.get("display_name")
    policies = [*(data.get("policies") or []), *(data.get("identity_policies") or [])]
    if not isinstance(accessor, str) or not all(isinstance(p, str) for p in policies):
        raise StoreError("Vault answered a malformed auth/token/lookup")
    return TokenInfo(accessor, name if isinstance(name, str) else "", tuple(sorted(set(policies))))


class _HvacAuthApi:
    """:class:`~.auth.AuthApi` over hvac: logins without a token, lookups as a given token."""

    def __init__(self, conn: VaultConnection) -> None:
        self._conn = conn

    def login(
        self, mount: str, payload: Mapping[str, str | Secret], *, what: str
    ) -> Mapping[str, Any]:
        where = f"auth/{mount}/login"
        hidden = [v.reveal() for v in payload.values() if isinstance(v, Secret)]
        body = {k: v.reveal() if isinstance(v, Secret) else v for k, v in payload.items()}
        client = self._conn._client_for("")
        with _translate(what, where), _refusal(what, where, hidden):
            resp = client.adapter.post(f"/v1/{where}", json=body)
        return _block(resp, "auth", where)

    def lookup_self(self, token: Secret) -> Mapping[str, Any]:
        where = "auth/token/lookup-self"
        with _translate("token lookup", where):
            resp = self._conn._client_for(token.reveal()).auth.token.lookup_self()
        return _block(resp, "data", where)

    def renew_self(self, token: Secret) -> Mapping[str, Any]:
        where = "auth/token/renew-self"
        with _translate("token renewal", where):
            resp = self._conn._client_for(token.reveal()).auth.token.renew_self()
        return _block(resp, "auth", where)


def _block(resp: Any, key: str, where: str) -> Mapping[str, Any]:
    block = resp.get(key) if isinstance(resp, dict) else None
    if not isinstance(block, dict):
        raise StoreError(f"Vault answered {where} without {key!r}")
    return block


@contextlib.contextmanager
def _refusal(what: str, where: str, hidden: Sequence[str]) -> Iterator[None]:
    """A refused login as one line with Vault's reason, every credential in it masked."""
    try:
        yield
    except (
        hvac.exceptions.Forbidden,
        hvac.exceptions.InvalidRequest,
        hvac.exceptions.Unauthorized,
    ) as exc:
        reason = _reason(exc, hidden)
        raise StorePermissionError(f"Vault refused the {what} ({where}): {reason}") from exc
    except (hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway) as exc:
        reason = _reason(exc, hidden)
        raise StoreUnavailableError(f"Vault failed the {what} ({where}): {reason}") from exc


def _reason(exc: hvac.exceptions.VaultError, hidden: Sequence[str]) -> str:
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) and errors else ""
    text = " ".join(text.split()) or "no reason given"
    for value in hidden:
        text = text.replace(value, "<redacted>")
    return text[:200]


def tls_verify_from_env(env: Mapping[str, str]) -> bool | str:
    """``VAULT_SKIP_VERIFY`` (a boolean) wins, else ``VAULT_CACERT`` (a CA file), else True."""
    skip = env.get("VAULT_SKIP_VERIFY", "").strip().lower()
    if skip not in {"", "0", "false", "no", "off", "1", "true", "yes", "on"}:
        raise ConfigError(f"VAULT_SKIP_VERIFY={skip!r} is not a boolean (true or false)")
    if skip in {"1", "true", "yes", "on"}:
        return False
    cacert = env.get("VAULT_CACERT", "")
    if cacert:
        if not Path(cacert).is_file():
            raise ConfigError(f"VAULT_CACERT={cacert}: no such file")
        return cacert
    return True


def connect_from_env(
    env: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.time
) -> VaultConnection:
    """A connection from ``VAULT_ADDR``, the login variables, ``VAULT_NAMESPACE`` and TLS ones.

    Nothing is sent to Vault yet: the first operation (or :meth:`VaultConnection.check`) logs in.
    """
    env = os.environ if env is None else env
    auth = auth_from_env(env)
    return VaultConnection(
        env.get("VAULT_ADDR", ""),
        auth=auth,
        namespace=env.get("VAULT_NAMESPACE") or None,
        verify=tls_verify_from_env(env),
        clock=clock,
    )
