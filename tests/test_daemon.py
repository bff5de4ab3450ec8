"""The daemon's reconcile loop on an injected clock, against real OpenBao and the emulator."""

from __future__ import annotations

import copy
import http.server
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from world import MANAGEMENT_KEY, EmulatorFactory, no_fault

from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.freeze import freeze
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.notify import Notifier
from vault_rotator.daemon.service import Service
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.changes import note_change
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import SCHEMA_VERSION
from vault_rotator.errors import StoreUnavailableError
from vault_rotator.policy import load_policies
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

DAY = 86400.0
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {tag}/management
  usage_lag: 60s
  poll_interval: 30s
  max_concurrent: 64
vault:
  kv_mount: secret
  state_prefix: {tag}/vault-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  max_age: 45d
  pickup_timeout: 1h
  drain_period: 10m
  drain_timeout: 2h
keys:
{keys}
"""


@dataclass
class Fleet:
    """Keys of one account under one daemon, their consumers and a fake clock."""

    vault: VaultServer
    emulator: Emulator
    clock: FakeClock
    config: Path
    tag: str = field(default_factory=lambda: f"d{uuid.uuid4().hex[:8]}")
    names: list[str] = field(default_factory=list)
    conns: list[VaultConnection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = VaultConnection(self.vault.addr, self.vault.token)
        self.kv: VaultKv = self.conn.kv("secret")
        self.kv.write(f"{self.tag}/management", {"key": MANAGEMENT_KEY}, cas=0)

    def write_config(self, names: list[str]) -> None:
        keys = "\n".join(
            f"  - name: {n}\n    secret_path: {self.tag}/{n}\n    allowed_providers: [openai]"
            for n in names
        )
        body = CONFIG.format(env=self.tag, base_url=self.emulator.base_url, tag=self.tag, keys=keys)
        (self.config / "fleet.yaml").write_text(body)

    def seed(self, count: int) -> None:
        self.names = [f"app-{i}" for i in range(count)]
        for name in self.names:
            key_id, value = self.emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
            self.kv.write(f"{self.tag}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
        self.write_config(self.names)

    def daemon(self, *, notifier: Notifier | None = None) -> Daemon:
        conn = VaultConnection(self.vault.addr, self.vault.token)
        self.conns.append(conn)
        runtime = Runtime(conn, clock=self.clock, sleep=self.clock.sleep)
        return Daemon(
            load_policies(self.config),
            runtime,
            notifier=notifier,
            metrics=Metrics(),
            fault=no_fault,
        )

    def consume(self, names: list[str] | None = None) -> list[int]:
        """Every app calls once with whatever key Vault serves it now."""
        statuses = []
        for name in names if names is not None else self.names:
            got = self.kv.read(f"{self.tag}/{name}")
            if got is not None:
                statuses.append(self.emulator.call(str(got.data["api_key"])))
        return statuses

    def record(self, name: str) -> Any:
        return StateStore(self.kv, f"{self.tag}/vault-rotator").read(self.tag, name)[0]

    def run(self, daemon: Daemon, ticks: int, *, consume: list[str] | None = None) -> list[int]:
        """Tick every 30 s of fake time, the apps calling between ticks."""
        statuses: list[int] = []
        ((account, keys),) = daemon.accounts().items()
        for _ in range(ticks):
            daemon.tick(account, keys)
            self.clock.advance(30)
            statuses += self.consume(consume)
        return statuses

    def close(self) -> None:
        for conn in (self.conn, *self.conns):
            conn.close()


@pytest.fixture
def fleet(vault: VaultServer, make_emulator: EmulatorFactory, tmp_path: Path) -> Iterator[Fleet]:
    """An account with an emulator (dialect c) sharing a fake clock with the daemon."""
    clock = FakeClock()
    emulator = make_emulator(dialect="c", clock=clock)
    fleet = Fleet(vault, emulator, clock, tmp_path)
    yield fleet
    fleet.close()


def test_fifty_rotations_in_flight_share_one_list_pass_per_poll(fleet: Fleet) -> None:
    """With 50 rotations in flight on one account, a tick lists the keys once, not per key."""
    fleet.seed(50)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    first = daemon.tick(account, keys)
    assert len(first.started) == 50
    for _ in range(10):
        fleet.clock.advance(30)
        daemon.tick(account, keys)
        if all(fleet.record(n).phase == reasons.PUBLISHED for n in fleet.names):
            break
    assert all(fleet.record(n).phase == reasons.PUBLISHED for n in fleet.names)
    fleet.clock.advance(30)
    fleet.consume()
    before = fleet.emulator.request_counts()["list"]
    daemon.runtime.provider(keys[0], None).list_keys()
    one_pass = fleet.emulator.request_counts()["list"] - before  # pages of one list pass
    assert 1 <= one_pass <= 2  # 100 keys: one full page, maybe an empty last one
    before = fleet.emulator.request_counts()["list"]
    report = daemon.tick(account, keys)
    assert fleet.emulator.request_counts()["list"] - before == one_pass
    assert len(report.advanced) == 50
    assert report.errors == []


def test_full_rotation_by_ticks_logs_no_secret_and_counts_metrics(fleet: Fleet) -> None:
    """A scheduled rotation runs to its end through ticks; no log line holds a key or token."""
    fleet.seed(1)
    daemon = fleet.daemon()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            statuses = fleet.run(daemon, 40)
    finally:
        structlog.reset_defaults()
    assert any(e["log_level"] == "debug" for e in logs)  # debug lines were captured too
    record = fleet.record("app-0")
    assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED]
    assert record.outcomes[0].trigger == "schedule"
    assert set(statuses) == {200}
    text = json.dumps(logs, default=str)
    assert "rotation finished" in text
    for needle in ("lr_live_", "lr_mgmt_", fleet.vault.token):
        assert needle not in text
    metrics = daemon.metrics.render().decode()
    assert (
        f'vault_rotator_rotations_total{{env="{fleet.tag}",key="app-0",outcome="succeeded"}} 1.0'
        in metrics
    )
    assert 'route="GET /v1/keys"' in metrics
    assert 'vault_rotator_vault_requests_total{operation="write",status="ok"}' in metrics


def test_missed_schedule_fires_once_after_restart_and_frozen_keys_wait(fleet: Fleet) -> None:
    """Down for 90 days: each key rotates once (not once per missed month); a frozen one not."""
    fleet.seed(2)
    fleet.run(fleet.daemon(), 40)
    assert all(len(fleet.record(n).outcomes) == 1 for n in fleet.names)
    fleet.clock.advance(90 * DAY)  # the daemon was down
    freeze(fleet.kv, f"{fleet.tag}/vault-rotator", f"{fleet.tag}/app-1", "test", at=fleet.clock())
    restarted = fleet.daemon()
    ((account, keys),) = restarted.accounts().items()
    report = restarted.tick(account, keys)
    assert report.started == [f"{fleet.tag}/app-0"]
    fleet.run(restarted, 40)
    assert len(fleet.record("app-0").outcomes) == 2
    assert len(fleet.record("app-1").outcomes) == 1  # frozen
    again = restarted.tick(account, keys)
    assert again.started == []  # next slot is next month


def test_rotation_of_a_key_removed_from_policy_is_finished(fleet: Fleet) -> None:
    """A rotation in flight whose key left the config is resumed on start and finished."""
    fleet.seed(2)
    first = fleet.daemon()
    ((account, keys),) = first.accounts().items()
    first.tick(account, keys)  # both start
    assert fleet.record("app-1").rotation is not None
    fleet.write_config(["app-0"])  # app-1 leaves the policies
    restarted = fleet.daemon()
    fleet.run(restarted, 40)
    record = fleet.record("app-1")
    assert record.rotation is None
    assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED]


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []  # noqa: RUF012  (reset by the one test using it)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return None


def test_webhook_gets_one_message_per_stalled_rotation(fleet: Fleet) -> None:
    """No consumer ever switches: one 'stalled' webhook, however many ticks follow."""
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    notifier = Notifier([f"http://127.0.0.1:{server.server_address[1]}/hook"])
    try:
        fleet.seed(1)
        daemon = fleet.daemon(notifier=notifier)
        fleet.run(daemon, 200, consume=[])  # 100 minutes: past the 1 h pickup_timeout
        notifier.close(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    stalls = [m for m in _Receiver.received if m["vault_rotator"]["event"] == "stalled"]
    assert len(stalls) == 1
    assert stalls[0]["vault_rotator"]["reason"] == reasons.PICKUP_TIMEOUT
    assert "lr_live_" not in json.dumps(_Receiver.received)
    assert fleet.record("app-0").rotation.stalled is not None


def test_management_key_rotated_in_vault_is_picked_up_after_a_401(fleet: Fleet) -> None:
    """The management key changes mid-rotation: after one 401 the daemon re-reads it from Vault."""
    fleet.seed(1)
    daemon = fleet.daemon()
    fleet.run(daemon, 3)
    assert fleet.record("app-0").rotation is not None
    new_key = "lr_mgmt_rotated_fedcba9876543210"
    fleet.emulator.add_management_key(new_key)
    fleet.kv.write(f"{fleet.tag}/management", {"key": new_key}, cas=1)
    fleet.emulator.revoke_management_key(MANAGEMENT_KEY)
    with structlog.testing.capture_logs() as logs:
        fleet.run(daemon, 40)
    assert [o.outcome for o in fleet.record("app-0").outcomes] == [reasons.SUCCEEDED]
    assert any(e["event"] == "management key refused; reading it from Vault again" for e in logs)
    assert new_key not in json.dumps(logs, default=str)


def test_reload_keeps_the_old_policies_when_the_new_ones_are_invalid(fleet: Fleet) -> None:
    """SIGHUP's reload: a broken file is refused with FILE:LINE and the old policies stay."""
    fleet.seed(2)
    daemon = fleet.daemon()
    service = Service(daemon, StopFlag(), fleet.config)
    before = daemon.policies
    path = fleet.config / "fleet.yaml"
    path.write_text(path.read_text().replace("drain_period: 10m", "drain_period: 10"))
    with structlog.testing.capture_logs() as logs:
        assert service.reload() is False
    assert daemon.policies is before
    problems = [e["problem"] for e in logs if "problem" in e]
    assert any(p.startswith(f"{path}:") and "drain_period" in p for p in problems)
    fleet.write_config(["app-0"])
    assert service.reload() is True
    assert [p.name for p in daemon.policies] == ["app-0"]


