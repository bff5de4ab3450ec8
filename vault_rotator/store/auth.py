"""How vault-rotator logs in to Vault: token, AppRole or Kubernetes (no hvac here).

An :class:`Authenticator` turns credentials into a :class:`LoginResult` through the narrow
:class:`AuthApi` that :mod:`vault_rotator.store.vault` (the one module speaking hvac)
implements. Credential files are read again at every login, so a rotated token file, secret-id
or projected service-account token is picked up without a restart:

=================  =============================================================================
``TokenAuth``      a token given as is, or read from a file (``VAULT_TOKEN_FILE``); its lifetime
                   comes from ``auth/token/lookup-self``
``AppRoleAuth``    ``auth/<mount>/login`` with a role-id file and a secret-id file
``KubernetesAuth`` ``auth/<mount>/login`` with a role and the pod's service-account JWT file
=================  =============================================================================

:func:`auth_from_env` picks one from the environment (``VAULT_AUTH_METHOD``, default ``token``)
and names the variable that is missing. Tokens, secret-ids and JWTs travel as
:class:`~vault_rotator.secret.Secret`, so no repr, log line or message shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vault_rotator.errors import (
    ConfigError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.secret import Secret

DEFAULT_K8S_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
MAX_CREDENTIAL_BYTES = 64 * 1024
AUTH_METHODS = ("token", "approle", "kubernetes")


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A token and what Vault said about its lifetime (``ttl_s`` 0: it never expires).

    ``provisional``: Vault could not be asked (unavailable); ask again before the next use.
    """

    token: Secret
    ttl_s: float
    renewable: bool
    accessor: str = field(default="", repr=False)
    provisional: bool = False

    @classmethod
    def from_auth(cls, auth: Mapping[str, Any], where: str) -> LoginResult:
        """Read the ``auth`` block of a login or renewal answer from ``where``."""
        token, ttl = auth.get("client_token"), _seconds(auth.get("lease_duration"))
        if not isinstance(token, str) or not token or ttl is None:
            raise StoreError(f"Vault answered {where} without a client token and lease duration")
        accessor = auth.get("accessor")
        return cls(
            Secret(token),
            ttl,
            auth.get("renewable") is True,
            accessor if isinstance(accessor, str) else "",
        )

    @classmethod
    def from_lookup(cls, token: Secret, data: Mapping[str, Any]) -> LoginResult:
        """Read the ``data`` block of ``auth/token/lookup-self`` for ``token``."""
        ttl = _seconds(data.get("ttl"))
        if ttl is None:
            raise StoreError("Vault answered auth/token/lookup-self without a ttl")
        accessor = data.get("accessor")
        return cls(
            token,
            ttl,
            data.get("renewable") is True,
            accessor if isinstance(accessor, str) else "",
        )


def _seconds(value: object) -> float | None:
    """A non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


class AuthApi(Protocol):
    """What an authenticator (and the token session) may ask of Vault."""

    def login(
        self, mount: str, payload: Mapping[str, str | Secret], *, what: str
    ) -> Mapping[str, Any]:
        """POST ``auth/<mount>/login`` without a token; the answer's ``auth`` block.

        A refusal is :class:`StorePermissionError` naming ``what`` and the endpoint; no
        :class:`Secret` of ``payload`` appears in any message.
        """
        ...

    def lookup_self(self, token: Secret) -> Mapping[str, Any]:
        """``auth/token/lookup-self`` as ``token``: the answer's ``data`` block."""
        ...

    def renew_self(self, token: Secret) -> Mapping[str, Any]:
        """``auth/token/renew-self`` as ``token``: the answer's ``auth`` block."""
        ...


class Authenticator(Protocol):
    """A way to obtain a Vault token."""

    @property
    def method(self) -> str:
        """``token``, ``approle`` or ``kubernetes`` (for logs and messages)."""
        ...

    def login(self, api: AuthApi) -> LoginResult:
        """Obtain a token now, reading any credential file afresh."""
        ...


def read_credential(path: Path, what: str) -> Secret:
    """The stripped content of a credential file; ConfigError naming the file, never its text."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CREDENTIAL_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the {what} file {path}: {reason}") from exc
    if len(raw) > MAX_CREDENTIAL_BYTES:
        raise ConfigError(f"the {what} file {path} is larger than {MAX_CREDENTIAL_BYTES} bytes")
    try:
        text = raw.decode().strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the {what} file {path} is not UTF-8 text") from exc
    if not text:
        raise ConfigError(f"the {what} file {path} is empty")
    return Secret(text)


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A token given as is, or read from ``token_file`` at each login (exactly one of them)."""

    token: str | Secret | None = None
    token_file: str | Path | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ConfigError("give a Vault token or a token file, not both")
        if self.token_file is None and not self.token:
            raise ConfigError("VAULT_TOKEN is not set: give vault-rotator a Vault token")
        if isinstance(self.token, str):
            object.__setattr__(self, "token", Secret(self.token))
        if self.token_file is not None:
            object.__setattr__(self, "token_file", Path(self.token_file))

    @property
    def method(self) -> str:
        return "token"

    def login(self, api: AuthApi) -> LoginResult:
        """The token and its remaining lifetime, from ``auth/token/lookup-self``.

        The token is known without asking Vault, so a failed lookup does not stop it being used:
        denied (a token without the default policy, or a revoked one, which then fails the
        operation itself), it is taken as never expiring; with Vault unavailable, the result is
        provisional and the lookup is tried again before the next operation.
        """
        token = self._token()
        try:
            data = api.lookup_self(token)
        except StorePermissionError:
            return LoginResult(token, 0.0, renewable=False)
        except StoreUnavailableError:
            return LoginResult(token, 0.0, renewable=False, provisional=True)
        return LoginResult.from_lookup(token, data)

    def _token(self) -> Secret:
        if isinstance(self.token, Secret):
            return self.token
        assert self.token_file is not None  # __post_init__ keeps exactly one
        return read_credential(Path(self.token_file), "Vault token")


