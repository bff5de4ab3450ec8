"""Composition root: wires the engine's ports to Vault (hvac) and ARouter (httpx).

The engine imports neither adapter; this module builds them from the environment:

* ``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_NAMESPACE``, ``VAULT_CACERT``, ``VAULT_SKIP_VERIFY``
* ``VAULT_ROTATOR_LEASE_TTL`` (a duration, default ``30s``): the lease on a key's record. The
  ARouter client's timeouts and retries are sized so that one call, worst case, fits in it.

Management keys are read from Vault (``<kv_mount>/<management_key.path>``, field
``management_key.field``) once per account and cached; :meth:`Runtime.forget_account` drops
the cache (the daemon calls it after a 401).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vault_rotator.engine.engine import Engine, FaultHook, no_fault
from vault_rotator.errors import ConfigError, PreflightError
from vault_rotator.logs import CanonicalLine
from vault_rotator.policy import Account, KeyPolicy, parse_duration
from vault_rotator.ports.kv import KvStore
from vault_rotator.ports.provider import Dialect, KeyProvider
from vault_rotator.provider.arouter import ARouterClient
from vault_rotator.secret import Secret
from vault_rotator.store.vault import VaultConnection, connect_from_env
from vault_rotator.testing.faults import fault_hook_from_env

DEFAULT_LEASE_TTL_S = 30.0
LEASE_TTL_ENV = "VAULT_ROTATOR_LEASE_TTL"
CALL_ATTEMPTS = 3
BUDGET_SHARE = 0.8  # one call's worst case may use this share of the lease, the rest is margin


def lease_ttl_from_env(env: Mapping[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    text = env.get(LEASE_TTL_ENV)
    if not text:
        return DEFAULT_LEASE_TTL_S
    try:
        ttl = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{LEASE_TTL_ENV}={text!r}: {exc}") from exc
    if ttl < 5:
        raise ConfigError(f"{LEASE_TTL_ENV}={text!r}: a lease shorter than 5s leaves no room")
    return ttl


@dataclass(frozen=True, slots=True)
class ClientBudget:
    timeout: float
    backoff_max: float
    max_attempts: int = CALL_ATTEMPTS


def client_budget(lease_ttl: float) -> ClientBudget:
    """ARouter client settings whose worst case (4 x timeout per attempt, plus waits) fits."""
    budget = lease_ttl * BUDGET_SHARE - 2.0
    backoff_max = min(5.0, budget * 0.1)
    timeout = min(10.0, (budget - (CALL_ATTEMPTS - 1) * backoff_max) / (CALL_ATTEMPTS * 4))
    return ClientBudget(timeout=timeout, backoff_max=backoff_max)


_DIALECTS = frozenset(dialect.value for dialect in Dialect)


def _ignore_request(_method: str, _route: str, _status: int | str) -> None:
    return None


class Runtime:
    """A Vault connection plus cached provider clients, and engines built on them."""

    def __init__(
        self,
        conn: VaultConnection,
        *,
        lease_ttl: float = DEFAULT_LEASE_TTL_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_provider_request: Callable[[str, str, int | str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.monotonic = monotonic  # the provider clients' deadlines and Retry-After holds
        self.on_provider_request = on_provider_request
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.sleep = sleep
        self._clients: dict[Account, ARouterClient] = {}

    @classmethod
    def from_env(cls) -> Runtime:
        return cls(connect_from_env(), lease_ttl=lease_ttl_from_env())

    def kv(self, mount: str) -> KvStore:
        return self.conn.kv(mount)

    def management_key(self, policy: KeyPolicy) -> Secret:
        ref = policy.provider.management_key
        where = f"{policy.vault.kv_mount}/{ref.path}"
        got = self.kv(policy.vault.kv_mount).read(ref.path)
        value = got.data.get(ref.field) if got is not None and not got.deleted else None
        if not isinstance(value, str) or not value:
            raise PreflightError(f"no management key at {where} (field {ref.field!r})")
        return Secret(value)

    def provider(self, policy: KeyPolicy, saved_dialect: str | None) -> KeyProvider:
        """The account's client (one per account, where its known dialect lives).

        The policy's dialect is configuration; a dialect saved in a state record is only a hint
        the client checks against what the server shows (see :mod:`vault_rotator.provider.arouter`).
        """
        account = policy.account
        client = self._clients.get(account)
        if client is None:
            configured = policy.provider.dialect
            hint = Dialect(saved_dialect) if saved_dialect and saved_dialect in _DIALECTS else None
            budget = client_budget(self.lease_ttl)
            client = ARouterClient(
                policy.provider.base_url,
                self.management_key(policy),
                Dialect(configured) if configured != "auto" else "auto",
                hint=hint,
                sleep=self.sleep,
                clock=self.clock,
                monotonic=self.monotonic,
                timeout=budget.timeout,
                max_attempts=budget.max_attempts,
                backoff_initial=min(0.5, budget.backoff_max),
                backoff_max=budget.backoff_max,
                on_request=self.on_provider_request or _ignore_request,
            )
            self._clients[account] = client
        return client

    def forget_account(self, account: Account) -> None:
        client = self._clients.pop(account, None)
        if client is not None:
            client.close()

    def engine(self, *, fault: FaultHook | None = None, holder: str | None = None) -> Engine:
        """An engine on this runtime's ports; ``fault`` defaults to ``VAULT_ROTATOR_FAULT_AT``'s
        hook (tests' crash points in real processes) when that variable is set. The engine
        logs the canonical line of each finished rotation through the listener added here."""
        engine = Engine(
            kv_for=self.kv,
            providers=self.provider,
            clock=self.clock,
            sleep=self.sleep,
            lease_ttl=self.lease_ttl,
            fault=fault or fault_hook_from_env() or no_fault,
            holder=holder,
        )
        engine.listeners.append(CanonicalLine())
        return engine

    def close_clients(self) -> None:
        """Close the provider clients (the Vault connection stays open)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def close(self) -> None:
        self.close_clients()
        self.conn.close()
