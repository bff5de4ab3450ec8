"""The forward rotation against real OpenBao and the emulator, on an injected clock."""

from __future__ import annotations

import collections
import threading

import hvac
import pytest
from world import Crash, EmulatorOptions, WorldFactory, assert_clean_end, crash_at

from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import BOUNDARIES, Progress
from vault_rotator.engine.session import StateStore
from vault_rotator.errors import LeaseHeldError, PreflightError, ProviderAuthError
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer


def test_rotation_under_consumers_moves_traffic_and_deletes_old_key(
    world_for: WorldFactory, dialect: str
) -> None:
    """In every dialect: v N+1 holds the new key, fields kept, old key deleted, zero 401s."""
    world = world_for(dialect)
    old_id, old_value = world.seed_old_key()
    start_version = world.kv.current_version(world.policy.secret_path)
    consumers = [world.add_consumer(refresh_s=r) for r in (30.0, 45.0, 300.0)]
    before = collections.Counter(world.kv.write_count)
    passes: list[object] = []

    progress = drive(world.engine(), world.policy, wait=True, report=passes.append)

    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    new_id = assert_clean_end(world, old_id)
    served = world.served()
    assert new_id != old_id
    assert served["api_key"] != old_value
    assert served["team"] == "payments"  # other fields kept
    assert served["rotation_id"] == progress.rotation_id
    assert world.kv.current_version(world.policy.secret_path) == start_version + 1
    assert all(c.unauthorized == 0 for c in consumers)
    assert all(c.statuses for c in consumers)
    # Vault writes: one publish; pending written once and destroyed; the state record gets
    # intent with about-to-create (the lease taken with it, handed off once pending is saved),
    # the lease again for the publish, published (the lease given back with it),
    # about-to-delete and done (given back with it). A pass that observes nothing new writes
    # nothing; one whose observations changed (this driver, unlike the daemon, writes them at
    # once) writes them once, lease-free. No lease is held, or renewed, while waiting.
    writes = world.kv.write_count - before
    store = StateStore(world.kv, world.policy.vault.state_prefix)
    assert writes[world.policy.secret_path] == 1
    assert writes[store.pending_path(world.policy.env, world.policy.name)] == 2
    state_writes = writes[store.state_path(world.policy.env, world.policy.name)]
    wrote = [p for p in passes if isinstance(p, Progress) and p.wrote]
    assert len(passes) > 20  # most of them only observed
    assert 5 <= state_writes <= len(wrote) + 4 < len(passes)  # a pass that acts: 2 or 3


def test_first_run_publishes_without_deleting(world_for: WorldFactory) -> None:
    """With nothing at the secret path: create, verify, publish; nothing to drain or delete."""
    world = world_for("c")
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert progress.outcome.old_key_id is None
    assert_clean_end(world, None)


def test_rotate_without_wait_returns_once_published(world_for: WorldFactory) -> None:
    """drive(wait=False) stops at published; a second drive finishes the same rotation."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    first = drive(world.engine(), world.policy, wait=False)
    assert first.phase == reasons.PUBLISHED
    assert first.outcome is None
    assert old_id in world.live_ids()
    second = drive(world.engine(), world.policy, wait=True)
    assert second.rotation_id == first.rotation_id
    assert second.outcome is not None
    assert_clean_end(world, old_id)


@pytest.mark.parametrize("step", BOUNDARIES)
def test_crash_at_every_boundary_then_resume(world_for: WorldFactory, step: str) -> None:
    """A crash at any step boundary, then a new process: one live key, served, nothing lost."""
    world = world_for("c", disable_before_delete_s=300.0 if step == "disable" else 0.0)
    old_id, _ = world.seed_old_key()
    consumer = world.add_consumer(refresh_s=30.0)
    if step == "sweep":  # a stray to sweep: the first create's answer is lost
        world.emulator.set_fault("create", drop_after_commit=True, count=1)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at(step)), world.policy, wait=True)
    world.expire_lease()
    engine = world.fresh_runtime().engine(holder="successor")
    progress = drive(engine, world.policy, wait=True, start=False)
    if step == "done":  # the record was already idle, pending destroyed before it
        assert progress.rotation_id is None
    else:
        assert progress.outcome is not None
    assert_clean_end(world, old_id)
    assert consumer.unauthorized == 0
    outcomes = world.record().outcomes
    assert [o.outcome for o in outcomes] == [reasons.SUCCEEDED]


def test_lease_keeps_a_second_process_out(world_for: WorldFactory) -> None:
    """While one process holds the lease, another cannot act; after expiry it takes over."""
    world = world_for("c")
    world.seed_old_key()
    with pytest.raises(Crash):  # between "about to create" and the value saved: lease held
        drive(world.engine(fault=crash_at("create")), world.policy, wait=True)
    other = world.fresh_runtime().engine(holder="other")
    with pytest.raises(LeaseHeldError, match="held by"):
        other.advance(world.policy, start=True)
    fence = world.record().fence
    world.expire_lease()
    progress = other.advance(world.policy, start=True)
    assert progress.phase == reasons.INTENT  # a new attempt created; waiting for usage_lag
    rotation = world.record().rotation
    assert rotation is not None
    assert rotation.attempt == 2
    assert world.record().fence == fence + 1


def test_two_engines_starting_at_once_create_one_key(world_for: WorldFactory) -> None:
    """Two engines racing to start the same rotation: one acts, exactly one key is created."""
    world = world_for("c")
    world.seed_old_key()
    barrier = threading.Barrier(2)
    results: list[object] = []

    def race(name: str) -> None:
        engine = world.fresh_runtime().engine(holder=name)
        barrier.wait()
        try:
            results.append(engine.advance(world.policy, start=True))
        except LeaseHeldError as exc:
            results.append(exc)

    threads = [threading.Thread(target=race, args=(n,)) for n in ("p1", "p2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, LeaseHeldError) for r in results) == 1
    created = [k for k in world.emulator.all_keys() if "original" not in k["name"]]
    assert len(created) == 1


def test_dropped_create_response_leaves_no_duplicate(world_for: WorldFactory) -> None:
    """A create committed but unanswered: the engine creates again and sweeps the lost key."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", drop_after_commit=True, count=1)
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    created = [k for k in world.emulator.all_keys() if "original" not in k["name"]]
    assert len(created) == 2
    assert sum(1 for k in created if not k["deleted"]) == 1
    assert any(k["name"].endswith(f"{progress.rotation_id}.1") and k["deleted"] for k in created)
    assert_clean_end(world, old_id)