@dataclass(frozen=True, slots=True)
class AppRoleAuth:
    """AppRole login with a role-id file and a secret-id file, both read at each login."""

    role_id_file: str | Path
    secret_id_file: str | Path
    mount: str = "approle"

    def __post_init__(self) -> None:
        object.__setattr__(self, "role_id_file", Path(self.role_id_file))
        object.__setattr__(self, "secret_id_file", Path(self.secret_id_file))
        object.__setattr__(self, "mount", self.mount.strip("/"))

    @property
    def method(self) -> str:
        return "approle"

    def login(self, api: AuthApi) -> LoginResult:
        payload = {
            "role_id": read_credential(Path(self.role_id_file), "AppRole role-id"),
            "secret_id": read_credential(Path(self.secret_id_file), "AppRole secret-id"),
        }
        auth = api.login(self.mount, payload, what="AppRole login")
        return LoginResult.from_auth(auth, f"auth/{self.mount}/login")


@dataclass(frozen=True, slots=True)
class KubernetesAuth:
    """Kubernetes login with a Vault role and the pod's service-account JWT (read each login)."""

    role: str
    jwt_file: str | Path = DEFAULT_K8S_JWT_FILE
    mount: str = "kubernetes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "jwt_file", Path(self.jwt_file))
        object.__setattr__(self, "mount", self.mount.strip("/"))

    @property
    def method(self) -> str:
        return "kubernetes"

    def login(self, api: AuthApi) -> LoginResult:
        jwt = read_credential(Path(self.jwt_file), "Kubernetes service-account token")
        auth = api.login(self.mount, {"role": self.role, "jwt": jwt}, what="Kubernetes login")
        return LoginResult.from_auth(auth, f"auth/{self.mount}/login")


def auth_from_env(env: Mapping[str, str]) -> Authenticator:
    """The authenticator ``VAULT_AUTH_METHOD`` asks for; ConfigError naming a missing variable.

    ``token`` (default): ``VAULT_TOKEN`` or ``VAULT_TOKEN_FILE``. ``approle``:
    ``VAULT_ROLE_ID_FILE``, ``VAULT_SECRET_ID_FILE``. ``kubernetes``: ``VAULT_K8S_ROLE``,
    optional ``VAULT_K8S_JWT_FILE``. Both logins take an optional ``VAULT_AUTH_MOUNT``.
    """
    method = env.get("VAULT_AUTH_METHOD", "").strip().lower() or "token"
    if method == "token":
        return _token_from_env(env)
    if method == "approle":
        return AppRoleAuth(
            Path(_required(env, "VAULT_ROLE_ID_FILE", "the AppRole role-id file")),
            Path(_required(env, "VAULT_SECRET_ID_FILE", "the AppRole secret-id file")),
            mount=env.get("VAULT_AUTH_MOUNT") or "approle",
        )
    if method == "kubernetes":
        return KubernetesAuth(
            _required(env, "VAULT_K8S_ROLE", "the Vault role of the kubernetes login"),
            Path(env.get("VAULT_K8S_JWT_FILE") or DEFAULT_K8S_JWT_FILE),
            mount=env.get("VAULT_AUTH_MOUNT") or "kubernetes",
        )
    choices = ", ".join(AUTH_METHODS)
    raise ConfigError(f"VAULT_AUTH_METHOD={method!r} is not one of {choices}")


def _token_from_env(env: Mapping[str, str]) -> TokenAuth:
    token, token_file = env.get("VAULT_TOKEN", ""), env.get("VAULT_TOKEN_FILE", "")
    if token and token_file:
        raise ConfigError("VAULT_TOKEN and VAULT_TOKEN_FILE are both set: keep one")
    if token_file:
        return TokenAuth(token_file=Path(token_file))
    if not token:
        raise ConfigError(
            "VAULT_TOKEN is not set: give vault-rotator a Vault token "
            "(VAULT_TOKEN or VAULT_TOKEN_FILE), or choose VAULT_AUTH_METHOD=approle|kubernetes"
        )
    return TokenAuth(token)


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        method = env.get("VAULT_AUTH_METHOD", "token")
        raise ConfigError(f"{name} is not set: VAULT_AUTH_METHOD={method} needs {what}")
    return value
