"""`GET /v1/status` answered from what the daemon holds (its books), not from a Vault read per
key (issue 19); against real OpenBao and the emulator on a fake clock.

A fleet of 200 keys: most never rotated by vault-rotator (a `rotated_at` in their secret, not
due), some rotated once, some with a rotation in flight (a first one, and a second one), and an
environment-wide emergency request saved over all of them. The daemon's answer is compared
with the rows `vault-rotator status` reads from Vault, and its Vault reads are counted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hvac
import pytest
from world import MANAGEMENT_KEY, EmulatorFactory, no_fault

from vault_rotator.commands.run_cmd import VaultCallerAuth
from vault_rotator.daemon.book import Entry, SecretSeen
from vault_rotator.daemon.control import Control, control_path
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.emergencies import emergency_views, open_request
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.status_rows import STATUS_ACK_KEYS, collect, secret_facts
from vault_rotator.display import redact_text
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.engine import Command, Verb
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import Rotation, StateRecord
from vault_rotator.policy import load_policies
from vault_rotator.ports.provider import Permissions
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

KEYS = 200
NOW = 1_800_000_000.0
FIRST = 30  # keys with no rotated_at: due at once, rotated by the daemon first
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key: {{path: {env}/management}}
  usage_lag: 60s
  poll_interval: 30s
  max_concurrent: 100
vault: {{kv_mount: secret, state_prefix: {env}/vault-rotator}}
require_spending_limit: false
defaults:
  schedule: "@monthly"
  max_age: 45d
  pickup_timeout: 1h
  drain_period: 2m
  drain_timeout: 2h
keys:
{keys}
"""


