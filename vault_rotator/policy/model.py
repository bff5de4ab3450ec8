"""The effective, validated policy the engine and daemon use.

All models are frozen. A :class:`KeyPolicy` is self-contained (defaults merged, provider
account and Vault settings included), so the engine can copy it into a rotation's state and
finish that rotation after the key has left the config. Its stored form is
``KeyPolicy.to_dict()``: the fields below as JSON values (durations in float seconds, lists for
tuples, ``null`` for "inherit from the old key" or "none") plus ``"version": 1``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import vault_rotator.policy.defaults as builtin
from vault_rotator.errors import ConfigError
from vault_rotator.policy.fields import (
    BaseUrl,
    DialectName,
    KeyNameTemplate,
    LimitReset,
    MountName,
    Name,
    NameList,
    PositiveSeconds,
    ProviderType,
    ScheduleText,
    Seconds,
    SpendingLimit,
    Token,
    VaultPath,
    WindowText,
)
from vault_rotator.policy.naming import render_key_name
from vault_rotator.policy.problems import Problem
from vault_rotator.policy.schedule import Schedule, parse_schedule
from vault_rotator.policy.window import Window, parse_window
from vault_rotator.ports.provider import Permissions

POLICY_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManagementKeyRef(_Frozen):
    """Where the management key lives: a KV v2 path (in the account's kv_mount) and a field."""

    path: VaultPath
    field: Token = builtin.MANAGEMENT_KEY_FIELD


class ProviderPolicy(_Frozen):
    """One provider account's settings."""

    type: ProviderType = "arouter"
    base_url: BaseUrl
    dialect: DialectName = "auto"
    management_key: ManagementKeyRef
    usage_lag_s: Seconds = builtin.USAGE_LAG_S
    poll_interval_s: PositiveSeconds = builtin.POLL_INTERVAL_S
    max_concurrent: int = Field(
        default=builtin.MAX_CONCURRENT, ge=1, le=builtin.MAX_CONCURRENT_LIMIT
    )


class VaultPolicy(_Frozen):
    """Where keys and state records live in Vault."""

    kv_mount: MountName = builtin.KV_MOUNT
    state_prefix: VaultPath = builtin.STATE_PREFIX


class Account(_Frozen):
    """A provider account's identity: base URL, KV mount and management-key path (hashable)."""

    base_url: str
    kv_mount: str
    management_key_path: str

    def __str__(self) -> str:
        return f"{self.base_url} ({self.kv_mount}/{self.management_key_path})"

    @property
    def lease_id(self) -> str:
        """A stable, secret-free id naming the account's lease records (16 hex digits of
        SHA-256 of the base URL and the management key path; the mount is in the path)."""
        text = f"{self.base_url}\n{self.management_key_path}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def account_of(provider: ProviderPolicy, vault: VaultPolicy) -> Account:
    """The account a provider and Vault policy belong to."""
    return Account(
        base_url=provider.base_url,
        kv_mount=vault.kv_mount,
        management_key_path=provider.management_key.path,
    )


class KeyPolicy(_Frozen):
    """The effective policy of one key (defaults merged).

    ``None`` in ``allowed_providers``, ``allowed_models``, ``spending_limit`` and
    ``limit_reset`` means "copy from the old key". ``disable_before_delete_s`` is ``None`` only
    when the file left it unset and the dialect is ``auto``: use
    :meth:`disable_before_delete_for` with the detected dialect.
    """

    env: Name
    name: Name
    secret_path: VaultPath
    key_name: KeyNameTemplate = builtin.KEY_NAME
    allowed_providers: NameList | None = None
    allowed_models: NameList | None = None
    spending_limit: SpendingLimit | None = None
    limit_reset: LimitReset | None = None
    adopt_key_id: Token | None = None
    schedule: ScheduleText = builtin.SCHEDULE
    jitter_s: Seconds = builtin.JITTER_S
    window: WindowText | None = None
    max_age_s: PositiveSeconds = builtin.MAX_AGE_S
    pickup_timeout_s: PositiveSeconds = builtin.PICKUP_TIMEOUT_S
    drain_period_s: Seconds = builtin.DRAIN_PERIOD_S
    drain_timeout_s: PositiveSeconds = builtin.DRAIN_TIMEOUT_S
    disable_before_delete_s: Seconds | None = None
    key_ttl_s: PositiveSeconds | None = None
    require_acks: int = Field(default=0, ge=0, le=builtin.MAX_REQUIRE_ACKS)
    drain_on_acks: bool = False
    ack_ttl_s: PositiveSeconds = builtin.ACK_TTL_S
    ack_retention_s: PositiveSeconds = builtin.ACK_RETENTION_S
    provider: ProviderPolicy
    vault: VaultPolicy = VaultPolicy()

    @property
    def ref(self) -> str:
        """``ENV/NAME``, how commands and logs name the key."""
        return f"{self.env}/{self.name}"

    @property
    def permissions(self) -> Permissions:
        """The policy's own permissions (``None``: inherited); the expiry comes from key_ttl."""
        return Permissions(
            allowed_providers=self.allowed_providers,
            allowed_models=self.allowed_models,
            spending_limit=self.spending_limit,
            limit_reset=self.limit_reset,
        )

    @property
    def account(self) -> Account:
        """The provider account this key belongs to."""
        return account_of(self.provider, self.vault)

    def disable_before_delete_for(self, dialect: str) -> float:
        """Seconds to keep the old key disabled before deleting it, given the actual dialect."""
        if self.disable_before_delete_s is not None:
            return self.disable_before_delete_s
        return builtin.disable_before_delete_s(dialect)

    def parsed_schedule(self) -> Schedule:
        """The schedule, parsed."""
        return parse_schedule(self.schedule)

    def parsed_window(self) -> Window | None:
        """The window, parsed; None when rotations may start at any time."""
        return parse_window(self.window) if self.window is not None else None

    def render_name(self, *, date: dt.date, rotation_id: str) -> str:
        """The provider-side name of the key a rotation creates."""
        return render_key_name(
            self.key_name, env=self.env, name=self.name, date=date, rotation_id=rotation_id
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` turns back into an equal policy."""
        return {"version": POLICY_VERSION, **self.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyPolicy:
        """Rebuild a policy stored by :meth:`to_dict`; ConfigError if it is not one."""
        body = dict(data)
        version = body.pop("version", None)
        if version != POLICY_VERSION:
            raise ConfigError(
                f"stored key policy has version {version!r}; this build reads {POLICY_VERSION}"
            )
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"stored key policy is invalid: {where}: {first['msg']}") from exc


class EnvironmentPolicy(_Frozen):
    """One policy file: an environment, its provider account and its keys."""

    environment: Name
    source: Path
    provider: ProviderPolicy
    vault: VaultPolicy = VaultPolicy()
    require_spending_limit: bool
    keys: tuple[KeyPolicy, ...]

    @property
    def account(self) -> Account:
        """The provider account of this environment."""
        return account_of(self.provider, self.vault)

    def key(self, name: str) -> KeyPolicy:
        """The key called ``name``; ConfigError naming the known keys if there is none."""
        for key in self.keys:
            if key.name == name:
                return key
        known = ", ".join(key.name for key in self.keys) or "none"
        raise ConfigError(
            f"no key '{name}' in environment '{self.environment}' ({self.source}); "
            f"known keys: {known}"
        )


@dataclass(frozen=True)
class PolicySet:
    """Every environment of a config directory. Iterating yields every KeyPolicy."""

    environments: dict[str, EnvironmentPolicy]
    warnings: list[Problem] = field(default_factory=list)

    def key(self, env: str, name: str) -> KeyPolicy:
        """The policy of ``env``/``name``; ConfigError naming what is known otherwise."""
        environment = self.environments.get(env)
        if environment is None:
            known = ", ".join(sorted(self.environments)) or "none"
            raise ConfigError(f"no environment '{env}' in the policy files; known: {known}")
        return environment.key(name)

    def lookup(self, ref: str) -> KeyPolicy:
        """The policy of ``"ENV/NAME"``; ConfigError if malformed or unknown."""
        env, slash, name = ref.partition("/")
        if not (env and slash and name):
            raise ConfigError(f"expected ENV/NAME, got {ref!r}")
        return self.key(env, name)

    def accounts(self) -> dict[Account, tuple[KeyPolicy, ...]]:
        """Keys grouped by provider account (one list pass per account per poll)."""
        groups: dict[Account, list[KeyPolicy]] = {}
        for key in self:
            groups.setdefault(key.account, []).append(key)
        return {account: tuple(keys) for account, keys in groups.items()}

    def __iter__(self) -> Iterator[KeyPolicy]:
        for environment in self.environments.values():
            yield from environment.keys
