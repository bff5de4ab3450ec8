"""What a rotation costs the daemon, counted on a real OpenBao and the emulator (issue 14).

A fleet of keys on one account is rotated by daemon ticks on a fake clock shared with the
emulator; after every tick each consumer calls with whatever key Vault serves it (so it switches
as soon as a new key is published). Vault writes are the daemon's connection's own counts
(``write``, ``update metadata``, ``destroy``); provider calls are the emulator's request and
mutation logs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import hvac
import pytest
from world import MANAGEMENT_KEY, EmulatorFactory, no_fault

from vault_rotator.commands.run_cmd import VaultCallerAuth
from vault_rotator.daemon import daemon as daemon_module
from vault_rotator.daemon.book import OBSERVATION_FLUSH_S
from vault_rotator.daemon.control import Control
from vault_rotator.daemon.daemon import Daemon, TickReport
from vault_rotator.daemon.emergencies import open_request
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.changes import read_changes
from vault_rotator.engine.driver import drive
from vault_rotator.engine.emergency import EmergencyRequest, Step, new_request
from vault_rotator.engine.emergency_round import Round
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.engine import Command, Verb
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.policy import KeyPolicy, load_policies
from vault_rotator.ports.provider import CreatedKey, KeyProvider, KeySpec
from vault_rotator.provider.arouter import ARouterClient
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

POLL = 30.0
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {env}/management
  usage_lag: 60s
  poll_interval: 30s
  max_concurrent: 100
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  pickup_timeout: 1h
  drain_period: {drain}
  drain_timeout: 2h
  disable_before_delete: {disable}
keys:
{keys}
"""


@dataclass
class Tick:
    """What one tick cost."""

    report: TickReport
    writes: int
    lease_writes: int
    reads: int
    mutations: int
    lists: int
    phases: dict[str, str]


