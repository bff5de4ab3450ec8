"""Consumer acks, pure: the record read as hostile input, and the rules require_acks,
drain_on_acks, ack_ttl and usage_lag counted from the last ack, on an injected clock."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from vault_rotator.daemon.ack_retention import AckRetention
from vault_rotator.engine import ack_store, reasons
from vault_rotator.engine.ack_status import ack_line, ack_status
from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.acks import (
    MAX_ACK_BYTES,
    MAX_ACKS,
    Ack,
    AckFacts,
    AckPolicy,
    AckProblem,
    judge_rotation,
    name_problem,
    parse_ack,
)
from vault_rotator.engine.decide import Observation, Timing, decide_published
from vault_rotator.engine.state import Rotation, StateRecord, UseMark
from vault_rotator.policy import KeyPolicy, ManagementKeyRef, ProviderPolicy
from vault_rotator.ports.kv import Versioned
from vault_rotator.ports.provider import KeyRecord, Permissions
from vault_rotator.store.memory import MemoryKv
from vault_rotator.testing.clock import FakeClock

T0 = 1_800_000_000.0
LAG = 60.0
TIMING = Timing(usage_lag=LAG, pickup_timeout=3600, drain_period=6 * 3600, drain_timeout=86400)
KEY_VALUE = "lr_live_" + "q" * 40  # key-shaped; must never be echoed


def vault_stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def body(
    instance: str, *, version: int = 2, key_id: str = "new", kind: str = "app"
) -> dict[str, Any]:
    return {
        "version": version,
        "key_id": key_id,
        "at": "2027-01-15T10:00:00Z",
        "kind": kind,
        "instance": instance,
    }


def stored(data: dict[str, Any], at: float = T0) -> Versioned:
    return Versioned(data=data, version=1, created_time=vault_stamp(at))


def ack(instance: str, at: float, *, version: int = 2, kind: str = "app") -> Ack:
    key_id = "new" if version == 2 else "old"
    return Ack(instance, kind, version, key_id, at)


def rotation(**changes: object) -> Rotation:
    """Published as version 2 at T0 (old key at version 1), the new key in use since T0+60."""
    return Rotation(
        id="r1",
        attempt=1,
        date="2027-01-15",
        policy={},
        permissions=Permissions(allowed_providers=("openai",)),
        started_at=T0,
        start_version=1,
        old_key_id="old",
        new_key_id="new",
        published_version=2,
        published_at=T0,
        pickup_deadline=T0 + 3600,
        baseline=UseMark("2027-01-15T00:00:00+00:00"),
        pickup_at=T0 + 60,
        drain_deadline=T0 + 86400,
        old_mark=UseMark(),
        old_mark_since=T0,
    ).evolve(**changes)


LISTED = Observation.of([KeyRecord(id="new", name="n"), KeyRecord(id="old", name="o")], T0)


def facts(*acks: Ack, require: int = 0, drain: bool = False, ttl: float = 86400.0) -> AckFacts:
    return AckFacts(tuple(acks), (), AckPolicy(require, drain, ttl))


def decide(rot: Rotation, acks: AckFacts | None, now: float) -> tuple[str, str, Rotation]:
    obs = Observation(LISTED.keys, now)
    decision = decide_published(rot, obs, TIMING, frozenset(), now=now, acks=acks)
    assert decision.rotation is not None
    return decision.action, decision.detail or decision.reason, decision.rotation


# -- the record as hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    "at", ["2027-01-15T10:00:00.123456789Z", "2027-01-15T10:00:00+05:30", "2028-02-29T23:59:59Z"]
)
def test_an_at_on_the_calendar_is_accepted(at: str) -> None:
    """Nanoseconds, an offset and a leap day are real times: the ack is read."""
    got = parse_ack("web-1", stored({**body("web-1"), "at": at}, at=T0 + 5))
    assert isinstance(got, Ack)
    assert got.claimed_at == at


def test_a_well_formed_ack_is_read_with_vaults_time_not_the_writers() -> None:
    """A valid record gives its fields; its time is Vault's created_time, not the claimed at."""
    got = parse_ack("web-1", stored(body("web-1"), at=T0 + 5))
    assert got == Ack("web-1", "app", 2, "new", T0 + 5, "2027-01-15T10:00:00Z")


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({**body("web-1"), "pad": "x" * MAX_ACK_BYTES}, "over the 1024-byte limit"),
        ({**body("web-1"), "extra": 1}, "unknown field extra"),
        ({k: v for k, v in body("web-1").items() if k != "at"}, "no at"),
        (body("web-1", version=0), "version is not a positive integer"),
        ({**body("web-1"), "version": True}, "version is not a positive integer"),
        ({**body("web-1"), "version": "2"}, "version is not a positive integer"),
        (body("web-1", kind="sidecar"), "kind is neither agent nor app"),
        ({**body("web-1"), "key_id": "has space"}, "key_id is not a key id"),
        ({**body("web-1"), "at": "yesterday"}, "at is not an RFC 3339 time"),
        ({**body("web-1"), "at": "2026-13-45T99:99:99+99:99"}, "at is not an RFC 3339 time"),
        ({**body("web-1"), "at": "2026-02-30T10:00:00Z"}, "at is not an RFC 3339 time"),
        ({**body("web-1"), "at": "2026-11-27T10:00:00+24:00"}, "at is not an RFC 3339 time"),
        (body("web-2"), "instance names another instance than its path"),
    ],
    ids=[
        "huge",
        "extra",
        "missing",
        "zero",
        "bool",
        "string",
        "kind",
        "key-id",
        "at",
        "at-off-the-calendar",
        "at-february-30",
        "at-offset-24h",
        "other-instance",
    ],
)
def test_a_malformed_ack_is_refused_with_why(data: dict[str, Any], said: str) -> None:
    """Each malformed or forged body is an AckProblem naming the instance and why."""
    got = parse_ack("web-1", stored(data))
    assert isinstance(got, AckProblem)
    assert got.instance == "web-1"
    assert said in got.problem