@dataclass
class Fleet:
    vault: VaultServer
    emulator: Emulator
    clock: FakeClock
    config: Path
    env: str = field(default_factory=lambda: f"h{uuid.uuid4().hex[:8]}")
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = VaultConnection(self.vault.addr, self.vault.token)
        self.kv: VaultKv = self.conn.kv("secret")
        self.kv.write(f"{self.env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        self.store = StateStore(self.kv, f"{self.env}/vault-rotator")
        self.names = [f"k{i:03d}" for i in range(KEYS)]
        stamp = datetime.fromtimestamp(self.clock() - 86400, UTC).isoformat()
        for i, name in enumerate(self.names):
            key_id, value = self.emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
            data = {"api_key": value, "key_id": key_id}
            if i >= FIRST:
                data["rotated_at"] = stamp  # rotated a day ago by someone else: not due
            self.kv.write(f"{self.env}/{name}", data, cas=0)
        keys = "\n".join(
            f"  - {{name: {n}, secret_path: {self.env}/{n}, allowed_providers: [openai]}}"
            for n in self.names
        )
        text = CONFIG.format(env=self.env, base_url=self.emulator.base_url, keys=keys)
        (self.config / "fleet.yaml").write_text(text)
        # the daemon's own connection: its reads are what is counted
        self.daemon_conn = VaultConnection(self.vault.addr, self.vault.token)
        runtime = Runtime(self.daemon_conn, clock=self.clock, sleep=self.clock.sleep)
        self.daemon = Daemon(load_policies(self.config), runtime, metrics=Metrics(), fault=no_fault)
        self.daemon.replicas.kv = self.conn.kv  # the account lease: not the keys' reads
        self.control = Control(self.daemon, VaultCallerAuth(self.daemon_conn))

    def tick(self) -> None:
        """One poll, then 30 s later every app calls with what Vault serves it."""
        ((account, keys),) = self.daemon.accounts().items()
        assert self.daemon.tick(account, keys).errors == []
        self.clock.advance(30)
        for name in self.names[:FIRST] + self.names[-10:]:
            got = self.kv.read(f"{self.env}/{name}")
            assert got is not None
            assert self.emulator.call(str(got.data["api_key"])) == 200

    def status(self) -> tuple[dict[str, Any], int]:
        """The daemon's answer to a root token, and the Vault reads it cost."""
        before = self.daemon_conn.reads()
        answer = self.control.handle("GET", "/v1/status", self.vault.token, {})
        assert answer.status == 200, answer.body
        return answer.body, self.daemon_conn.reads() - before

    def close(self) -> None:
        self.daemon.close()
        self.daemon_conn.close()
        self.conn.close()


@pytest.fixture
def fleet(vault: VaultServer, make_emulator: EmulatorFactory, tmp_path: Path) -> Iterator[Fleet]:
    clock = FakeClock()
    fleet = Fleet(vault, make_emulator(dialect="c", clock=clock), clock, tmp_path)
    yield fleet
    fleet.close()


def _settle(fleet: Fleet) -> None:
    """The first FIRST keys rotated once; then 10 of them and the last 10 (never rotated by
    vault-rotator) started again by an operator; every book up to date."""
    for _ in range(40):
        fleet.tick()
        if all(fleet.store.read(fleet.env, n)[0].outcomes for n in fleet.names[:FIRST]):
            break
    else:
        pytest.fail("the first keys did not finish their rotation")
    policies = {p.name: p for p in fleet.daemon.policies}
    for name in fleet.names[:10] + fleet.names[-10:]:
        command = Command(Verb.ROTATE, trigger="cli", by="test")
        fleet.daemon.engine.advance(policies[name], start=True, command=command)
    fleet.tick()


def _open_through_the_api(fleet: Fleet) -> None:
    """An emergency request over every key, saved through the daemon's control API (the
    daemon shows it at once; one a CLI saves shows from the daemon's next poll)."""
    answer = fleet.control.handle(
        "POST", f"/v1/rotate/{fleet.env}", fleet.vault.token, {"emergency": True}
    )
    assert answer.status == 202, answer.body


def test_status_costs_a_bounded_number_of_vault_reads_whatever_the_key_count(
    fleet: Fleet,
) -> None:
    """With every key in the daemon's book, one GET /v1/status reads the acks of at most
    STATUS_ACK_KEYS rotations in flight: a constant, not reads per key (the emergency request
    as the daemon holds it)."""
    _settle(fleet)
    _open_through_the_api(fleet)
    body, reads = fleet.status()
    assert len(body["keys"]) == KEYS
    (doc,) = body["emergencies"]
    assert doc["keys"] == KEYS
    # for each key whose acks are read a list of its ack folder (no ack records here)
    assert reads <= STATUS_ACK_KEYS, reads


def test_the_daemons_rows_are_those_status_reads_from_vault(fleet: Fleet) -> None:
    """Idle keys never rotated, rotated once, rotations in flight (first and second): each row
    from the book equals the row read from Vault; acks are shown for rotations in flight (at
    most STATUS_ACK_KEYS of them), not for idle keys; the emergency view is the same."""
    _settle(fleet)
    _open_through_the_api(fleet)
    body, _reads = fleet.status()
    now = fleet.clock()
    policies = fleet.daemon.policies
    read = {row["key"]: row for row in collect(policies, fleet.daemon.runtime, now)}
    held = {row["key"]: row for row in body["keys"]}
    assert list(held) == list(read)
    flying = [ref for ref, row in read.items() if row["rotation_id"] is not None]
    assert len(flying) == 20
    with_acks = [ref for ref in flying if held[ref]["acks"] is not None]
    assert len(with_acks) == min(STATUS_ACK_KEYS, len(flying))
    for ref, row in read.items():
        expected = dict(row)
        if ref not in with_acks:
            expected["acks"] = None
        assert held[ref] == expected, ref
    found, _ = emergency_views(policies, fleet.daemon.runtime.kv, now)
    assert body["emergencies"] == [doc for _env, doc in found]


def test_a_replica_without_a_book_reads_vault_as_before(fleet: Fleet) -> None:
    """No book (a follower, or before the first poll): the rows are read from Vault, the same
    as `vault-rotator status` reads them."""
    body, reads = fleet.status()
    rows = collect(fleet.daemon.policies, fleet.daemon.runtime, fleet.clock())
    assert body["keys"] == rows
    assert reads >= KEYS


def _entry(record: StateRecord, seen: SecretSeen | None) -> Entry:
    policy = next(iter(load_policies(Path(__file__).resolve().parents[1] / "config")))
    entry = Entry(policy, record, 3)
    entry.secret = seen
    return entry


def test_the_secret_facts_of_a_key_follow_its_rotation() -> None:
    """What the consumer secret holds, from the book: as last read while idle and before
    publish (the rotation's old key if never read), the new key and published_at once
    published, the old key and no stamp once an abort put the old secret back."""
    seen = SecretSeen("key_old", "2027-01-01T00:00:00+00:00")
    idle = StateRecord.new("dev", "app")
    assert secret_facts(_entry(idle, seen)) == {"key_id": "key_old", "rotated_at": seen.rotated_at}
    assert secret_facts(_entry(idle, None)) == {"key_id": None, "rotated_at": None}
    rotation = Rotation(
        id="r1", attempt=1, date="2027-01-15", policy={}, permissions=Permissions(),
        started_at=NOW, start_version=1, old_key_id="key_old", new_key_id="key_new",
    )  # fmt: skip
    intent = idle.evolve(phase=reasons.INTENT, rotation=rotation)
    assert secret_facts(_entry(intent, seen)) == secret_facts(_entry(idle, seen))
    assert secret_facts(_entry(intent, None)) == {"key_id": "key_old", "rotated_at": None}
    out = rotation.evolve(published_version=2, published_at=NOW)
    published = intent.evolve(phase=reasons.PUBLISHED, rotation=out)
    stamp = datetime.fromtimestamp(NOW, UTC).isoformat()
    assert secret_facts(_entry(published, seen)) == {"key_id": "key_new", "rotated_at": stamp}
    back = out.evolve(aborted_at=NOW, republished_version=3)
    aborting = published.evolve(phase=reasons.ABORTING, rotation=back)
    assert secret_facts(_entry(aborting, seen)) == {"key_id": "key_old", "rotated_at": None}


def test_the_answer_sent_is_the_body_encoded_and_redacted_as_every_answer_is(
    fleet: Fleet,
) -> None:
    """Rows are encoded once per drawing and joined per caller: the bytes sent are exactly
    what encoding the whole body (and redacting it) gives, for a root token and for a token
    that reads one key only."""
    _settle(fleet)
    _open_through_the_api(fleet)
    answer = fleet.control.handle("GET", "/v1/status", fleet.vault.token, {})
    assert answer.payload is not None
    assert answer.payload == redact_text(json.dumps(answer.body, sort_keys=True)).encode()
    assert len(json.loads(answer.payload)["keys"]) == KEYS
    path = control_path("secret", f"{fleet.env}/vault-rotator", fleet.env, fleet.names[3])
    admin = hvac.Client(url=fleet.vault.addr, token=fleet.vault.token)
    admin.sys.create_or_update_policy(
        f"one-{fleet.env}", f'path "{path}" {{ capabilities = ["read"] }}'
    )
    token = admin.auth.token.create(policies=["default", f"one-{fleet.env}"], ttl="10m")
    one = fleet.control.handle("GET", "/v1/status", str(token["auth"]["client_token"]), {})
    assert one.payload is not None
    assert [row["key"] for row in json.loads(one.payload)["keys"]] == [
        f"{fleet.env}/{fleet.names[3]}"
    ]
    assert json.loads(one.payload)["emergencies"] == []
    assert one.payload == redact_text(json.dumps(one.body, sort_keys=True)).encode()


def test_a_request_a_cli_saved_shows_from_the_daemons_next_poll(fleet: Fleet) -> None:
    """The daemon shows requests as its polls read them: one a CLI saved in Vault shows once
    the daemon's next poll of the account has read it."""
    _settle(fleet)
    environment = fleet.daemon.policies.environments[fleet.env]
    request, _again = open_request(
        environment, fleet.conn.kv, fleet.clock, by="test", trigger="cli", revoke_old_now=False
    )
    fleet.tick()
    body, _reads = fleet.status()
    (doc,) = body["emergencies"]
    assert doc["id"] == request.id
    assert doc["keys"] == KEYS


def test_a_request_the_daemon_settled_shows_as_judging_it_afresh_shows_it(fleet: Fleet) -> None:
    """Once a poll of the daemon judged and saved the request, GET /v1/status shows it as
    saved (no key judged again per drawing): the same view as judging every key afresh from
    the records read from Vault."""
    _settle(fleet)
    _open_through_the_api(fleet)
    ((account, keys),) = fleet.daemon.accounts().items()
    assert fleet.daemon.tick(account, keys).errors == []
    assert fleet.daemon.emergencies.judged[fleet.env] is fleet.daemon.emergencies.latest[fleet.env]
    body, _reads = fleet.status()
    found, _ = emergency_views(fleet.daemon.policies, fleet.daemon.runtime.kv, fleet.clock())
    assert body["emergencies"] == [doc for _env, doc in found]
    assert body["emergencies"][0]["counts"] != {"queued": KEYS}  # judged: keys moved on