def test_one_unreadable_record_does_not_block_the_other_keys(fleet: Fleet) -> None:
    """A record written by a newer vault-rotator is that key's error; its neighbour rotates."""
    fleet.seed(2)
    store = StateStore(fleet.kv, f"{fleet.tag}/vault-rotator")
    newer = {"schema": SCHEMA_VERSION + 1, "env": fleet.tag, "name": "app-0", "phase": "idle"}
    fleet.kv.write(store.state_path(fleet.tag, "app-0"), newer, cas=0)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    report = daemon.tick(account, keys)
    assert report.started == [f"{fleet.tag}/app-1"]
    (error,) = report.errors
    assert error.startswith(f"{fleet.tag}/app-0: ")
    assert "newer vault-rotator" in error
    fleet.run(daemon, 40)
    assert [o.outcome for o in fleet.record("app-1").outcomes] == [reasons.SUCCEEDED]
    left = fleet.kv.read(store.state_path(fleet.tag, "app-0"))
    assert left is not None
    assert left.data == newer  # left as it is


def test_a_bug_in_one_keys_pass_does_not_stop_the_tick(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in one key's pass is reported; the other key still rotates."""
    fleet.seed(2)
    daemon = fleet.daemon()
    real = daemon.engine.advance

    def advance(policy: Any, **kwargs: Any) -> Any:
        if policy.name == "app-0":
            raise AttributeError("'NoneType' object has no attribute 'timestamp'")
        return real(policy, **kwargs)

    monkeypatch.setattr(daemon.engine, "advance", advance)
    ((account, keys),) = daemon.accounts().items()
    report = daemon.tick(account, keys)
    assert report.started == [f"{fleet.tag}/app-1"]
    assert report.errors == [
        f"{fleet.tag}/app-0: unexpected AttributeError: "
        "'NoneType' object has no attribute 'timestamp'"
    ]
    fleet.run(daemon, 40)
    assert [o.outcome for o in fleet.record("app-1").outcomes] == [reasons.SUCCEEDED]


def _webhook_receiver() -> tuple[ThreadingHTTPServer, Notifier]:
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Notifier([f"http://127.0.0.1:{server.server_address[1]}/hook"])


def test_a_rotation_that_keeps_failing_is_parked_as_a_stall_and_alerted_once(
    fleet: Fleet,
) -> None:
    """The provider refuses every delete: after 15 min of failed passes, one stall, one alert."""
    fleet.seed(1)
    server, notifier = _webhook_receiver()
    try:
        daemon = fleet.daemon(notifier=notifier)
        fleet.emulator.set_fault("delete", status=403)
        fleet.run(daemon, 120)  # 1 h: drain (10 m) ends, then every delete is refused
        notifier.close(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    rotation = fleet.record("app-0").rotation
    assert rotation is not None
    assert rotation.stalled is not None
    assert rotation.stalled.reason == reasons.RETRIES_EXHAUSTED
    assert "passes failed over" in rotation.stalled.detail
    events = [m["vault_rotator"] for m in _Receiver.received]
    assert [(e["event"], e["reason"]) for e in events] == [("stalled", reasons.RETRIES_EXHAUSTED)]
    assert {rotation.old_key_id, rotation.new_key_id} <= {
        k["id"] for k in fleet.emulator.live_keys()
    }


def test_a_start_that_keeps_failing_backs_off_and_alerts_once(fleet: Fleet) -> None:
    """A key whose every start fails preflight is retried less and less often, one alert."""
    fleet.seed(1)
    path = fleet.config / "fleet.yaml"
    broken = f"  - name: broken\n    secret_path: {fleet.tag}/broken\n"  # no permissions at all
    path.write_text(path.read_text() + broken)
    server, notifier = _webhook_receiver()
    try:
        daemon = fleet.daemon(notifier=notifier)
        ((account, keys),) = daemon.accounts().items()
        failures = []
        for _ in range(240):  # 2 h of 30 s polls
            failures.append(sum("/broken: " in e for e in daemon.tick(account, keys).errors))
            fleet.clock.advance(30)
            fleet.consume(["app-0"])
        notifier.close(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert sum(failures[:30]) == 30  # the first 15 minutes: every poll
    assert sum(failures[30:]) < 15  # then backing off (doubling up to an hour)
    events = [m["vault_rotator"] for m in _Receiver.received]
    assert [(e["event"], e["reason"]) for e in events] == [("failed", reasons.RETRIES_EXHAUSTED)]
    assert "neither allowed_providers nor allowed_models" in events[0]["detail"]
    assert [o.outcome for o in fleet.record("app-0").outcomes] == [reasons.SUCCEEDED]


def _samples(daemon: Daemon, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(daemon.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_key_age_covers_never_rotated_keys_and_overdue_keys_are_counted(fleet: Fleet) -> None:
    """Before its first rotation a key's age counts from its secret, labelled never rotated;
    a frozen key past max_age is overdue; after a rotation the age is the record's."""
    fleet.seed(2)
    written = datetime.fromtimestamp(fleet.clock() - 100 * DAY, UTC).isoformat()
    got = fleet.kv.read(f"{fleet.tag}/app-1")
    assert got is not None
    fleet.kv.write(f"{fleet.tag}/app-1", {**got.data, "rotated_at": written}, cas=got.version)
    prefix = f"{fleet.tag}/vault-rotator"
    freeze(fleet.kv, prefix, f"{fleet.tag}/app-1", "test", at=fleet.clock(), reason="hold")
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    daemon.tick(account, keys)
    ages = _samples(daemon, "vault_rotator_key_age_seconds")
    key = (("env", fleet.tag), ("key", "app-1"), ("never_rotated", "true"))
    assert ages[key] == pytest.approx(100 * DAY, abs=5)
    assert _samples(daemon, "vault_rotator_keys_overdue") == {(("env", fleet.tag),): 1.0}
    fleet.run(daemon, 40)
    ages = _samples(daemon, "vault_rotator_key_age_seconds")
    assert (("env", fleet.tag), ("key", "app-0"), ("never_rotated", "false")) in ages
    assert (("env", fleet.tag), ("key", "app-0"), ("never_rotated", "true")) not in ages


def test_metrics_users_alert_on_are_exposed_with_bounded_labels(fleet: Fleet) -> None:
    """Webhook deliveries, build info, process metrics, last tick; status labels are words."""
    fleet.seed(1)
    server, notifier = _webhook_receiver()
    try:
        daemon = fleet.daemon(notifier=notifier)
        notifier.notify("failed", env=fleet.tag, key="x", reason="test")
        notifier.close(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    ((account, keys),) = daemon.accounts().items()
    fleet.emulator.set_fault("list", status=503, count=1)
    daemon.tick(account, keys)
    deliveries = _samples(daemon, "vault_rotator_webhook_deliveries_total")
    assert deliveries[(("result", "sent"),)] == 1.0
    assert _samples(daemon, "vault_rotator_build_info")
    assert _samples(daemon, "process_resident_memory_bytes")
    assert _samples(daemon, "vault_rotator_last_tick_timestamp_seconds")
    words = {"ok", "denied", "unavailable", "conflict", "error"}
    vault = _samples(daemon, "vault_rotator_vault_requests_total")
    assert {dict(labels)["status"] for labels in vault} <= words
    provider = _samples(daemon, "vault_rotator_provider_requests_total")
    assert all(not dict(labels)["status"].endswith("Error") for labels in provider)


def test_scattered_failures_with_good_ticks_between_never_park_a_key(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three brief Vault failures hours apart, good ticks between: no key is parked or alerted
    (an episode is failures in a row, and a read or pass of the key that works ends it). Each
    failing tick re-reads the key because the change signal names it (as after a CLI's act)."""
    fleet.seed(1)
    server, notifier = _webhook_receiver()
    try:
        daemon = fleet.daemon(notifier=notifier)
        fleet.run(daemon, 40)  # rotated: idle and not due for a month
        real_read = StateStore.read
        failing = {"now": False}

        def read(self: StateStore, env: str, name: str) -> Any:
            if failing["now"]:
                raise StoreUnavailableError("Vault is sealed or down (read on secret/x)")
            return real_read(self, env, name)

        monkeypatch.setattr(StateStore, "read", read)
        ((account, keys),) = daemon.accounts().items()
        for _ in range(4):
            failing["now"] = True
            note_change(fleet.kv, f"{fleet.tag}/vault-rotator", f"{fleet.tag}/app-0", at=0.0)
            assert daemon.tick(account, keys).errors
            failing["now"] = False
            for _ in range(60):  # half an hour of good ticks
                assert daemon.tick(account, keys).errors == []
                fleet.clock.advance(30)
        notifier.close(timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert [m["vault_rotator"]["event"] for m in _Receiver.received] == []
    assert not daemon.failures.waiting(f"{fleet.tag}/app-0")


def test_a_reload_that_drops_a_key_drops_its_gauges(fleet: Fleet) -> None:
    """After SIGHUP's reload removes a key, its age series is gone (no alert on a ghost)."""
    fleet.seed(2)
    daemon = fleet.daemon()
    service = Service(daemon, StopFlag(), fleet.config)
    fleet.run(daemon, 40)
    assert any(dict(k)["key"] == "app-1" for k in _samples(daemon, "vault_rotator_key_age_seconds"))
    fleet.write_config(["app-0"])
    assert service.reload() is True
    ((account, keys),) = daemon.accounts().items()
    daemon.tick(account, keys)
    ages = _samples(daemon, "vault_rotator_key_age_seconds")
    assert [dict(k)["key"] for k in ages] == ["app-0"]


def test_a_rotation_whose_account_left_the_config_is_still_finished(
    fleet: Fleet, make_emulator: EmulatorFactory, vault: VaultServer
) -> None:
    """The account of a rotation in flight leaves the policies (its file removed, the daemon
    restarted): the daemon still ticks that account and finishes the rotation it began."""
    fleet.seed(1)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    for _ in range(10):
        daemon.tick(account, keys)
        fleet.clock.advance(30)
        if fleet.record("app-0").phase == reasons.PUBLISHED:
            break
    assert fleet.record("app-0").phase == reasons.PUBLISHED
    other = make_emulator(dialect="c", clock=fleet.clock)  # the config now names another account
    key = f"  - name: elsewhere\n    secret_path: {fleet.tag}/elsewhere\n"
    key += "    allowed_providers: [openai]"
    body = CONFIG.format(env=fleet.tag, base_url=other.base_url, tag=fleet.tag, keys=key)
    (fleet.config / "fleet.yaml").write_text(body)
    restarted = fleet.daemon()
    orphans = restarted.discover_orphans()
    assert list(orphans) == [account]
    for _ in range(60):
        restarted.tick(account, restarted.accounts().get(account, ()))
        fleet.clock.advance(30)
        fleet.consume(["app-0"])
        if fleet.record("app-0").rotation is None:
            break
    assert [o.outcome for o in fleet.record("app-0").outcomes] == [reasons.SUCCEEDED]


def test_a_forged_rotation_outside_the_policies_never_sends_a_management_key_elsewhere(
    fleet: Fleet,
) -> None:
    """Someone with write on the state prefix copies a rotation in flight as a key no policy
    names, its stored policy pointing at another provider host with the real management key
    path: the daemon does not take it for an account that left the policies (finishing it
    would read that management key and send it to the forged host); it warns once, naming
    the host escaped."""
    fleet.seed(1)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    for _ in range(10):
        daemon.tick(account, keys)
        fleet.clock.advance(30)
        if fleet.record("app-0").phase == reasons.PUBLISHED:
            break
    store = StateStore(fleet.kv, f"{fleet.tag}/vault-rotator")
    got = fleet.kv.read(store.state_path(fleet.tag, "app-0"))
    assert got is not None
    forged = copy.deepcopy(dict(got.data))
    forged["name"] = "ghost"
    forged["rotation"]["policy"]["name"] = "ghost"
    forged["rotation"]["policy"]["provider"]["base_url"] = "https://exfil.example.net"
    fleet.kv.write(store.state_path(fleet.tag, "ghost"), forged, cas=0)
    restarted = fleet.daemon()
    with structlog.testing.capture_logs() as logs:
        assert restarted.discover_orphans() == {}
    warned = [e for e in logs if "provider host is none the policies name" in e["event"]]
    assert [e["host"] for e in warned] == ["exfil.example.net"]


def test_a_forged_provider_in_a_rotation_in_flight_of_a_policy_key_is_refused(
    fleet: Fleet,
) -> None:
    """Someone with write on the state prefix rewrites the provider URL stored in a rotation
    in flight of a key the policies name: no pass sends anything there (the configured
    management key went to the forged URL six times); each pass is refused in one line."""
    fleet.seed(1)
    daemon = fleet.daemon()
    ((account, keys),) = daemon.accounts().items()
    daemon.tick(account, keys)  # the first run's rotation, in flight
    seen: list[str] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(500)
            self.end_headers()

        do_POST = do_DELETE = do_PATCH = do_GET

        def log_message(self, *_args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = StateStore(fleet.kv, f"{fleet.tag}/vault-rotator")
    got = fleet.kv.read(store.state_path(fleet.tag, "app-0"))
    assert got is not None
    forged = copy.deepcopy(dict(got.data))
    forged["rotation"]["policy"]["provider"]["base_url"] = (
        f"http://127.0.0.2:{server.server_address[1]}"
    )
    fleet.kv.write(store.state_path(fleet.tag, "app-0"), forged, cas=got.version)
    restarted = fleet.daemon()  # reads the record from Vault
    try:
        for _ in range(3):
            fleet.clock.advance(30)
            errors = restarted.tick(account, keys).errors
            assert any("provider host '127.0.0.2'" in e and "refused" in e for e in errors)
    finally:
        server.shutdown()
        server.server_close()
    assert seen == []