@pytest.mark.parametrize(
    "data",
    [
        body("web-1", key_id=KEY_VALUE),
        {**body("web-1"), "at": f"2027-01-15T10:00:00Z {KEY_VALUE}"},
        {**body("web-1"), KEY_VALUE: 1},
        {**body("web-1"), "note": {"nested": KEY_VALUE}},
        {**body("web-1"), "at": "Bearer abcdefghijklmnop"},
    ],
    ids=["key-id", "at", "field-name", "nested", "bearer"],
)
def test_a_key_shaped_value_is_refused_without_echoing_it(data: dict[str, Any]) -> None:
    """An ack holding something key-shaped anywhere is refused; the problem never shows it."""
    got = parse_ack("web-1", stored(data))
    assert isinstance(got, AckProblem)
    assert "looks like a key or token" in got.problem
    assert "lr_live" not in repr(got)
    assert "abcdefghijklmnop" not in repr(got)


def test_listed_names_that_are_no_instance_are_refused_escaped() -> None:
    """Folders, names outside the instance pattern (escaped) and key-shaped names (hidden)."""
    assert name_problem("web-1") is None
    assert name_problem("a" * 63) is None
    folder = name_problem("sub/")
    assert folder is not None
    assert "folder" in folder.problem
    odd = name_problem("Web\x1b[31m")
    assert odd is not None
    assert odd.instance == "Web\\x1b[31m"
    assert name_problem("a" * 64) is not None
    secret = name_problem(KEY_VALUE)
    assert secret is not None
    assert secret.instance == "(not shown)"


def test_wrong_versions_and_key_ids_are_refused_but_an_old_version_counts_as_old() -> None:
    """A version the secret does not have, or a key_id that is not its version's, is refused;
    an ack of the old version stays (that instance has not switched yet)."""
    read = facts(
        ack("ahead", T0, version=3),
        Ack("liar", "app", 2, "old", T0),
        Ack("stale", "agent", 1, "old", T0),
        Ack("older", "agent", 1, "other", T0),
    )
    judged = judge_rotation(read, rotation())
    assert [a.instance for a in judged.acks] == ["stale"]
    problems = {p.instance: p.problem for p in judged.problems}
    assert problems == {
        "ahead": "version 3 does not exist",
        "liar": "key_id is not version 2's key",
        "older": "key_id is not version 1's key",
    }


def test_the_store_reads_at_most_max_acks_and_logs_each_refusal_once() -> None:
    """Past MAX_ACKS names the rest is one problem; a refused ack is logged once, by name."""
    clock = FakeClock(T0)
    kv = MemoryKv(clock=clock)
    store = AckStore(kv, "vault-rotator")
    folder = store.folder("prod", "app")
    for i in range(MAX_ACKS + 3):
        kv.write(f"{folder}/i{i:04d}", body(f"i{i:04d}"), cas=0)
    kv.write(f"{folder}/i0000", body("someone-else"), cas=1)
    read = store.read("prod", "app", AckPolicy(require=1))
    assert len(read.acks) == MAX_ACKS - 1
    assert [p.problem for p in read.problems] == [
        f"3 records past the first {MAX_ACKS} not read",
        "instance names another instance than its path",
    ]
    with capture_logs() as logs:
        ack_store.report("prod/app", read)
        ack_store.report("prod/app", read)
    first_unread = f"i{MAX_ACKS:04d}"
    assert [e["instance"] for e in logs if e["event"] == "ack ignored"] == [first_unread, "i0000"]


