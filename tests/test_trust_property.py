"""Hostile records under the state prefix, property-tested (issue 20).

Parties with narrow write access (a consumer token on its key's ack folder; an operator who
may write an emergency request or a lease; someone with write on the state prefix) write
random well-formed and malformed records: ack records, an emergency request (header and
shards), the account lease, a key's state and pending records, the change signal. Whatever
they write, one daemon tick and one `status` collection

* raise nothing (what goes wrong is a reported line),
* read at most the documented number of records (``docs/security.md``, "What a pass costs"):
  per key, a handful, plus the ack folder's listing and at most ``MAX_ACKS`` records for a
  published key whose policy uses acks; per environment, the emergency header and at most
  ``MAX_SHARDS`` shards; and no record above ``MAX_READ_BYTES``,
* and write nothing past a default OpenBao listener's limits (the in-memory store refuses
  such a write as OpenBao does, and every refusal is counted here).

The store is the contract-tested :class:`~vault_rotator.store.memory.MemoryKv` (the same
limits as OpenBao: ``tests/test_kv_contract.py``), the provider the in-process emulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from world import MANAGEMENT_KEY

from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.emergencies import emergency_views
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.status_rows import collect
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.ack_store import acks_folder
from vault_rotator.engine.acks import MAX_ACKS
from vault_rotator.engine.changes import changes_path
from vault_rotator.engine.emergency import emergency_path
from vault_rotator.engine.emergency_codec import MAX_SHARDS
from vault_rotator.engine.session import StateStore
from vault_rotator.errors import CasConflictError, RecordTooLargeError, StoreError
from vault_rotator.policy import load_policies
from vault_rotator.ports.kv import Versioned
from vault_rotator.runtime import Runtime
from vault_rotator.store.memory import MemoryKv
from vault_rotator.testing.clock import FakeClock

ENV, PREFIX, NAMES = "prod", "rot", ("k0", "k1", "k2")
POLL = 30.0
CONFIG = """\
environment: prod
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key: {{path: admin/management}}
  usage_lag: 60s
  poll_interval: 30s
vault: {{kv_mount: secret, state_prefix: rot}}
require_spending_limit: false
defaults: {{pickup_timeout: 1h, drain_period: 10m, drain_timeout: 2h, drain_on_acks: true,
           require_acks: 1, ack_ttl: 90d}}
keys:
  - {{name: k0, secret_path: apps/k0, allowed_providers: [openai]}}
  - {{name: k1, secret_path: apps/k1, allowed_providers: [openai]}}
  - {{name: k2, secret_path: apps/k2, allowed_providers: [openai]}}
"""
# Per tick of this account: the change signal, each key's state record and consumer secret
# (with its first version) and a pass's own reads, the account lease; per environment the
# emergency header and its shards; per published key using acks, the folder and its records.
PER_KEY = 8
READS_BOUND = 4 + PER_KEY * len(NAMES) + (1 + MAX_SHARDS) + (1 + MAX_ACKS)


class Counted:
    """The daemon's view of the store: reads counted, writes past the limits recorded."""

    def __init__(self, kv: MemoryKv) -> None:
        self.kv = kv
        self.reads = 0
        self.largest = 0  # the largest record read, in bytes of JSON
        self.refused: list[str] = []

    @property
    def mount(self) -> str:
        return self.kv.mount

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        self.reads += 1
        got = self.kv.read(path, version)
        if got is not None:
            self.largest = max(self.largest, len(json.dumps(dict(got.data))))
        return got

    def current_version(self, path: str) -> int:
        self.reads += 1
        return self.kv.current_version(path)

    def list(self, prefix: str) -> Sequence[str]:
        self.reads += 1
        return self.kv.list(prefix)

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        try:
            return self.kv.write(path, data, cas=cas)
        except RecordTooLargeError:
            self.refused.append(path)
            raise

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        self.kv.set_custom_metadata(path, metadata)

    def destroy(self, path: str) -> None:
        self.kv.destroy(path)

    def capabilities(self, paths: Sequence[str]) -> dict[str, frozenset[str]]:
        return self.kv.capabilities(paths)


