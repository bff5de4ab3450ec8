"""A hostile or odd provider never costs a key, an orphan or an account: regression tests."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence

import httpx
import pytest
import structlog
from structlog.testing import capture_logs
from world import MANAGEMENT_KEY, EmulatorFactory, World, WorldFactory, assert_clean_end, no_fault

from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Engine, Verb
from vault_rotator.errors import (
    AmbiguousCreateError,
    PreflightError,
    ProviderRetryableError,
)
from vault_rotator.ports.provider import Dialect, KeySpec, Permissions
from vault_rotator.provider.arouter import ARouterClient
from vault_rotator.runtime import client_budget
from vault_rotator.secret import Secret

FOREIGN_NAME = "someone\u0007elses key"


def strings_in(value: object) -> Iterator[str]:
    """Every string inside a captured log entry (keys and values, nested)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings_in(item)
    else:
        yield str(value)


def raw_controls(logs: Sequence[Mapping[str, object]]) -> list[str]:
    """The log strings holding a raw control or format (bidi) character."""
    return [
        text
        for entry in logs
        for text in strings_in(entry)
        if any(unicodedata.category(c) in ("Cc", "Cf") for c in text)
    ]


# -- rate limits -----------------------------------------------------------------------------


def test_long_rate_limit_on_create_stalls_without_creating_again(world_for: WorldFactory) -> None:
    """A 429 asking for a day on create stalls as rate-limited: one request, no key, same name."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", status=429, retry_after=100000)

    progress = drive(world.engine(), world.policy, wait=True)

    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.RATE_LIMITED
    assert "86400" in progress.stalled.detail
    assert world.emulator.request_counts().get("create") == 1
    assert world.live_ids() == {old_id}
    record = world.record()
    assert record.rotation is not None
    assert record.rotation.attempt == 1
    assert record.provider_write is None

    world.emulator.clear_faults()
    # `vault-rotator resume` is a new process: the stalled one holds every call for the day
    resumer = world.fresh_runtime().engine()
    resumed = drive(resumer, world.policy, wait=True, command=Command(verb=Verb.RESUME))
    assert resumed.outcome is not None
    assert resumed.outcome.outcome == reasons.SUCCEEDED
    assert world.served()["key_name"].endswith(f"{resumed.rotation_id}.1")
    assert_clean_end(world, old_id)


def test_short_rate_limits_on_create_retry_under_the_same_name(world_for: WorldFactory) -> None:
    """Repeated short 429s on create are waited out pass after pass with the same attempt name."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", status=429, count=10)

    progress = drive(world.engine(), world.policy, wait=True)

    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert world.emulator.request_counts().get("create") == 11
    assert world.served()["key_name"].endswith(f"{progress.rotation_id}.1")
    assert_clean_end(world, old_id)


# -- slow servers ----------------------------------------------------------------------------


def test_trickled_headers_end_a_list_call_within_its_bound(make_emulator: EmulatorFactory) -> None:
    """Headers trickled a byte per 0.2 s (no read timeout fires) end within worst_case_seconds."""
    emulator = make_emulator(dialect="c")
    emulator.set_fault("list", trickle=0.2)
    with ARouterClient(
        emulator.base_url, Secret(MANAGEMENT_KEY), Dialect.C, timeout=1.0, max_attempts=1
    ) as client:
        started = time.monotonic()
        with pytest.raises(ProviderRetryableError, match="no complete answer within 3s"):
            client.list_keys()
        elapsed = time.monotonic() - started
        assert elapsed <= client.worst_case_seconds()