def test_create_timeout_leaves_no_duplicate(world_for: WorldFactory) -> None:
    """A create that times out (the server commits late) never leaves a second live key."""
    world = world_for("c", lease_ttl=10.0)
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", latency=2.5, count=1)
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert_clean_end(world, old_id)


def test_verify_failure_deletes_new_key_and_keeps_old(world_for: WorldFactory) -> None:
    """A new key that fails verification is deleted; the old key stays served and alive."""
    world = world_for("c")
    old_id, old_value = world.seed_old_key()
    world.emulator.set_fault("models", status=403, count=1)
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.FAILED_VERIFY
    assert world.live_ids() == {old_id}
    assert world.served()["api_key"] == old_value
    assert not world.pending_exists()


def test_busy_old_key_is_never_taken_as_quiet(world_for: WorldFactory) -> None:
    """A consumer stuck on the old key keeps it busy: the engine stalls, deleting nothing."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.add_consumer(sticky=True)  # never re-reads Vault
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.DRAIN_TIMEOUT
    assert old_id in world.live_ids()
    assert world.served()["key_id"] in world.live_ids()


def test_no_consumer_pickup_stalls_and_keeps_both_keys(world_for: WorldFactory) -> None:
    """Without any consumer, the engine's own verify is not pickup: it stalls at pickup_timeout."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.PICKUP_TIMEOUT
    assert old_id in world.live_ids()
    assert len(world.live_ids()) == 2


@pytest.mark.parametrize(
    ("dialect", "knobs"),
    [
        ("c", {"usage_lag": 45.0}),
        ("b", {"last_used_granularity": 60.0, "usage_lag": 20.0}),
        ("c", {"clock_offset": -7200.0, "last_used_granularity": 60.0}),
        ("c", {"clock_offset": 3600.0, "usage_lag": 30.0}),
        ("a", {"usage_lag": 45.0}),
    ],
)
def test_lag_granularity_and_skew_never_fool_the_engine(
    world_for: WorldFactory, dialect: str, knobs: EmulatorOptions
) -> None:
    """With lag, coarse stamps or a skewed provider clock: own verify is no pickup, busy is busy."""
    world = world_for(dialect, emulator_options=knobs, usage_lag_s=90.0)
    world.seed_old_key()
    stalled = drive(world.engine(), world.policy, wait=True)  # no consumers at all
    assert stalled.stalled is not None
    assert stalled.stalled.reason == reasons.PICKUP_TIMEOUT

    busy = world_for(dialect, emulator_options=knobs, usage_lag_s=90.0)
    old_id, _ = busy.seed_old_key()
    busy.add_consumer(refresh_s=30.0)
    busy.add_consumer(sticky=True)  # keeps calling with the old key
    progress = drive(busy.engine(), busy.policy, wait=True)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.DRAIN_TIMEOUT
    assert old_id in busy.live_ids()


def test_dialect_a_confirms_pickup_by_billable_usage_only(world_for: WorldFactory) -> None:
    """In dialect A free /v1/models calls never count as pickup; chat calls do."""
    world = world_for("a")
    world.seed_old_key()
    world.add_consumer(refresh_s=30.0, route="models")
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.PICKUP_TIMEOUT


def test_preflight_names_every_missing_capability(
    world_for: WorldFactory, vault: VaultServer
) -> None:
    """A token that can only read the secret is refused, naming each path it lacks."""
    world = world_for("c")
    world.seed_old_key()
    admin = hvac.Client(url=vault.addr, token=vault.token)
    name = f"ro-{world.tag}"
    admin.sys.create_or_update_policy(
        name, f'path "secret/data/{world.policy.secret_path}" {{ capabilities = ["read"] }}'
    )
    token = admin.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"]
    limited = Runtime(
        VaultConnection(vault.addr, token), clock=world.clock, sleep=world.clock.sleep
    )
    try:
        with pytest.raises(PreflightError) as err:
            limited.engine().advance(world.policy, start=True)
    finally:
        limited.close()
    message = str(err.value)
    assert f"secret/data/{world.policy.secret_path} (create/update)" in message
    assert "vault-rotator" in message  # the state and pending paths
    assert token not in message
    assert world.emulator.all_keys()[0]["name"].endswith("original")
    assert len(world.emulator.all_keys()) == 1


def test_wrong_management_key_is_a_clear_auth_error(world_for: WorldFactory) -> None:
    """A management key the provider rejects stops preflight with a 401 error, no side effect."""
    world = world_for("c")
    world.seed_old_key()
    path = world.policy.provider.management_key.path
    world.kv.write(path, {"key": "lr_mgmt_wrong_0000000000"}, cas=1)
    with pytest.raises(ProviderAuthError) as err:
        world.engine().advance(world.policy, start=True)
    assert "lr_mgmt_wrong" not in str(err.value)
    assert world.record().phase == reasons.IDLE