def test_retention_removes_records_gone_past_ttl_plus_retention_only() -> None:
    """ack_ttl 1d + ack_retention 2d: a record written 3d+1s ago is destroyed (a refused one
    too), one written 2d ago stays (gone, not yet retired)."""
    clock = FakeClock(T0)
    kv = MemoryKv(clock=clock)
    store = AckStore(kv, "vault-rotator")
    folder = store.folder("prod", "app")
    kv.write(f"{folder}/old", body("old"), cas=0)
    kv.write(f"{folder}/junk", body("not-junk"), cas=0)
    clock.advance(86400)
    kv.write(f"{folder}/recent", body("recent"), cas=0)
    clock.advance(2 * 86400 + 1)
    policy = AckPolicy(ttl=86400, retention=2 * 86400)
    assert sorted(store.remove_retired("prod", "app", policy, clock())) == ["junk", "old"]
    assert kv.list(folder) == ["recent"]


# -- require_acks --------------------------------------------------------------------------


def test_require_acks_holds_a_quiet_old_key_until_enough_instances_acknowledged() -> None:
    """Old key quiet for the whole drain, 1 of 2 acks: wait; with the second: delete."""
    now = T0 + 6 * 3600 + LAG  # drain_period + usage_lag after the old key's last change
    rot = rotation(pickup_deadline=now + 60)
    one = facts(ack("a", T0 + 30), ack("b", T0 + 10, version=1), require=2)
    action, why, _ = decide(rot, one, now)
    assert action == "wait"
    assert why.startswith("waiting for acks: 1 of 2 required instances acknowledged version 2")
    assert "not acknowledged: b" in why
    two = facts(ack("a", T0 + 30), ack("b", T0 + 40, kind="agent"), require=2)
    assert decide(rot, two, now)[0] == "delete-old"
    assert decide(rot, None, now)[0] == "delete-old"  # no acks read: the rule is off


def test_require_acks_not_met_by_the_pickup_deadline_stalls_naming_the_instance() -> None:
    """At the pickup deadline with 1 of 2: stall acks-missing, naming the laggard."""
    read = facts(ack("a", T0 + 30), ack("b", T0 + 10, version=1), require=2)
    assert decide(rotation(), read, T0 + 3599)[0] == "wait"
    action, detail, _ = decide(rotation(), read, T0 + 3600)
    assert action == "stall"
    assert "not acknowledged: b" in detail
    decision = decide_published(
        rotation(), Observation(LISTED.keys, T0 + 3600), TIMING, frozenset(), now=T0 + 3600,
        acks=read,
    )  # fmt: skip
    assert decision.reason == reasons.ACKS_MISSING


def test_an_instance_past_ack_ttl_is_gone_neither_counted_nor_waited_for() -> None:
    """b acked the new version 2h ago with ack_ttl 1h: it does not count, and is not named."""
    now = T0 + 7200
    read = facts(ack("a", now - 60), ack("b", now - 7200), require=2, ttl=3600)
    action, detail, _ = decide(rotation(pickup_deadline=now), read, now)
    assert action == "stall"
    assert "(a); not acknowledged: no other present instance is known" in detail


def test_an_emergency_rotation_ignores_require_acks_and_status_says_so() -> None:
    """Emergency: the old key goes once the new one is used, acks or not; status says why."""
    rot = rotation(mode=reasons.EMERGENCY)
    read = facts(require=3)
    assert decide(rot, read, T0 + 120)[0] == "delete-old"
    shown = ack_status(read, rot, 2, T0 + 120)
    assert shown["ignored"] == "emergency rotation: require_acks is ignored"


# -- drain_on_acks and usage_lag from the last ack -------------------------------------------


def drain_world(*acks: Ack) -> tuple[Rotation, AckFacts]:
    """Expected instances a and b (present at the first pass), both app-acked at T0+100."""
    read = facts(*acks, drain=True)
    _, _, rot = decide(rotation(), read, T0 + 100)
    return rot, read


def test_drain_on_acks_ends_the_drain_usage_lag_after_the_last_ack_was_seen() -> None:
    """Every expected instance app-acked: delete once the old key's use stayed unchanged for
    usage_lag from that moment, not sooner, and long before drain_period."""
    rot, read = drain_world(ack("a", T0 + 90), ack("b", T0 + 95))
    assert rot.ack_expected == ("a", "b")
    assert rot.acks_complete_at == T0 + 100
    action, _, rot = decide(rot, read, T0 + 100 + LAG - 1)
    assert action == "wait"
    assert decide(rot, read, T0 + 100 + LAG)[0] == "delete-old"