def test_trickled_create_answer_is_ambiguous_within_its_bound(
    make_emulator: EmulatorFactory,
) -> None:
    """A create whose answer trickles is cut at the deadline and reported as maybe created."""
    emulator = make_emulator(dialect="c")
    emulator.set_fault("create", trickle=0.2)
    with ARouterClient(
        emulator.base_url,
        Secret(MANAGEMENT_KEY),
        Dialect.C,
        timeout=0.5,
        max_attempts=2,
        backoff_max=0.5,
    ) as client:
        started = time.monotonic()
        with pytest.raises(AmbiguousCreateError) as info:
            client.create_key(KeySpec("trickled", Permissions(allowed_providers=("openai",))))
        elapsed = time.monotonic() - started
        assert elapsed <= client.worst_case_seconds()
    assert info.value.key_name == "trickled"
    assert emulator.request_counts().get("create") == 1  # sent once, never blindly again


# -- odd records -----------------------------------------------------------------------------


def test_foreign_key_with_a_control_character_does_not_block_a_rotation(
    world_for: WorldFactory,
) -> None:
    """A foreign key named with a control character: rotation done, key untouched, logs escaped."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    foreign_id, _ = world.emulator.seed_key(FOREIGN_NAME, allowed_providers=["openai"])
    world.add_consumer(refresh_s=30.0)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        with capture_logs() as logs:
            progress = drive(world.engine(), world.policy, wait=True)
    finally:
        structlog.reset_defaults()

    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    new_id = world.served()["key_id"]
    assert world.live_ids() == {new_id, foreign_id}  # no orphan, the foreign key untouched
    assert old_id not in world.live_ids()
    created = [k for k in world.emulator.all_keys() if k["id"] not in (old_id, foreign_id)]
    assert [k["id"] for k in created] == [new_id]
    foreign = next(k for k in world.emulator.all_keys() if k["id"] == foreign_id)
    assert foreign["name"] == FOREIGN_NAME
    assert not foreign["disabled"]
    assert not foreign["deleted"]
    assert logs
    assert raw_controls(logs) == []


class Spoiler(httpx.BaseTransport):
    """A real transport whose list answers show chosen keys with an unreadable last_used_at."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
        self.spoiled: set[str] = set()
        self.renamed: set[str] = set()  # listed with a name that is not a string

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method != "GET" or not request.url.path.endswith("/keys"):
            return response
        body = response.read()
        response.close()
        payload = json.loads(body) if response.status_code == 200 else None
        if isinstance(payload, dict):
            for record in payload.get("data", []):
                if record.get("id") in self.spoiled:
                    record["last_used_at"] = "sometime\u0007yesterday"
                if record.get("id") in self.renamed:
                    record["name"] = 7
            body = json.dumps(payload).encode()
        return httpx.Response(
            response.status_code, headers={"content-type": "application/json"}, content=body
        )

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def spoiler() -> Iterator[Spoiler]:
    """A spoiling transport, closed after the test."""
    transport = Spoiler()
    yield transport
    transport.close()


def spoiling_engine(
    world: World, spoiler: Spoiler, fault: Callable[[str], None] = no_fault
) -> Engine:
    """An engine whose provider client lists through ``spoiler`` (sized for the lease)."""
    budget = client_budget(world.runtime.lease_ttl)
    client = ARouterClient(
        world.emulator.base_url,
        Secret(MANAGEMENT_KEY),
        Dialect.C,
        sleep=world.clock.sleep,
        clock=world.clock,
        timeout=budget.timeout,
        max_attempts=budget.max_attempts,
        backoff_max=budget.backoff_max,
        transport=spoiler,
    )
    world.runtime.close_clients()
    return Engine(
        kv_for=world.runtime.kv,
        providers=lambda _policy, _dialect: client,
        clock=world.clock,
        sleep=world.clock.sleep,
        lease_ttl=world.runtime.lease_ttl,
        fault=fault,
    )