class _Conn:
    """What the daemon asks of a Vault connection besides its KV mounts."""

    on_request: Any = None

    def close(self) -> None:
        return None


class MemoryRuntime(Runtime):
    def __init__(self, kv: Counted, clock: FakeClock) -> None:
        super().__init__(_Conn(), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
        self.counted = kv

    def kv(self, mount: str) -> Counted:
        return self.counted


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    emu = Emulator(dialect="c", management_keys=[MANAGEMENT_KEY]).start()
    yield emu
    emu.stop()


def _site(emulator: Emulator, tmp: Path) -> tuple[Daemon, MemoryKv, FakeClock]:
    """Three keys, k0's rotation published (its consumer acked, k1's and k2's idle)."""
    clock = FakeClock()
    kv = MemoryKv(clock=clock)
    kv.write("admin/management", {"key": MANAGEMENT_KEY}, cas=0)
    for name in NAMES:
        key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        kv.write(f"apps/{name}", {"api_key": value, "key_id": key_id}, cas=0)
    (tmp / "prod.yaml").write_text(CONFIG.format(base_url=emulator.base_url))
    daemon = Daemon(load_policies(tmp), MemoryRuntime(Counted(kv), clock), metrics=Metrics())
    return daemon, kv, clock


# -- what the parties write -------------------------------------------------------------------

SIZES = st.sampled_from([0, 10, 2000, 2 * 1024 * 1024])
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
NAME = st.sampled_from(["web-1", "web.2", "x", "../up", "a b", "UPPER", "web-3/x", "-lead"])


@st.composite
def ack_record(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    instance = draw(NAME | st.from_regex(r"[a-z0-9][a-z0-9.-]{0,8}", fullmatch=True))
    good = {
        "version": draw(st.integers(0, 3)),
        "key_id": draw(st.text(max_size=12)),
        "at": "2027-01-15T10:00:00Z",
        "kind": draw(st.sampled_from(["app", "agent", "x"])),
        "instance": instance,
    }
    extra = {"pad": "x" * draw(SIZES)} if draw(st.booleans()) else {}
    data = draw(st.sampled_from([good, {**good, **extra}])) if draw(st.booleans()) else draw(JSON)
    return instance, data if isinstance(data, dict) else {"v": data}


@st.composite
def emergency_request(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    header = {
        "schema": draw(st.sampled_from([2, 2, 1, 3, "2", None])),
        "id": draw(st.sampled_from(["r1", "", "../x"])),
        "env": ENV,
        "requested_at": draw(st.sampled_from([1.8e9, -1, 1e308, "now"])),
        "by": "x" * draw(SIZES),
        "trigger": "cli",
        "revoke_old_now": draw(st.booleans()),
        "shards": draw(st.sampled_from([1, 2, 5, 6, 100_000, -1, 0, "5", True])),
        "key_count": draw(st.sampled_from([1, 3, 200, 1000, 10_000_000, "3"])),
        "settled_at": None,
        "completed_at": None,
        "notified_at": None,
    }
    names = draw(st.lists(NAME | st.sampled_from(list(NAMES)), max_size=5))
    keys = {n: ["queued", 1.8e9, 1.8e9] for n in names}
    shard = {"schema": 2, "request_id": header["id"], "shard": 0, "keys": json.dumps(keys)}
    shards = draw(st.lists(st.sampled_from([shard, None, {"keys": "x" * draw(SIZES)}]), max_size=3))
    return header, shards


@st.composite
def hostile(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "acks": draw(st.lists(ack_record(), max_size=40)),
        "flood": draw(st.sampled_from([0, 0, 300])),
        "emergency": draw(st.none() | emergency_request()),
        "lease": draw(
            st.none()
            | JSON
            | st.fixed_dictionaries(
                {
                    "schema": st.sampled_from([1, 99, None]),
                    "holder": st.text(max_size=20),
                    "fence": st.sampled_from([1, 10**30, -1, 1e308]),
                    "expires_at": st.sampled_from([1e308, 0, "x"]),
                    "account": st.text(max_size=5),
                }
            )
        ),
        "state": draw(st.none() | JSON),
        "pending": draw(st.none() | JSON),
        "changes": draw(
            st.none()
            | JSON
            | st.fixed_dictionaries(
                {
                    "schema": st.just(1),
                    "recent": st.lists(
                        st.tuples(NAME, st.floats(allow_nan=False, allow_infinity=False)),
                        max_size=70,
                    ),
                }
            )
        ),
    }


def _force(kv: MemoryKv, path: str, data: Any) -> None:
    """Write ``data`` at ``path`` as a writer that may not read: it tries each version in turn
    (what a listener refuses, or a path Vault refuses, is stored by nobody)."""
    body = data if isinstance(data, dict) else {"v": data}
    for cas in range(4):
        try:
            kv.write(path, body, cas=cas)
        except CasConflictError:
            continue
        except (RecordTooLargeError, StoreError):
            return
        return


def _write_hostile(kv: MemoryKv, records: dict[str, Any], daemon: Daemon) -> None:
    consumer = kv.restricted(
        {f"secret/data/{acks_folder(PREFIX, ENV, 'k0')}/*": ["create", "update"]}
    )
    for instance, data in records["acks"]:
        _force(consumer, f"{acks_folder(PREFIX, ENV, 'k0')}/{instance}", data)
    for i in range(records["flood"]):
        good = {
            "version": 2,
            "key_id": "k",
            "at": "2027-01-15T10:00:00Z",
            "kind": "app",
            "instance": f"f-{i}",
        }
        _force(consumer, f"{acks_folder(PREFIX, ENV, 'k0')}/f-{i}", good)
    operator = kv.restricted(
        {
            f"secret/data/{PREFIX}/*": ["create", "update", "read"],
            f"secret/metadata/{PREFIX}/*": ["read"],
        }
    )
    if records["emergency"] is not None:
        header, shards = records["emergency"]
        path = emergency_path(PREFIX, ENV)
        for index, shard in enumerate(shards):
            if shard is not None:
                _force(operator, f"{path}/{header['id'] or 'r1'}/{index}", shard)
        _force(operator, path, header)
    if records["lease"] is not None:
        for lease in kv.list(f"{PREFIX}/accounts"):
            _force(operator, f"{PREFIX}/accounts/{lease}", records["lease"])
    store = StateStore(kv, PREFIX)
    if records["state"] is not None:
        _force(operator, store.state_path(ENV, "k1"), records["state"])
    if records["pending"] is not None:
        _force(operator, store.pending_path(ENV, "k2"), records["pending"])
    if records["changes"] is not None:
        _force(operator, changes_path(PREFIX), records["changes"])


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=hostile())
def test_whatever_narrow_writers_store_a_tick_and_status_stay_bounded(
    emulator: Emulator, tmp_path_factory: pytest.TempPathFactory, records: dict[str, Any]
) -> None:
    """One tick and one status after hostile records: nothing raised, at most READS_BOUND
    records read, none above a default listener's size, and no write of the daemon's past
    the listener's limits (see the module docstring)."""
    daemon, kv, clock = _site(emulator, tmp_path_factory.mktemp("site"))
    ((account, keys),) = daemon.accounts().items()
    for _ in range(8):  # k0 published (the others are started too: all are due)
        daemon.tick(account, keys)
        clock.advance(POLL)
        for name in NAMES:
            got = kv.read(f"apps/{name}")
            assert got is not None
            emulator.call(str(got.data["api_key"]))  # its status is not the point here
        if StateStore(kv, PREFIX).read(ENV, "k0")[0].phase == reasons.PUBLISHED:
            break
    assert StateStore(kv, PREFIX).read(ENV, "k0")[0].phase == reasons.PUBLISHED
    _write_hostile(kv, records, daemon)
    counted = daemon.runtime.kv("secret")
    assert isinstance(counted, Counted)
    counted.reads = 0
    daemon.tick(account, keys)  # what goes wrong is a reported line, never an exception
    assert counted.reads <= READS_BOUND, counted.reads
    counted.reads = 0
    collect(daemon.policies, daemon.runtime, clock())
    emergency_views(daemon.policies, daemon.runtime.kv, clock())
    assert counted.reads <= READS_BOUND + 2 * PER_KEY * len(NAMES), counted.reads
    assert counted.refused == []