def test_old_key_use_after_the_acks_restarts_the_usage_lag() -> None:
    """The old key's use changed after the last ack: the lag counts from that change."""
    rot, read = drain_world(ack("a", T0 + 90), ack("b", T0 + 95))
    rot = rot.evolve(old_mark_since=T0 + 130)  # a later list pass saw new use of the old key
    assert decide(rot, read, T0 + 100 + LAG)[0] == "wait"
    assert decide(rot, read, T0 + 130 + LAG)[0] == "delete-old"


def test_agent_acks_or_a_missing_instance_never_end_the_drain_early() -> None:
    """Only app acks of every expected instance count: an agent ack, or a silent expected
    instance, leaves the normal drain_period in force."""
    late = T0 + 3600
    for acks in [
        (ack("a", T0 + 90), ack("b", T0 + 95, kind="agent")),
        (ack("a", T0 + 90), ack("b", T0 - 100, version=1)),
    ]:
        rot, read = drain_world(*acks)
        assert rot.acks_complete_at is None
        assert decide(rot, read, late)[0] == "wait"
        assert decide(rot, read, T0 + 6 * 3600 + LAG)[0] == "delete-old"


def test_a_new_instance_after_publish_is_not_expected_and_no_expected_means_no_early_end() -> None:
    """The expected set is fixed at the first pass; an empty one never ends a drain early."""
    rot, _ = drain_world()
    assert rot.ack_expected == ()
    newcomer = facts(ack("c", T0 + 200), drain=True)
    assert decide(rot, newcomer, T0 + 3600)[0] == "wait"


@pytest.mark.parametrize(
    "forged",
    [
        {"version": 3},  # a version the secret does not have
        {"key_id": "old"},  # the new version claimed with another key
        {"instance": "a"},  # b's record written in a's name
        {"pad": "x" * 2000},  # a huge body
        {"key_id": KEY_VALUE},  # a key-shaped value
    ],
    ids=["wrong-version", "wrong-key", "other-instance", "huge", "key-shaped"],
)
def test_a_forged_ack_cannot_end_a_drain_early(forged: dict[str, Any]) -> None:
    """a acked honestly, b's record is forged: it is refused and reported, so the drain does not
    end on acks, whatever the clock says short of drain_period."""
    kv = MemoryKv(clock=FakeClock(T0 + 90))
    store = AckStore(kv, "p")
    kv.write(f"{store.folder('e', 'k')}/a", body("a"), cas=0)
    kv.write(f"{store.folder('e', 'k')}/b", body("b", version=1, key_id="old"), cas=0)
    policy = AckPolicy(drain_on_acks=True)
    _, _, rot = decide(
        rotation(), judge_rotation(store.read("e", "k", policy), rotation()), T0 + 95
    )
    assert rot.ack_expected == ("a", "b")
    kv.write(f"{store.folder('e', 'k')}/b", {**body("b"), **forged}, cas=1)
    read = judge_rotation(store.read("e", "k", policy), rot)
    assert [p.instance for p in read.problems] == ["b"]
    assert "lr_live" not in repr(read)
    action, _, rot = decide(rot, read, T0 + 3600)
    assert action == "wait"
    assert rot.acks_complete_at is None


# -- status ---------------------------------------------------------------------------------


def test_status_lists_each_instance_with_kind_version_age_and_gone() -> None:
    """The status object and its table line: counts, instances, and the refused ones."""
    read = AckFacts(
        (ack("a", T0 - 30), ack("b", T0 - 7200, version=1, kind="agent")),
        (AckProblem("c", "instance names another instance than its path"),),
        AckPolicy(require=2, ttl=3600),
    )
    shown = ack_status(read, rotation(), 2, T0)
    assert shown["acknowledged"] == 1
    assert shown["version"] == 2
    assert shown["instances"] == [
        {"instance": "a", "kind": "app", "version": 2, "key_id": "new", "age_s": 30.0,
         "gone": False, "current": True},
        {"instance": "b", "kind": "agent", "version": 1, "key_id": "old", "age_s": 7200.0,
         "gone": True, "current": False},
    ]  # fmt: skip
    line = ack_line("prod/app", shown)
    assert line == (
        "prod/app: acks 1 of 2 required for version 2: a (app, v2, 30s), "
        "b (agent, v1, 2h, gone); ignored: c: instance names another instance than its path"
    )
    assert ack_line("prod/app", {"instances": "junk", "problems": [1]}) is None