def test_unreadable_old_key_is_refused_before_any_side_effect(
    world_for: WorldFactory, spoiler: Spoiler
) -> None:
    """An old key whose record is unreadable stops the rotation at preflight: nothing created."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    spoiler.spoiled.add(old_id)
    with pytest.raises(PreflightError) as info:
        spoiling_engine(world, spoiler).advance(world.policy, start=True)
    assert old_id in str(info.value)
    assert "unreadable" in str(info.value)
    assert "\u0007" not in str(info.value)
    assert world.live_ids() == {old_id}
    assert world.record().phase == reasons.IDLE


def test_dry_run_refuses_an_unreadable_old_key_too(
    world_for: WorldFactory, spoiler: Spoiler
) -> None:
    """`rotate --dry-run`'s plan refuses the unreadable old key as the rotation would."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    spoiler.spoiled.add(old_id)
    with pytest.raises(PreflightError, match="unreadable record"):
        spoiling_engine(world, spoiler).plan(world.policy)


def test_unreadable_new_key_fails_the_rotation_cleanly(
    world_for: WorldFactory, spoiler: Spoiler
) -> None:
    """A new key listed unreadable after verify is deleted, never created again; old key kept."""
    world = world_for("c")
    old_id, old_value = world.seed_old_key()

    def spoil_new(step: str) -> None:
        if step == "verify":
            spoiler.spoiled.update(world.live_ids() - {old_id})

    progress = drive(spoiling_engine(world, spoiler, spoil_new), world.policy, wait=True)

    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.FAILED_VERIFY
    assert "unreadable" in progress.outcome.detail
    assert world.live_ids() == {old_id}
    assert world.served()["api_key"] == old_value
    assert world.emulator.request_counts().get("create") == 1
    assert not world.pending_exists()


def test_a_new_key_listed_without_its_name_is_still_cleaned_up(
    world_for: WorldFactory, spoiler: Spoiler
) -> None:
    """A failed rotation deletes the key it created even when the listing garbles its name (it
    is found by the id the create answered, not only by name)."""
    world = world_for("c")
    old_id, old_value = world.seed_old_key()

    def spoil_new(step: str) -> None:
        if step == "verify":
            new = world.live_ids() - {old_id}
            spoiler.spoiled.update(new)
            spoiler.renamed.update(new)

    progress = drive(spoiling_engine(world, spoiler, spoil_new), world.policy, wait=True)

    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.FAILED_VERIFY
    assert world.live_ids() == {old_id}
    assert world.served()["api_key"] == old_value


