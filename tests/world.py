"""A test world: real Vault, the in-process emulator, a fake clock, policies and consumers."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict, Unpack

import httpx

from vault_rotator.emulator import Emulator
from vault_rotator.emulator.clock import Clock
from vault_rotator.engine import reasons
from vault_rotator.engine.engine import Engine, FaultHook
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.policy import KeyPolicy, ManagementKeyRef, ProviderPolicy, VaultPolicy
from vault_rotator.ports.provider import Dialect
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

MANAGEMENT_KEY = "lr_mgmt_test_0123456789abcdef"
LEASE_TTL = 30.0


class ClientOptions(TypedDict, total=False):
    """The keyword-only arguments of :class:`ARouterClient` (for the tests' client factories)."""

    hint: Dialect | None
    timeout: float
    max_attempts: int
    backoff_initial: float
    backoff_max: float
    max_response_bytes: int
    page_size: int
    sleep: Callable[[float], None]
    rng: Callable[[], float]
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    transport: httpx.BaseTransport | None
    on_request: Callable[[str, str, int | str], None]


def as_dialect(name: str) -> Dialect | Literal["auto"]:
    """A dialect named as in the policy files (``a``, ``b``, ``c`` or ``auto``)."""
    return "auto" if name == "auto" else Dialect(name)


class EmulatorOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Emulator` (the ``make_emulator`` fixture's options)."""

    dialect: str
    management_keys: Iterable[str]
    paging: str
    host: str
    port: int
    clock: Clock | None
    clock_offset: float
    last_used_granularity: float
    usage_lag: float
    persist_path: str | os.PathLike[str] | None
    allow_live_management: bool
    seed: int


class EmulatorFactory(Protocol):
    """The ``make_emulator`` fixture: start an emulator (stopped after the test)."""

    def __call__(self, **options: Unpack[EmulatorOptions]) -> Emulator: ...


class WorldFactory(Protocol):
    """The ``world_for`` fixture: a World for a dialect, emulator and policy options."""

    def __call__(
        self,
        dialect: str = ...,
        emulator_options: EmulatorOptions | None = ...,
        emulator: Emulator | None = ...,
        **policy: Any,
    ) -> World: ...


class Crash(BaseException):
    """A simulated process death at a step boundary (nothing catches BaseException)."""


def crash_at(step: str) -> FaultHook:
    def hook(at: str) -> None:
        if at == step:
            raise Crash(step)

    return hook


def no_fault(_step: str) -> None:
    return None


@dataclass
class Consumer:
    """An app that re-reads its key from Vault every ``refresh_s`` and calls with it."""

    world: World
    refresh_s: float = 30.0
    route: str = "chat"
    sticky: bool = False  # True: reads Vault once and never again (a stale consumer)
    value: str | None = field(default=None, repr=False)  # a key value: never in test output
    read_at: float | None = None
    statuses: list[int] = field(default_factory=list)

    def tick(self) -> None:
        now = self.world.clock()
        stale = self.read_at is None or now - self.read_at >= self.refresh_s
        if stale and not (self.sticky and self.value is not None):
            got = self.world.kv.read(self.world.policy.secret_path)
            self.value = str(got.data["api_key"]) if got else None
            self.read_at = now
        if self.value is not None:
            self.statuses.append(self.world.emulator.call(self.value, route=self.route))

    @property
    def unauthorized(self) -> int:
        return sum(1 for s in self.statuses if s in (401, 403))


class World:
    """Everything a rotation touches, wired together for one test."""

    def __init__(
        self,
        vault: VaultServer,
        emulator: Emulator,
        clock: FakeClock,
        *,
        lease_ttl: float = LEASE_TTL,
        **policy_overrides: Any,
    ) -> None:
        self.vault = vault
        self.emulator = emulator
        self.clock = clock
        self.conn = VaultConnection(vault.addr, vault.token)
        self.kv: VaultKv = self.conn.kv("secret")
        self.tag = uuid.uuid4().hex[:8]
        self.kv.write(f"t-{self.tag}/management", {"key": MANAGEMENT_KEY}, cas=0)
        self.policy = make_policy(self.tag, emulator.base_url, **policy_overrides)
        self.runtime = Runtime(self.conn, lease_ttl=lease_ttl, clock=clock, sleep=clock.sleep)
        self.consumers: list[Consumer] = []
        self._extra: list[Runtime] = []

    def engine(self, fault: FaultHook = no_fault, holder: str | None = None) -> Engine:
        return self.runtime.engine(fault=fault, holder=holder or f"test-{uuid.uuid4().hex[:6]}")

    def fresh_runtime(self) -> Runtime:
        """A second 'process': its own Vault connection and provider clients."""
        conn = VaultConnection(self.vault.addr, self.vault.token)
        rt = Runtime(
            conn, lease_ttl=self.runtime.lease_ttl, clock=self.clock, sleep=self.clock.sleep
        )
        self._extra.append(rt)
        return rt

    def seed_old_key(self, **extra_fields: Any) -> tuple[str, str]:
        """An old key at the provider, served by the consumer secret (plus other fields)."""
        key_id, value = self.emulator.seed_key(
            f"{self.policy.env}-{self.policy.name}-original",
            allowed_providers=["openai", "anthropic"],
            spending_limit=50.0,
        )
        data = {"api_key": value, "key_id": key_id, "team": "payments", **extra_fields}
        self.kv.write(self.policy.secret_path, data, cas=0)
        return key_id, value

    def add_consumer(self, **options: Any) -> Consumer:
        consumer = Consumer(self, **options)
        self.consumers.append(consumer)
        self.clock.on_sleep(consumer.tick)
        return consumer

    def served(self) -> dict[str, Any]:
        got = self.kv.read(self.policy.secret_path)
        assert got is not None
        return dict(got.data)

    def record(self) -> StateRecord:
        return StateStore(self.kv, self.policy.vault.state_prefix).read(
            self.policy.env, self.policy.name
        )[0]

    def pending_exists(self) -> bool:
        store = StateStore(self.kv, self.policy.vault.state_prefix)
        return self.kv.current_version(store.pending_path(self.policy.env, self.policy.name)) > 0

    def live_ids(self) -> set[str]:
        return {k["id"] for k in self.emulator.live_keys()}

    def expire_lease(self) -> None:
        self.clock.advance(self.runtime.lease_ttl + 1)

    def close(self) -> None:
        for rt in self._extra:
            rt.close()
        self.runtime.close()


def make_policy(tag: str, base_url: str, **overrides: Any) -> KeyPolicy:
    """A key policy with durations short enough for fake-clock tests (still minutes)."""
    provider_fields = {
        "base_url": base_url,
        "dialect": overrides.pop("dialect", "auto"),
        "management_key": ManagementKeyRef(path=f"t-{tag}/management"),
        "usage_lag_s": overrides.pop("usage_lag_s", 60.0),
        "poll_interval_s": overrides.pop("poll_interval_s", 30.0),
    }
    fields: dict[str, Any] = {
        "env": "test",
        "name": f"app-{tag}",
        "secret_path": f"t-{tag}/app",
        "allowed_providers": ("openai", "anthropic"),
        "spending_limit": 25.0,
        "pickup_timeout_s": 3600.0,
        "drain_period_s": 600.0,
        "drain_timeout_s": 7200.0,
        "provider": ProviderPolicy(**provider_fields),
        "vault": VaultPolicy(kv_mount="secret", state_prefix=f"t-{tag}/vault-rotator"),
    }
    fields.update(overrides)
    return KeyPolicy(**fields)


def assert_clean_end(world: World, old_id: str | None) -> str:
    """Exactly one live key, the one Vault serves; the old one gone; pending destroyed."""
    served = world.served()
    assert world.live_ids() == {served["key_id"]}
    assert old_id is None or old_id not in world.live_ids()
    assert not world.pending_exists()
    record = world.record()
    assert record.phase == reasons.IDLE
    assert record.lease is None
    assert record.current_key_id == served["key_id"]
    return str(served["key_id"])


@contextlib.contextmanager
def calling_app(
    kv: VaultKv, emulator: Emulator, path: str, every: float = 0.1
) -> Iterator[list[int]]:
    """A real-time app thread calling with whatever key Vault serves at ``path``; its statuses."""
    stop = threading.Event()
    statuses: list[int] = []

    def app() -> None:
        while not stop.wait(every):
            got = kv.read(path)
            statuses.append(emulator.call(str(got.data["api_key"])) if got else 0)

    thread = threading.Thread(target=app, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join()


LIVE_CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {env}/management
  usage_lag: 1s
  poll_interval: 0.5s
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 60s
  drain_period: 2s
  drain_timeout: 60s
keys:
  - name: app
    secret_path: {env}/app
    allowed_providers: [openai]
"""


@dataclass
class LiveEnv:
    """A real-time environment: config dir, emulator, served old key, an app calling with it."""

    env: str
    config: Path
    emulator: Emulator
    kv: VaultKv
    store: StateStore
    old_id: str
    statuses: list[int]