def test_a_state_record_of_schema_1_is_read_and_written_back_as_schema_2() -> None:
    """The previous schema (no ack fields) still reads; it is saved as the current one."""
    current = StateRecord.new("e", "k").evolve(rotation=rotation()).to_dict()
    assert current["schema"] == 2
    old = copy.deepcopy({**current, "schema": 1})
    for name in ("ack_expected", "acks_complete_at"):
        del old["rotation"][name]
    record = StateRecord.from_dict(old, "secret/x")
    assert record.rotation is not None
    assert record.rotation.ack_expected is None
    assert record.to_dict() == current


def test_the_daemons_sweep_runs_hourly_per_key_and_survives_a_refusal() -> None:
    """AckRetention removes retired records at the first tick and then once an hour; a key whose
    acks Vault refuses is logged and skipped, never raised."""
    clock = FakeClock(T0)
    kv = MemoryKv(clock=clock)
    provider = ProviderPolicy(base_url="https://x.test", management_key=ManagementKeyRef(path="m"))
    policy = KeyPolicy(
        env="prod", name="app", secret_path="apps/app", ack_ttl_s=60, ack_retention_s=60,
        provider=provider,
    )  # fmt: skip
    folder = AckStore(kv, policy.vault.state_prefix).folder("prod", "app")
    kv.write(f"{folder}/web-1", body("web-1"), cas=0)
    retention = AckRetention(lambda _mount: kv, spread=False)
    assert retention.sweep([policy], clock()) == []  # written just now
    clock.advance(121)
    assert retention.sweep([policy], clock()) == []  # not an hour since the last sweep
    clock.advance(3600)
    assert retention.sweep([policy], clock()) == ["prod/app/web-1"]
    denied = kv.restricted({})
    with capture_logs() as logs:
        assert AckRetention(lambda _mount: denied, spread=False).sweep([policy], clock()) == []
    assert [e["event"] for e in logs] == ["ack records not swept"]


def test_first_sweeps_are_spread_over_the_hour_not_all_on_the_first_tick() -> None:
    """With many keys, the daemon's first tick sweeps only a few; within the hour, all."""
    kv = MemoryKv()
    provider = ProviderPolicy(base_url="https://x.test", management_key=ManagementKeyRef(path="m"))
    keys = [
        KeyPolicy(env="prod", name=f"app-{i}", secret_path=f"apps/{i}", provider=provider)
        for i in range(200)
    ]
    retention = AckRetention(lambda _mount: kv)
    swept = []
    original = AckStore.remove_retired

    def counting(self: AckStore, env: str, name: str, *args: Any) -> list[str]:
        swept.append(name)
        return original(self, env, name, *args)

    AckStore.remove_retired = counting  # type: ignore[method-assign,assignment]
    try:
        retention.sweep(keys, T0)
        first = len(swept)
        for minute in range(1, 61):
            retention.sweep(keys, T0 + 60 * minute)
    finally:
        AckStore.remove_retired = original  # type: ignore[method-assign]
    assert first < 20
    assert sorted(set(swept)) == sorted(k.name for k in keys)


def test_a_tuple_of_keys_is_swept_each_key_once_an_hour_at_its_turn() -> None:
    """The daemon passes the same tuple every tick: the sweep keeps it ordered by turn. Over
    three hours of one-minute ticks each key is swept within its first hour, then every hour
    (the first tick at or past its turn)."""
    kv = MemoryKv()
    provider = ProviderPolicy(base_url="https://x.test", management_key=ManagementKeyRef(path="m"))
    keys = tuple(
        KeyPolicy(env="prod", name=f"app-{i}", secret_path=f"apps/{i}", provider=provider)
        for i in range(50)
    )
    retention = AckRetention(lambda _mount: kv)
    swept: dict[str, list[float]] = {}
    original = AckStore.remove_retired

    def counting(self: AckStore, env: str, name: str, policy: Any, now: float) -> list[str]:
        swept.setdefault(name, []).append(now)
        return original(self, env, name, policy, now)

    AckStore.remove_retired = counting  # type: ignore[method-assign]
    try:
        for minute in range(0, 180):
            retention.sweep(keys, T0 + 60 * minute + 0.5)
    finally:
        AckStore.remove_retired = original  # type: ignore[method-assign]
    assert sorted(swept) == sorted(k.name for k in keys)
    for times in swept.values():
        assert times[0] < T0 + 3660
        assert len(times) in (2, 3)
        assert all(3600 <= b - a < 3660 for a, b in itertools.pairwise(times))
