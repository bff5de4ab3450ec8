"""The Vault / OpenBao adapter: the only module that imports hvac.

hvac's exceptions are translated at this boundary into :mod:`vault_rotator.errors`:
a sealed or unreachable server is :class:`StoreUnavailableError`, a revoked token or missing
capability :class:`StorePermissionError`, a lost check-and-set :class:`CasConflictError`.
Messages name the operation and the path, never the token or a secret value.

Connection settings follow Vault's own names: ``VAULT_ADDR``, ``VAULT_TOKEN``,
``VAULT_NAMESPACE``, ``VAULT_CACERT``, ``VAULT_SKIP_VERIFY``.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from vault_rotator.errors import (
    CasConflictError,
    ConfigError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.store.port import Versioned

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0


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
    except hvac.exceptions.InvalidRequest as exc:
        if "check-and-set" in str(exc):
            raise CasConflictError(f"check-and-set conflict on {where}") from exc
        raise StoreError(f"Vault rejected {op} on {where}: {_first_line(exc)}") from exc
    except hvac.exceptions.Unauthorized as exc:
        raise StorePermissionError(f"Vault refused the token ({op} on {where})") from exc
    except hvac.exceptions.VaultError as exc:
        raise StoreError(f"Vault failed {op} on {where}: {_first_line(exc)}") from exc
    except requests.exceptions.RequestException as exc:
        raise StoreUnavailableError(
            f"Vault unreachable ({op} on {where}): {type(exc).__name__}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


class VaultKv:
    """A KV v2 mount of one Vault server, implementing :class:`~.port.KvStore`."""

    def __init__(self, client: hvac.Client, mount: str) -> None:
        self._client = client
        self._mount = mount.strip("/")
        self.write_count: collections.Counter[str] = collections.Counter()

    @property
    def mount(self) -> str:
        return self._mount

    def _where(self, path: str) -> str:
        return f"{self._mount}/{path}"

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        try:
            with _translate("read", self._where(path)):
                resp = self._client.secrets.kv.v2.read_secret_version(
                    path=path,
                    version=version,
                    mount_point=self._mount,
                    raise_on_deleted_version=False,
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, hvac.exceptions.InvalidPath):
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
            with _translate("read metadata", self._where(path)):
                resp = self._client.secrets.kv.v2.read_secret_metadata(
                    path=path, mount_point=self._mount
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, hvac.exceptions.InvalidPath):
                return None
            raise
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, dict):
            raise StoreError(f"Vault answered malformed metadata for {self._where(path)}")
        return data

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        with _translate("write", self._where(path)):
            resp = self._client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=dict(data), cas=cas, mount_point=self._mount
            )
        self.write_count[path] += 1
        version = resp.get("data", {}).get("version") if isinstance(resp, dict) else None
        if not isinstance(version, int):
            raise StoreError(f"Vault answered a write of {self._where(path)} without a version")
        return version

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        with _translate("update metadata", self._where(path)):
            self._client.secrets.kv.v2.update_metadata(
                path=path, custom_metadata=dict(metadata), mount_point=self._mount
            )

    def destroy(self, path: str) -> None:
        with _translate("destroy", self._where(path)):
            self._client.secrets.kv.v2.delete_metadata_and_all_versions(
                path=path, mount_point=self._mount
            )
        self.write_count[path] += 1

    def list(self, prefix: str) -> Sequence[str]:
        try:
            with _translate("list", self._where(prefix)):
                resp = self._client.secrets.kv.v2.list_secrets(path=prefix, mount_point=self._mount)
        except StoreError as exc:
            if isinstance(exc.__cause__, hvac.exceptions.InvalidPath):
                return []
            raise
        keys = resp.get("data", {}).get("keys") if isinstance(resp, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise StoreError(f"Vault answered a malformed list of {self._where(prefix)}")
        return keys

    def capabilities(self, paths: Sequence[str]) -> dict[str, frozenset[str]]:
        with _translate("check capabilities", ", ".join(paths)):
            resp = self._client.sys.get_capabilities(list(paths))
        data = resp.get("data", resp) if isinstance(resp, dict) else {}
        result: dict[str, frozenset[str]] = {}
        for path in paths:
            caps = data.get(path, [])
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


class VaultConnection:
    """One authenticated Vault client; hands out KV v2 mounts."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        namespace: str | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not addr:
            raise ConfigError("VAULT_ADDR is not set: say where Vault is")
        self.addr = addr
        self._client = hvac.Client(
            url=addr, token=token, namespace=namespace, verify=verify, timeout=timeout
        )
        self._mounts: dict[str, VaultKv] = {}

    def kv(self, mount: str) -> VaultKv:
        """The KV v2 mount at ``mount`` (one adapter per mount, shared)."""
        key = mount.strip("/")
        if key not in self._mounts:
            self._mounts[key] = VaultKv(self._client, key)
        return self._mounts[key]

    def check(self) -> None:
        """Raise a clear error if Vault is sealed/unreachable or the token is not accepted."""
        with _translate("health check", self.addr):
            status = self._client.sys.read_health_status(method="GET")
        if isinstance(status, dict) and status.get("sealed"):
            raise StoreUnavailableError(f"Vault at {self.addr} is sealed")
        with _translate("token lookup", "auth/token/lookup-self"):
            self._client.auth.token.lookup_self()

    def call(self, fn: Callable[[hvac.Client], T], op: str, where: str) -> T:
        """Run a raw hvac call with error translation (for auth flows and tests)."""
        with _translate(op, where):
            return fn(self._client)

    def close(self) -> None:
        self._client.adapter.close()


def connect_from_env(env: Mapping[str, str] | None = None) -> VaultConnection:
    """A connection from ``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_NAMESPACE``, TLS variables."""
    env = os.environ if env is None else env
    token = env.get("VAULT_TOKEN", "")
    if not token:
        raise ConfigError("VAULT_TOKEN is not set: give vault-rotator a Vault token")
    verify: bool | str = True
    if env.get("VAULT_SKIP_VERIFY", "").lower() in {"1", "true", "yes"}:
        verify = False
    elif env.get("VAULT_CACERT"):
        verify = env["VAULT_CACERT"]
    return VaultConnection(
        env.get("VAULT_ADDR", ""),
        token,
        namespace=env.get("VAULT_NAMESPACE") or None,
        verify=verify,
    )