def test_unreadable_old_key_is_never_taken_as_quiet(
    world_for: WorldFactory, spoiler: Spoiler
) -> None:
    """An old key listed unreadable after publish is no evidence: it stalls, both keys alive."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)

    def spoil_old(step: str) -> None:
        if step == "published":
            spoiler.spoiled.add(old_id)

    progress = drive(spoiling_engine(world, spoiler, spoil_old), world.policy, wait=True)

    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.DRAIN_TIMEOUT
    assert "unreadable" in progress.stalled.detail
    assert old_id in world.live_ids()
    assert world.served()["key_id"] in world.live_ids()
    assert len(world.live_ids()) == 2


# -- odd records through the client ----------------------------------------------------------


def listing_of(*records: object, dialect: str = "a") -> ARouterClient:
    """A client whose server lists exactly ``records`` at /api/v1/keys (or /v1/keys for c)."""
    path = "/v1/keys" if dialect == "c" else "/api/v1/keys"

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path == path:
            return httpx.Response(200, json={"data": list(records)})
        return httpx.Response(404, json={"error": {"message": "no route"}})

    return ARouterClient(
        "http://arouter.test", Secret(MANAGEMENT_KEY), transport=httpx.MockTransport(serve)
    )


GOOD = {"hash": "good01", "name": "ours", "usage": 1.5, "limit": 10}


@pytest.mark.parametrize(
    ("odd", "problem"),
    [
        ({"hash": "odd01", "name": "x", "usage": "lots", "limit": 3}, "usage: expected"),
        ({"hash": "odd01", "name": "x" * 2000, "usage": 1}, "name: longer than 1024"),
        ({"hash": "odd01", "name": 7, "usage": 1}, "name: expected a string"),
        ({"hash": "odd01", "name": "x", "label": "a\u0007b", "usage": 1}, "label: contains"),
        ({"hash": "odd01", "name": "x", "created_at": "yesterday", "usage": 1}, "created_at"),
        ({"hash": "odd01", "name": "x", "allowed_models": [1], "usage": 1}, "allowed_models[0]"),
        ({"hash": "odd01", "name": "x", "disabled": "no", "usage": 1}, "disabled: expected"),
    ],
)
def test_a_record_with_bad_fields_is_listed_with_its_problem(odd: object, problem: str) -> None:
    """A record with a usable id but bad fields is listed by id with the problem noted, no more."""
    with listing_of(GOOD, odd) as client:
        records = {record.id: record for record in client.list_keys()}
    assert records["good01"].problem is None
    assert records["good01"].usage_cost == 1.5
    record = records["odd01"]
    assert record.problem is not None
    assert problem in record.problem
    assert record.usage_cost is None
    assert record.spending_limit is None
    assert record.label is None
    assert record.display_name.isprintable()


def test_a_name_with_control_characters_is_kept_exact_and_shown_escaped() -> None:
    """A name with control or bidi characters is data: kept exact for matching, shown escaped."""
    name = "\u202erot.1 \t\u0007" + FOREIGN_NAME
    with listing_of(GOOD, {"hash": "odd01", "name": name, "usage": 2}) as client:
        record = next(r for r in client.list_keys() if r.id == "odd01")
    assert record.problem is None
    assert record.name == name
    assert record.usage_cost == 2
    assert record.display_name == "\\u202erot.1 \\t\\x07someone\\x07elses key"


@pytest.mark.parametrize(
    "junk",
    [
        "not-an-object",
        None,
        {"hash": 12, "name": "x"},
        {"hash": "../admin\u0007", "name": "x"},
        {"name": "no id at all"},
    ],
)
def test_a_record_without_a_usable_id_is_skipped_and_logged_once_escaped(junk: object) -> None:
    """A record that cannot be addressed is left out of the listing and logged once, escaped."""
    with capture_logs() as logs, listing_of(GOOD, junk) as client:
        first = client.list_keys()
        second = client.list_keys()
    assert [r.id for r in first] == ["good01"]
    assert [r.id for r in second] == ["good01"]
    skipped = [entry for entry in logs if entry["event"] == "arouter.record_skipped"]
    assert len(skipped) == 1
    assert raw_controls(logs) == []


def test_create_answer_with_an_odd_name_is_a_created_key() -> None:
    """A create answer with an odd name or bad extra fields still yields the key: no re-create."""
    name = "\u202ecreated \t\u0007"

    def serve(request: httpx.Request) -> httpx.Response:
        record = {"id": "key_new1", "name": name, "created_at": "not a time"}
        return httpx.Response(201, json={"key": "lr_live_created_0123456789", **record})

    with (
        ARouterClient(
            "http://arouter.test",
            Secret(MANAGEMENT_KEY),
            Dialect.C,
            transport=httpx.MockTransport(serve),
        ) as client,
        capture_logs() as logs,
    ):
        created = client.create_key(KeySpec(name, Permissions(allowed_providers=("openai",))))
    assert created.record.id == "key_new1"
    assert created.record.name == name
    assert raw_controls(logs) == []


def test_odd_key_name_of_a_stored_policy_rotates_without_orphans(world_for: WorldFactory) -> None:
    """A stored key_name with bidi and control characters: one create, no orphan, logs escaped."""
    world = world_for("c", key_name="\u202e{rotation_id} \t\u0007")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    with capture_logs() as logs:
        progress = drive(world.engine(), world.policy, wait=True)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    new_id = assert_clean_end(world, old_id)
    assert world.emulator.request_counts().get("create") == 1
    assert next(k for k in world.emulator.all_keys() if k["id"] == new_id)["name"] == (
        f"\u202e{progress.rotation_id}.1 \t\u0007"
    )
    assert raw_controls(logs) == []