@dataclass
class Fleet:
    """Keys of one account, their consumers, a daemon, and what each tick cost."""

    vault: VaultServer
    emulator: Emulator
    clock: FakeClock
    config: Path
    env: str = field(default_factory=lambda: f"s{uuid.uuid4().hex[:8]}")
    names: list[str] = field(default_factory=list)
    conns: list[VaultConnection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = VaultConnection(self.vault.addr, self.vault.token)
        self.kv: VaultKv = self.conn.kv("secret")
        self.kv.write(f"{self.env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        self.store = StateStore(self.kv, f"{self.env}/vault-rotator")

    def seed(self, count: int, *, drain: str = "2m", disable: str = "0s") -> None:
        self.names = [f"app-{i}" for i in range(count)]
        for name in self.names:
            key_id, value = self.emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
            self.kv.write(f"{self.env}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
            self.emulator.call(value)  # in use before the rotation
        keys = "\n".join(
            f"  - name: {n}\n    secret_path: {self.env}/{n}\n    allowed_providers: [openai]"
            for n in self.names
        )
        body = CONFIG.format(
            env=self.env, base_url=self.emulator.base_url, keys=keys, drain=drain, disable=disable
        )
        (self.config / "fleet.yaml").write_text(body)

    def daemon(self, *, holds_on_fake_clock: bool = False, token: str | None = None) -> Daemon:
        """A daemon on the fake clock (with ``holds_on_fake_clock``, a provider's Retry-After
        hold too, instead of real time), on ``token`` (default: the root token)."""
        conn = VaultConnection(self.vault.addr, token or self.vault.token)
        self.conns.append(conn)
        runtime = Runtime(conn, clock=self.clock, sleep=self.clock.sleep)
        if holds_on_fake_clock:
            runtime.monotonic = self.clock
        daemon = Daemon(load_policies(self.config), runtime, metrics=Metrics(), fault=no_fault)
        # The account lease (HA: one read and write per account and half lease TTL, whatever
        # the key count) goes over a connection of its own: the counts here are the keys'.
        leases = VaultConnection(self.vault.addr, self.vault.token)
        self.conns.append(leases)
        daemon.replicas.kv = leases.kv
        self.lease_conn = leases
        return daemon

    def record(self, name: str) -> StateRecord:
        return self.store.read(self.env, name)[0]

    def consume(self) -> None:
        """Every consumer calls once with whatever key Vault serves it now."""
        for name in self.names:
            got = self.kv.read(f"{self.env}/{name}")
            assert got is not None
            status = self.emulator.call(str(got.data["api_key"]))  # never a value in a failure
            assert status == 200, name

    def tick(self, daemon: Daemon) -> Tick:
        ((account, keys),) = daemon.accounts().items()
        conn = daemon.runtime.conn
        writes, reads = conn.writes(), conn.reads()
        lease_writes = self.lease_conn.writes()
        mutations, lists = len(self.emulator.mutation_log()), self.emulator.request_counts()
        report = daemon.tick(account, keys)
        cost = Tick(
            report=report,
            writes=conn.writes() - writes,
            lease_writes=self.lease_conn.writes() - lease_writes,
            reads=conn.reads() - reads,
            mutations=len(self.emulator.mutation_log()) - mutations,
            lists=self.emulator.request_counts()["list"] - lists["list"],
            phases={n: self.record(n).phase for n in self.names},
        )
        self.clock.advance(POLL)
        self.consume()
        return cost

    def rotate_all(self, daemon: Daemon, limit: int = 60) -> list[Tick]:
        """Tick until every key has finished one rotation."""
        ticks: list[Tick] = []
        for _ in range(limit):
            ticks.append(self.tick(daemon))
            assert ticks[-1].report.errors == []
            if all(self.record(n).outcomes for n in self.names):
                return ticks
        pytest.fail(f"not finished after {limit} ticks")

    def close(self) -> None:
        for conn in (self.conn, *self.conns):
            conn.close()


@pytest.fixture
def fleet(vault: VaultServer, make_emulator: EmulatorFactory, tmp_path: Path) -> Iterator[Fleet]:
    """An account on the emulator (dialect c) sharing a fake clock with the daemon."""
    clock = FakeClock()
    emulator = make_emulator(dialect="c", clock=clock)
    fleet = Fleet(vault, emulator, clock, tmp_path)
    yield fleet
    fleet.close()


def _outcomes(fleet: Fleet) -> set[str]:
    return {o.outcome for n in fleet.names for o in fleet.record(n).outcomes}


def _mutation_routes(fleet: Fleet) -> list[str]:
    return [entry["route"] for entry in fleet.emulator.mutation_log()]


def test_a_rotation_costs_at_most_nine_vault_writes_and_two_provider_mutations(
    fleet: Fleet,
) -> None:
    """Five keys rotated by the daemon: at most 9 Vault writes and exactly 2 provider
    mutations (create, delete) per rotation; a poll in which no rotation moves a step writes
    nothing; once all are idle, polls make no list call and write nothing."""
    fleet.seed(5)
    daemon = fleet.daemon()
    ticks = fleet.rotate_all(daemon)

    assert _outcomes(fleet) == {reasons.SUCCEEDED}
    writes = sum(t.writes for t in ticks)
    assert writes <= 9 * len(fleet.names), [t.writes for t in ticks]
    assert sorted(_mutation_routes(fleet)) == ["create"] * 5 + ["delete"] * 5
    assert all(m["status"] in (200, 201) for m in fleet.emulator.mutation_log())
    assert sum(t.lists for t in ticks) == len(ticks)  # one page per tick: 10 keys at most
    # A tick where no key changed its phase and no provider write happened only observed.
    before: dict[str, str] = {}
    observing = 0
    for tick in ticks:
        if before and tick.phases == before and tick.mutations == 0:
            observing += 1
            assert tick.writes == 0, tick
        before = tick.phases
    assert observing >= 3  # the waits for usage_lag and the drain

    idle = [fleet.tick(daemon) for _ in range(20)]
    assert [(t.writes, t.lists, t.mutations) for t in idle] == [(0, 0, 0)] * 20
    assert sum(t.lease_writes for t in idle) <= len(idle)  # the account lease: one per poll
    # the change signal, the environment's emergency request (is one open?), now and then a
    # re-read: per account and environment, never per key
    assert max(t.reads for t in idle) <= 3


def test_each_tick_ends_with_the_daemons_after_tick_hook(fleet: Fleet) -> None:
    """`run` trims the heap after ticks (daemon/memory.py HeapTrimmer): the hook runs once at
    the end of every tick that ran, idle or busy."""
    fleet.seed(2)
    daemon = fleet.daemon()
    calls: list[int] = []
    daemon.after_tick = lambda: calls.append(len(calls))
    ((account, keys),) = daemon.accounts().items()
    for _ in range(3):
        daemon.tick(account, keys)
        fleet.clock.advance(POLL)
    assert calls == [0, 1, 2]


def test_disable_before_delete_adds_one_provider_mutation(fleet: Fleet) -> None:
    """With disable_before_delete: create, disable, delete (3 mutations); the disable's own
    pass adds its lease take and release (at most 11 Vault writes per rotation)."""
    fleet.seed(3, disable="1m")
    daemon = fleet.daemon()
    ticks = fleet.rotate_all(daemon)
    assert _outcomes(fleet) == {reasons.SUCCEEDED}
    assert sorted(_mutation_routes(fleet)) == ["create"] * 3 + ["delete"] * 3 + ["update"] * 3
    assert sum(t.writes for t in ticks) <= 11 * len(fleet.names)


def test_observations_carried_by_the_daemon_are_written_within_the_flush_period(
    fleet: Fleet,
) -> None:
    """A long drain: pickup, seen on a poll that writes nothing, is in Vault (for `status` and
    any successor) within OBSERVATION_FLUSH_S; the whole rotation writes at most one more."""
    fleet.seed(1, drain="20m")
    daemon = fleet.daemon()
    seen_at: float | None = None
    written_at: float | None = None
    ticks: list[Tick] = []
    while not fleet.record("app-0").outcomes:
        ticks.append(fleet.tick(daemon))
        book = next(iter(daemon.books.values()))
        carried = book.entries[f"{fleet.env}/app-0"].record.rotation
        if seen_at is None and carried is not None and carried.pickup_at is not None:
            seen_at = fleet.clock()
        stored = fleet.record("app-0").rotation
        if written_at is None and stored is not None and stored.pickup_at is not None:
            written_at = fleet.clock()
        assert len(ticks) < 100
    assert seen_at is not None
    assert written_at is not None
    assert written_at - seen_at <= OBSERVATION_FLUSH_S + POLL
    assert sum(t.writes for t in ticks) <= 10


def test_an_operators_act_reaches_the_daemon_through_the_change_signal(fleet: Fleet) -> None:
    """A CLI abort of a rotation the daemon drives: the daemon's next poll re-reads that key
    alone (named by the change signal), not every key, and goes on with the abort."""
    fleet.seed(4)
    daemon = fleet.daemon()
    for _ in range(4):  # started, published, waiting for the drain
        fleet.tick(daemon)
    assert fleet.record("app-0").phase == reasons.PUBLISHED
    runtime = Runtime(VaultConnection(fleet.vault.addr, fleet.vault.token), clock=fleet.clock)
    policy = daemon.policies.key(fleet.env, "app-0")
    cli = runtime.engine(holder="operator")
    drive(cli, policy, wait=False, start=False, command=Command(Verb.ABORT, by="alice"))
    runtime.close()
    assert fleet.record("app-0").phase == reasons.ABORTING
    tick = fleet.tick(daemon)
    assert tick.reads <= 1 + 1 + len(fleet.names)  # the signal, app-0, the passes' reads
    book = next(iter(daemon.books.values()))
    assert book.entries[f"{fleet.env}/app-0"].record.phase == reasons.ABORTING
    for _ in range(40):
        if fleet.record("app-0").outcomes:
            break
        fleet.tick(daemon)
    assert [o.outcome for o in fleet.record("app-0").outcomes] == [reasons.ABORTED]


def test_a_key_whose_new_value_is_saved_can_be_acted_on_at_once(fleet: Fleet) -> None:
    """The lease of the pass that created a key is handed off with its value saved: an
    operator's abort right after that pass is not refused (no wait for the lease to expire)."""
    fleet.seed(1)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    daemon.tick(account, keys)
    record = fleet.record("app-0")
    assert record.phase == reasons.INTENT
    assert record.lease is not None
    assert record.lease.pending_attempt == 1
    assert record.lease.expires_at > fleet.clock()  # not expired: handed off
    runtime = Runtime(VaultConnection(fleet.vault.addr, fleet.vault.token), clock=fleet.clock)
    cli = runtime.engine(holder="operator")
    policy = daemon.policies.key(fleet.env, "app-0")
    progress = drive(cli, policy, wait=True, start=False, command=Command(Verb.ABORT, by="bob"))
    runtime.close()
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    assert {k["name"] for k in fleet.emulator.live_keys()} == {"app-0-original"}


def test_rate_limited_creates_slow_the_account_down_and_fail_no_rotation(fleet: Fleet) -> None:
    """A burst of 429s (Retry-After 1 s) on creates while eight rotations start at once: the
    account's request bound halves and every rotation still succeeds, with no failed pass."""
    fleet.seed(8)
    fleet.emulator.set_fault("create", status=429, retry_after=1, count=6)
    daemon = fleet.daemon()
    ticks = fleet.rotate_all(daemon)
    assert _outcomes(fleet) == {reasons.SUCCEEDED}
    assert all(t.report.errors == [] for t in ticks)
    policy = daemon.policies.key(fleet.env, "app-0")
    client = cast(ARouterClient, daemon.runtime.provider(policy, None))
    limiter = client.limiter
    assert limiter.throttled >= 1
    assert [m["route"] for m in fleet.emulator.mutation_log()].count("create") == 8 + 6


class _Outstanding:
    """Creates in flight at once through a provider port (the most seen)."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def wrap(self, provider: KeyProvider) -> KeyProvider:
        outstanding = self

        class Counted:
            def __getattr__(self, name: str) -> Any:
                return getattr(provider, name)

            def create_key(self, spec: KeySpec) -> CreatedKey:
                with outstanding.lock:
                    outstanding.now += 1
                    outstanding.most = max(outstanding.most, outstanding.now)
                try:
                    time.sleep(0.05)  # real time: long enough for the others to be sent
                    return provider.create_key(spec)
                finally:
                    with outstanding.lock:
                        outstanding.now -= 1

        return cast(KeyProvider, Counted())


def _request_writes(fleet: Fleet) -> int:
    """The environment's emergency request's writes so far (its header's and its shards' KV
    versions: every write of a record makes one)."""
    request = EmergencyStore(fleet.kv, f"{fleet.env}/vault-rotator").read(fleet.env)
    assert request is not None
    return request.version + sum(request.shard_versions)


def test_an_emergency_rotation_costs_no_more_than_a_scheduled_one_and_starts_keys_at_once(
    fleet: Fleet,
) -> None:
    """An environment-wide emergency of twelve keys through the daemon: every key is started
    in the first tick with several creates outstanding at once (at most the limiter's bound);
    at most 9 Vault writes and exactly 2 provider mutations per rotation, the request's own
    progress counted apart (at most one save of its header and shard per tick); the change
    signal is never bumped by the daemon's passes."""
    fleet.seed(12)
    daemon = fleet.daemon()
    outstanding = _Outstanding()
    real = daemon.engine.providers
    daemon.engine.providers = lambda policy, dialect: outstanding.wrap(real(policy, dialect))
    environment = daemon.policies.environments[fleet.env]
    operator = VaultConnection(fleet.vault.addr, fleet.vault.token)
    fleet.conns.append(operator)
    open_request(environment, operator.kv, fleet.clock, by="ops", trigger="test",
                 revoke_old_now=False)  # fmt: skip
    signal = read_changes(fleet.kv, f"{fleet.env}/vault-rotator").version
    saved = _request_writes(fleet)

    ticks = fleet.rotate_all(daemon)

    assert _outcomes(fleet) == {reasons.SUCCEEDED_EMERGENCY}
    assert len(ticks[0].report.started) == 12
    policy = daemon.policies.key(fleet.env, "app-0")
    limiter = cast(ARouterClient, daemon.runtime.provider(policy, None)).limiter
    assert 1 < outstanding.most <= limiter.ceiling
    request_writes = _request_writes(fleet) - saved
    assert request_writes <= 2 * len(ticks)  # the header and the one shard, once a tick
    writes = sum(t.writes for t in ticks) - request_writes
    assert writes <= 9 * len(fleet.names), [t.writes for t in ticks]
    assert sorted(_mutation_routes(fleet)) == ["create"] * 12 + ["delete"] * 12
    assert read_changes(fleet.kv, f"{fleet.env}/vault-rotator").version == signal


def test_an_emergency_waits_out_a_long_retry_after_instead_of_stalling(fleet: Fleet) -> None:
    """During an environment-wide emergency a create is answered 429 with a Retry-After of
    four polls: no key stalls (no `resume` per key is needed), the keys wait (queued, or
    their rotation in flight) with no failed pass, and every key completes once the provider
    answers again."""
    fleet.seed(4)
    fleet.emulator.set_fault("create", status=429, retry_after=4 * POLL, count=1)
    daemon = fleet.daemon(holds_on_fake_clock=True)
    environment = daemon.policies.environments[fleet.env]
    operator = VaultConnection(fleet.vault.addr, fleet.vault.token)
    fleet.conns.append(operator)
    open_request(environment, operator.kv, fleet.clock, by="ops", trigger="test",
                 revoke_old_now=False)  # fmt: skip
    store = EmergencyStore(fleet.kv, f"{fleet.env}/vault-rotator")
    steps: set[str] = set()
    request = None
    for _ in range(30):
        tick = fleet.tick(daemon)
        assert tick.report.errors == []
        for name in fleet.names:
            rotation = fleet.record(name).rotation
            assert rotation is None or rotation.stalled is None, rotation.stalled
        request = store.read(fleet.env)
        assert request is not None
        steps |= {entry.step for entry in request.keys.values()}
        if request.complete:
            break
    assert request is not None
    assert request.complete
    assert Step.STALLED not in steps
    assert _outcomes(fleet) == {reasons.SUCCEEDED_EMERGENCY}
    statuses = [m["status"] for m in fleet.emulator.mutation_log() if m["route"] == "create"]
    assert sorted(statuses) == [201] * 4 + [429]


def test_a_record_vault_refuses_as_too_large_is_named_at_once_not_retried_forever(
    fleet: Fleet,
) -> None:
    """An old key whose permissions list 1,000 models (the most the client accepts; the policy
    leaves allowed_models to the old key, so they are copied to the new key and saved in the
    state record): OpenBao's default listener refuses the record (over 1000 JSON strings). The
    first failed pass alerts at once with reason record-too-large (a failed webhook; it was a
    generic failure, parked after 15 minutes), nothing was created, and the next passes alert
    no more."""
    fleet.seed(1)
    value = fleet.emulator.seed_key(
        "app-0-wide",
        allowed_providers=["openai"],
        allowed_models=[f"m-{i}" for i in range(1000)],
    )
    key_id, secret = value
    path = f"{fleet.env}/app-0"
    fleet.kv.write(path, {"api_key": secret, "key_id": key_id}, cas=1)
    daemon = fleet.daemon()
    sent: list[tuple[str, dict[str, Any]]] = []

    def notify(event: str, **fields: Any) -> bool:
        sent.append((event, fields))
        return True

    daemon.notifier.notify = notify  # type: ignore[method-assign]
    ((account, keys),) = daemon.accounts().items()
    first = daemon.tick(account, keys)  # (its consumer could not call: no such models)
    assert len(first.errors) == 1
    assert "as too large" in first.errors[0]
    assert [(e, f["reason"]) for e, f in sent] == [("failed", reasons.RECORD_TOO_LARGE)]
    for _ in range(3):
        fleet.clock.advance(POLL)
        daemon.tick(account, keys)
    metrics = daemon.metrics.render().decode()
    line = f'vault_rotator_stalls_total{{env="{fleet.env}",reason="record-too-large"}} 1.0'
    assert line in metrics
    assert len(sent) == 1
    assert "create" not in _mutation_routes(fleet)


class _Gate:
    """Creates of some keys held until released (a slow provider), so emergency starts are
    still under way on the start pool when the next tick comes."""

    def __init__(self, daemon: Daemon, held: tuple[str, ...]) -> None:
        self.event = threading.Event()
        real = daemon.engine.providers
        gate = self

        def providers(policy: KeyPolicy, dialect: str | None) -> KeyProvider:
            provider = real(policy, dialect)

            class Gated:
                def __getattr__(self, name: str) -> Any:
                    return getattr(provider, name)

                def create_key(self, spec: KeySpec) -> CreatedKey:
                    if spec.name.startswith(held):
                        gate.event.wait(20)
                    return provider.create_key(spec)

            return cast(KeyProvider, Gated())

        daemon.engine.providers = providers

    def release(self, daemon: Daemon) -> None:
        self.event.set()
        for starts in daemon.starting.values():
            for future in list(starts.values()):
                future.result(30)


def _open(fleet: Fleet, names: list[str]) -> None:
    """An emergency request of ``names`` saved in Vault, as `POST /v1/rotate/{env}` saves it."""
    request = new_request("r1", fleet.env, names, by="ops", trigger="test",
                          revoke_old_now=False, now=fleet.clock())  # fmt: skip
    EmergencyStore(fleet.kv, f"{fleet.env}/vault-rotator").update(fleet.env, lambda _c: request)


def _quick_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick waits for its emergency starts half a poll (real time): 0.25 s here."""
    monkeypatch.setattr(daemon_module, "_poll", lambda _keys: 0.5)


def _two_starts_held(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> tuple[Daemon, _Gate]:
    """Two keys, an emergency request over both, one tick: both starts under way on the
    start pool, held at their create until the gate opens."""
    fleet.seed(2)
    _quick_ticks(monkeypatch)
    daemon = fleet.daemon()
    gate = _Gate(daemon, (f"{fleet.env}-",))
    _open(fleet, fleet.names)
    ((account, keys),) = daemon.accounts().items()
    daemon.tick(account, keys)
    return daemon, gate


def test_scheduled_starts_count_emergency_starts_still_under_way(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_concurrent 2: two emergency starts still creating on the start pool when two other
    keys fall due: no scheduled start joins them (it did: four rotations in flight, eight live
    keys against the account's quota)."""
    fleet.seed(4)
    config = fleet.config / "fleet.yaml"
    body = config.read_text().replace("max_concurrent: 100", "max_concurrent: 2")
    for name in ("app-2", "app-3"):
        line = f"secret_path: {fleet.env}/{name}\n"
        body = body.replace(line, line + "    max_age: 1d\n")
    config.write_text(body)
    now = fleet.clock()
    rotated = {"app-0": now, "app-1": now, "app-2": now - 86400 + 10, "app-3": now - 86400 + 10}
    for name, at in rotated.items():  # app-0, app-1 not due; app-2, app-3 due in 10 s
        got = fleet.kv.read(f"{fleet.env}/{name}")
        assert got is not None
        stamp = datetime.fromtimestamp(at, UTC).isoformat()
        fleet.kv.write(f"{fleet.env}/{name}", {**got.data, "rotated_at": stamp}, cas=got.version)
    _quick_ticks(monkeypatch)
    daemon = fleet.daemon()
    gate = _Gate(daemon, (f"{fleet.env}-app-0-", f"{fleet.env}-app-1-"))
    environment = daemon.policies.environments[fleet.env]
    _open(fleet, ["app-0", "app-1"])
    assert environment.keys
    ((account, keys),) = daemon.accounts().items()
    first = daemon.tick(account, keys)  # the two starts, held; app-2 and app-3 are due too
    assert sorted(first.started) == [f"{fleet.env}/app-0", f"{fleet.env}/app-1"]
    fleet.clock.advance(POLL)
    second = daemon.tick(account, keys)
    assert second.started == []
    gate.release(daemon)
    flying = [n for n in fleet.names if fleet.record(n).rotation is not None]
    assert sorted(flying) == ["app-0", "app-1"]


def test_status_shows_keys_whose_start_is_under_way_as_creating(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/status's emergency view while both starts are held: `creating 2`, as the
    request was saved (it judged them from the book's idle records: `queued 2`)."""
    daemon, gate = _two_starts_held(fleet, monkeypatch)
    control = Control(daemon, VaultCallerAuth(daemon.runtime.conn))
    try:
        answer = control.handle("GET", "/v1/status", fleet.vault.token, {})
        assert answer.status == 200
        (view,) = answer.body["emergencies"]
        assert view["counts"] == {"creating": 2}
    finally:
        gate.release(daemon)


def test_a_start_still_waiting_in_the_start_pool_shows_queued(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start pool of one thread: one start under way (held at its create), the other
    waiting in the pool's queue. The request saves `creating 1, queued 1`: a start not begun
    is no work done (shown `creating`, a tick's thousand starts handed to the pool made the
    pace and ETA far too hopeful)."""
    fleet.seed(2)
    _quick_ticks(monkeypatch)
    daemon = fleet.daemon()
    daemon.start_pool.shutdown()
    daemon.start_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vr-start")
    gate = _Gate(daemon, (f"{fleet.env}-",))
    _open(fleet, fleet.names)
    ((account, keys),) = daemon.accounts().items()
    try:
        daemon.tick(account, keys)
        saved = EmergencyStore(fleet.kv, f"{fleet.env}/vault-rotator").read(fleet.env)
        assert saved is not None
        steps = sorted(entry.step for entry in saved.keys.values())
        assert steps == sorted([Step.CREATING, Step.QUEUED])
    finally:
        gate.release(daemon)


def _cli_round(fleet: Fleet, *, max_concurrent: int = 100) -> tuple[VaultConnection, Round]:
    """A CLI's rounds of a request of every key (what `rotate --env ... --emergency` runs)."""
    config = fleet.config / "fleet.yaml"
    config.write_text(
        config.read_text().replace("max_concurrent: 100", f"max_concurrent: {max_concurrent}")
    )
    environment = load_policies(fleet.config).environments[fleet.env]
    conn = VaultConnection(fleet.vault.addr, fleet.vault.token)
    fleet.conns.append(conn)
    runtime = Runtime(conn, clock=fleet.clock, sleep=fleet.clock.sleep)
    runtime.monotonic = fleet.clock  # the provider's holds on the fake clock
    return conn, Round(runtime.engine(fault=no_fault), environment, drive=True)


def _run(rounds: Round, request: EmergencyRequest) -> EmergencyRequest:
    with ThreadPoolExecutor(4) as pool:
        return rounds.run(request, map=lambda f, xs: list(pool.map(f, xs))).request


def test_a_cli_round_starts_keys_within_max_concurrent(fleet: Fleet) -> None:
    """max_concurrent 2, six keys: one CLI round starts two of them (it started all six),
    the rest stay queued."""
    fleet.seed(6)
    conn, rounds = _cli_round(fleet, max_concurrent=2)
    request, _ = open_request(rounds.environment, conn.kv, fleet.clock, by="ops",
                              trigger="test", revoke_old_now=False)  # fmt: skip
    request = _run(rounds, request)
    flying = [n for n in fleet.names if fleet.record(n).rotation is not None]
    assert len(flying) == 2, flying
    assert sum(1 for e in request.keys.values() if e.step == Step.QUEUED) == 4


def test_a_cli_round_sends_and_writes_nothing_while_the_provider_holds_the_account(
    fleet: Fleet,
) -> None:
    """A create answered 429 with a Retry-After of ten polls: the rounds during the wait send
    the provider nothing and write no key's record (each wrote 'about to create' and its
    undoing for every key, 11 writes a round for no progress); afterwards every key completes."""
    fleet.seed(6)
    fleet.emulator.set_fault("create", status=429, retry_after=10 * POLL, count=1)
    conn, rounds = _cli_round(fleet)
    request, _ = open_request(rounds.environment, conn.kv, fleet.clock, by="ops",
                              trigger="test", revoke_old_now=False)  # fmt: skip
    request = _run(rounds, request)  # the 429
    paths = [fleet.store.state_path(fleet.env, n) for n in fleet.names]
    lists = fleet.emulator.request_counts()["list"]
    for _ in range(8):
        fleet.clock.advance(POLL)
        versions = [fleet.kv.current_version(p) for p in paths]
        request = _run(rounds, request)
        assert [fleet.kv.current_version(p) for p in paths] == versions
    assert fleet.emulator.request_counts()["list"] == lists
    for _ in range(30):
        fleet.clock.advance(POLL)
        fleet.consume()
        request = _run(rounds, request)
        if request.complete:
            break
    assert request.complete


def test_shutdown_waits_for_emergency_starts_before_the_leases_go(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At shutdown the daemon says a start under way still runs (so the account lease is not
    given back under it: another replica would take the account mid-create) until it ends."""
    daemon, gate = _two_starts_held(fleet, monkeypatch)
    try:
        assert daemon.drain_starts(0.2) is False
    finally:
        gate.event.set()
    assert daemon.drain_starts(30) is True


def test_emergency_starts_ask_the_tokens_capabilities_once_per_batch_and_fail_a_key_it_cannot_serve(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve keys, a daemon token that may not write one key's consumer secret: the starts
    ask Vault for the token's capabilities in one request (not one per key, on the start
    pool), that key is failed in the request with what the token lacks (nothing created for
    it), the eleven others rotate."""
    fleet.seed(12)
    stamp = datetime.fromtimestamp(fleet.clock(), UTC).isoformat()
    for n in fleet.names:  # rotated just now by someone else: not due by schedule
        got = fleet.kv.read(f"{fleet.env}/{n}")
        assert got is not None
        fleet.kv.write(f"{fleet.env}/{n}", {**got.data, "rotated_at": stamp}, cas=got.version)
    weak = "app-3"
    admin = hvac.Client(url=fleet.vault.addr, token=fleet.vault.token)
    name = f"weak-{fleet.env}"
    admin.sys.create_or_update_policy(
        name,
        'path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }\n'
        'path "sys/capabilities-self" { capabilities = ["update"] }\n'
        f'path "secret/data/{fleet.env}/{weak}" {{ capabilities = ["read"] }}\n',
    )
    token = str(
        admin.auth.token.create(policies=["default", name], ttl="30m")["auth"]["client_token"]
    )
    daemon = fleet.daemon(token=token)
    asked: list[int] = []
    real = VaultKv.capabilities

    def counted(self: VaultKv, paths: Any) -> dict[str, frozenset[str]]:
        asked.append(len(paths))
        return real(self, paths)

    monkeypatch.setattr(VaultKv, "capabilities", counted)
    _open(fleet, fleet.names)
    for _ in range(20):
        fleet.tick(daemon)
        request = EmergencyStore(fleet.kv, f"{fleet.env}/vault-rotator").read(fleet.env)
        assert request is not None
        if request.settled:
            break
    else:
        pytest.fail("the request did not settle")
    steps = {n: e.step for n, e in request.keys.items()}
    assert steps.pop(weak) == Step.FAILED
    assert set(steps.values()) == {Step.DONE}
    assert "lacks" in str(request.keys[weak].detail)
    assert len(asked) == 1, asked  # the twelve starts' paths in one request
    assert asked[0] >= 12 * 3
    assert fleet.record(weak).rotation is None
    created = [e for e in fleet.emulator.mutation_log() if e["route"] == "create"]
    assert len(created) == 11
