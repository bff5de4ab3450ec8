"""Operator paths against real OpenBao and the emulator: stalls, resume, keep-old, abort,
emergency, adoption, keys deleted outside, disable-before-delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from world import Crash, World, WorldFactory, assert_clean_end, crash_at

from vault_rotator.daemon.refs import in_flight_policy
from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Verb
from vault_rotator.engine.session import Session
from vault_rotator.errors import EngineError, LeaseHeldError, PreflightError
from vault_rotator.policy import PolicySet
from vault_rotator.policy.model import EnvironmentPolicy

RESUME = Command(Verb.RESUME)
ABORT = Command(Verb.ABORT)
KEEP_OLD = Command(Verb.FINISH_KEEP_OLD)
EMERGENCY = Command(emergency=True)


def last_outcome(world: World) -> str:
    return world.record().outcomes[-1].outcome


def stall_on_pickup(world: World) -> str:
    """Publish with no consumer at all, so the rotation stalls at pickup_timeout."""
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.PICKUP_TIMEOUT
    return str(progress.rotation_id)


def test_stall_is_saved_and_resume_finishes_once_consumers_arrive(world_for: WorldFactory) -> None:
    """After a pickup stall, resume renews the deadline and the rotation completes."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    rotation_id = stall_on_pickup(world)
    record = world.record()
    assert record.rotation is not None
    assert record.rotation.stalled is not None
    assert world.live_ids() == {old_id, record.rotation.new_key_id}  # both keys stay alive
    world.add_consumer(refresh_s=30.0)
    progress = drive(world.engine(), world.policy, wait=True, start=False, command=RESUME)
    assert progress.rotation_id == rotation_id
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert_clean_end(world, old_id)


def test_secret_written_after_our_publish_stalls_and_never_deletes_our_key(
    world_for: WorldFactory,
) -> None:
    """A later version by someone else stalls as secret-changed; resume goes on if it is ours."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    published = drive(world.engine(), world.policy, wait=False)
    served = world.served()
    version = world.kv.current_version(world.policy.secret_path)
    world.kv.write(world.policy.secret_path, served | {"owner": "someone"}, cas=version)
    stalled = drive(world.engine(), world.policy, wait=True, start=False)
    assert stalled.stalled is not None
    assert stalled.stalled.reason == reasons.SECRET_CHANGED
    assert {old_id, served["key_id"]} <= world.live_ids()
    done = drive(world.engine(), world.policy, wait=True, start=False, command=RESUME)
    assert done.rotation_id == published.rotation_id
    assert done.outcome is not None
    assert done.outcome.outcome == reasons.SUCCEEDED
    assert world.served()["owner"] == "someone"
    assert_clean_end(world, old_id)


def test_secret_replaced_by_another_key_cannot_be_resumed(world_for: WorldFactory) -> None:
    """When the secret serves someone else's key, resume refuses and says what to run."""
    world = world_for("c")
    world.seed_old_key()
    drive(world.engine(), world.policy, wait=False)
    other_id, other_value = world.emulator.seed_key("hand-made", allowed_providers=["openai"])
    version = world.kv.current_version(world.policy.secret_path)
    world.kv.write(
        world.policy.secret_path, {"api_key": other_value, "key_id": other_id}, cas=version
    )
    stalled = drive(world.engine(), world.policy, wait=True, start=False)
    assert stalled.stalled is not None
    assert stalled.stalled.reason == reasons.SECRET_CHANGED
    with pytest.raises(EngineError, match=r"abort|finish"):
        drive(world.engine(), world.policy, wait=True, start=False, command=RESUME)


def test_retries_exhausted_stalls_the_rotation(world_for: WorldFactory) -> None:
    """A provider that keeps failing is a stall with its own reason, both keys alive."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    drive(world.engine(), world.policy, wait=False)
    world.emulator.set_fault("list", status=503)
    progress = drive(world.engine(), world.policy, wait=True, start=False, max_transient=3)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.RETRIES_EXHAUSTED
    assert old_id in world.live_ids()
    world.emulator.clear_faults()
    world.add_consumer(refresh_s=30.0)
    done = drive(world.engine(), world.policy, wait=True, start=False, command=RESUME)
    assert done.outcome is not None
    assert_clean_end(world, old_id)


def test_finish_keep_old_ends_with_both_keys_and_says_so(world_for: WorldFactory) -> None:
    """finish --keep-old after a drain stall: new key served, old key alive, outcome recorded."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.add_consumer(sticky=True)
    stalled = drive(world.engine(), world.policy, wait=True)
    assert stalled.stalled is not None
    assert stalled.stalled.reason == reasons.DRAIN_TIMEOUT
    done = drive(world.engine(), world.policy, wait=False, start=False, command=KEEP_OLD)
    assert done.outcome is not None
    assert done.outcome.outcome == reasons.FINISHED_KEEP_OLD
    assert old_id in done.outcome.detail
    served = world.served()
    assert world.live_ids() == {old_id, served["key_id"]}
    assert world.record().phase == reasons.IDLE
    assert not world.pending_exists()


def test_abort_restores_the_old_secret_and_deletes_the_new_key(world_for: WorldFactory) -> None:
    """abort after publish: whole old data map back (marked), new key drained and deleted."""
    world = world_for("c")
    old_id, old_value = world.seed_old_key()
    consumer = world.add_consumer(refresh_s=30.0)
    drive(world.engine(), world.policy, wait=False)
    new_id = world.served()["key_id"]
    progress = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    served = world.served()
    assert served["api_key"] == old_value
    assert served["key_id"] == old_id
    assert served["team"] == "payments"
    assert served["aborted"] is True
    assert served["rotation_id"] == progress.rotation_id
    assert world.live_ids() == {old_id}
    assert new_id not in world.live_ids()
    assert not world.pending_exists()
    assert consumer.unauthorized == 0
    assert world.record().current_key_id == old_id


def test_abort_survives_a_crash_in_the_middle(world_for: WorldFactory) -> None:
    """A crash right after the old secret is republished; the next process finishes the abort."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    drive(world.engine(), world.policy, wait=False)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("publish")), world.policy, wait=True, command=ABORT)
    world.expire_lease()
    engine = world.fresh_runtime().engine(holder="successor")
    progress = drive(engine, world.policy, wait=True, start=False)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    assert world.live_ids() == {old_id}
    assert world.served()["key_id"] == old_id
    # exactly one republish: the version after ours is the abort, nothing after it
    versions = world.kv.current_version(world.policy.secret_path)
    assert versions == 3


def test_abort_does_not_repeat_a_delete_of_the_new_key_cut_short_after_it_went_through(
    world_for: WorldFactory,
) -> None:
    """A crash right after the abort deleted the new key: the next process records it deleted
    from its list pass and finishes, sending no second DELETE for it."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    drive(world.engine(), world.policy, wait=False)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("delete")), world.policy, wait=True, command=ABORT)
    cut = world.record().provider_write
    assert cut is not None
    assert cut.action == reasons.DELETE
    world.expire_lease()
    engine = world.fresh_runtime().engine(holder="successor")
    progress = drive(engine, world.policy, wait=True, start=False)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    assert world.live_ids() == {old_id}
    deletes = [m for m in world.emulator.mutation_log() if m["route"] == "delete"]
    assert [m["key_id"] for m in deletes] == [cut.target], deletes  # ids only, no values
    assert deletes[0]["status"] < 300


def test_abort_before_publish_deletes_the_new_key(world_for: WorldFactory) -> None:
    """An abort while the new key is not yet published removes it; Vault still serves the old."""
    world = world_for("c")
    old_id, old_value = world.seed_old_key()
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("verify")), world.policy, wait=True)
    world.expire_lease()
    progress = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    assert world.live_ids() == {old_id}
    assert world.served()["api_key"] == old_value
    assert not world.pending_exists()


def test_emergency_skips_the_drain_even_with_a_busy_old_key(world_for: WorldFactory) -> None:
    """--emergency deletes the old key as soon as the new one is used, stale users or not."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    stale = world.add_consumer(sticky=True)
    began = world.clock()
    progress = drive(world.engine(), world.policy, wait=True, command=EMERGENCY)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED_EMERGENCY
    assert world.clock() - began < world.policy.drain_period_s
    assert_clean_end(world, old_id)
    stale.tick()
    assert stale.statuses[-1] == 401  # the stale consumer is cut off, as an emergency must


def test_emergency_survives_a_restart(world_for: WorldFactory) -> None:
    """The emergency mode is saved: a successor without --emergency still skips the drain."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("published")), world.policy, wait=True, command=EMERGENCY)
    world.expire_lease()
    progress = drive(world.fresh_runtime().engine(), world.policy, wait=True, start=False)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED_EMERGENCY
    assert_clean_end(world, old_id)


def test_emergency_upgrades_a_rotation_in_flight(world_for: WorldFactory) -> None:
    """rotate --emergency on a draining rotation deletes the old key without waiting more."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.add_consumer(sticky=True)  # would keep a normal drain waiting until drain_timeout
    first = drive(world.engine(), world.policy, wait=False)
    progress = drive(world.engine(), world.policy, wait=True, command=EMERGENCY)
    assert progress.rotation_id == first.rotation_id
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED_EMERGENCY
    assert_clean_end(world, old_id)


def test_revoke_old_now_deletes_at_publish_and_refuses_abort(world_for: WorldFactory) -> None:
    """--revoke-old-now deletes the old key right after publish; abort is refused after it."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    command = Command(emergency=True, revoke_old_now=True)
    published = drive(world.engine(), world.policy, wait=False, command=command)
    assert published.phase == reasons.PUBLISHED
    with pytest.raises(EngineError, match="already deleted"):
        world.engine().advance(world.policy, command=ABORT)
    progress = drive(world.engine(), world.policy, wait=True, start=False)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED_REVOKED
    assert_clean_end(world, old_id)


def seed_unlabelled_secret(world: World) -> tuple[str, str]:
    """An old key whose secret lacks key_id (written by hand before vault-rotator)."""
    key_id, value = world.emulator.seed_key("legacy", allowed_providers=["openai"])
    world.kv.write(world.policy.secret_path, {"api_key": value, "team": "payments"}, cas=0)
    return key_id, value


def test_adoption_with_the_right_id_deletes_the_adopted_key(world_for: WorldFactory) -> None:
    """adopt_key_id naming the served key (label matches) is drained and deleted as usual."""
    probe = world_for("b")
    key_id, _ = seed_unlabelled_secret(probe)
    world = World(probe.vault, probe.emulator, probe.clock, adopt_key_id=key_id)
    world.policy = world.policy.model_copy(update={"secret_path": probe.policy.secret_path})
    world.add_consumer(refresh_s=30.0)
    progress = drive(world.engine(), world.policy, wait=True)
    world.close()
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert progress.outcome.old_key_id == key_id
    assert key_id not in probe.live_ids()


def test_adoption_with_a_wrong_id_is_refused(world_for: WorldFactory) -> None:
    """adopt_key_id naming another key (its label does not fit the served value) is refused."""
    probe = world_for("b")
    seed_unlabelled_secret(probe)
    other_id, _ = probe.emulator.seed_key("other", allowed_providers=["openai"])
    world = World(probe.vault, probe.emulator, probe.clock, adopt_key_id=other_id)
    world.policy = world.policy.model_copy(update={"secret_path": probe.policy.secret_path})
    try:
        with pytest.raises(PreflightError, match="refusing to adopt"):
            world.engine().advance(world.policy, start=True)
    finally:
        world.close()
    assert len(probe.emulator.all_keys()) == 2  # nothing created


def test_unknown_old_key_is_rotated_but_never_deleted(world_for: WorldFactory) -> None:
    """Without key_id or adopt_key_id the rotation publishes, keeps the old key and says so."""
    world = world_for("c")
    legacy_id, _ = seed_unlabelled_secret(world)
    with pytest.raises(PreflightError, match="emergency rotation refused"):
        world.engine().advance(world.policy, start=True, command=EMERGENCY)
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED_OLD_UNKNOWN
    assert legacy_id in world.live_ids()
    assert world.served()["key_id"] in world.live_ids()


@pytest.mark.parametrize("command", [Command(), EMERGENCY])
def test_key_deleted_outside_rotates_as_first_run_and_flags_it(
    world_for: WorldFactory, command: Command
) -> None:
    """The served key vanished at the provider: rotate anyway (even in emergency), flagged."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    assert world.runtime.provider(world.policy, None).delete_key(old_id)  # outside the engine
    progress = drive(world.engine(), world.policy, wait=True, command=command)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED_ATTENTION
    assert "deleted outside" in progress.outcome.detail
    assert_clean_end(world, None)


def test_disable_before_delete_disables_then_deletes(world_for: WorldFactory) -> None:
    """With disable_before_delete the old key is disabled first, then deleted after the wait."""
    world = world_for("c", disable_before_delete_s=300.0)
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    seen_disabled: list[bool] = []

    def watch(_progress: object) -> None:
        old = next(k for k in world.emulator.all_keys() if k["id"] == old_id)
        seen_disabled.append(bool(old["disabled"]) and not old["deleted"])

    progress = drive(world.engine(), world.policy, wait=True, report=watch)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.SUCCEEDED
    assert any(seen_disabled)
    assert_clean_end(world, old_id)


def test_abort_while_the_old_key_is_disabled_reenables_it(world_for: WorldFactory) -> None:
    """An abort during disable_before_delete re-enables the old key before going back to it."""
    world = world_for("c", disable_before_delete_s=3600.0)
    old_id, _ = world.seed_old_key()
    consumer = world.add_consumer(refresh_s=30.0)
    engine = world.engine()
    drive(engine, world.policy, wait=False)
    for _ in range(200):
        rotation = world.record().rotation
        if rotation is not None and rotation.old_disabled_at is not None:
            break
        engine.advance(world.policy)
        world.clock.sleep(world.policy.provider.poll_interval_s)
    old = next(k for k in world.emulator.all_keys() if k["id"] == old_id)
    assert old["disabled"]
    progress = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    old = next(k for k in world.emulator.all_keys() if k["id"] == old_id)
    assert not old["disabled"]
    assert world.live_ids() == {old_id}
    assert world.served()["key_id"] == old_id
    assert consumer.statuses[-1] == 200


def test_stalled_key_blocks_neither_others_nor_its_next_rotation(world_for: WorldFactory) -> None:
    """One stalled key: another key rotates meanwhile; after finish it rotates again itself."""
    stuck = world_for("c")
    old_id, _ = stuck.seed_old_key()
    stall_on_pickup(stuck)
    other = world_for(emulator=stuck.emulator)
    other_old, _ = other.seed_old_key()
    other.add_consumer(refresh_s=30.0)
    assert drive(other.engine(), other.policy, wait=True).outcome is not None
    assert other_old not in other.live_ids()
    again = drive(stuck.engine(), stuck.policy, wait=True)
    assert again.stalled is not None  # rotate on a stalled key reports the stall, starts nothing
    done = drive(stuck.engine(), stuck.policy, wait=False, start=False, command=KEEP_OLD)
    assert done.outcome is not None
    stuck.add_consumer(refresh_s=30.0)
    fresh = drive(stuck.engine(), stuck.policy, wait=True)
    assert fresh.outcome is not None
    assert fresh.outcome.outcome == reasons.SUCCEEDED
    assert fresh.rotation_id != done.rotation_id
    assert [o.outcome for o in stuck.record().outcomes] == [
        reasons.FINISHED_KEEP_OLD,
        reasons.SUCCEEDED,
    ]
    assert old_id in stuck.live_ids()  # kept by the operator's finish --keep-old


def test_abort_after_a_crash_right_after_publishing_restores_the_old_key(
    world_for: WorldFactory,
) -> None:
    """Published but not yet recorded (crash): abort must not delete the served key blindly."""
    world = world_for("c")
    old_id, old_value = world.seed_old_key()
    consumer = world.add_consumer(refresh_s=30.0)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("publish")), world.policy, wait=True)
    world.expire_lease()
    progress = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    assert world.served()["api_key"] == old_value
    assert world.live_ids() == {old_id}
    consumer.tick()
    assert consumer.unauthorized == 0


def test_abort_after_a_crash_right_after_deleting_the_old_key_is_refused(
    world_for: WorldFactory,
) -> None:
    """The old key's delete happened but was not recorded: abort finds out and refuses."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("delete")), world.policy, wait=True)
    world.expire_lease()
    with pytest.raises(EngineError, match="already deleted"):
        world.engine().advance(world.policy, command=ABORT)
    progress = drive(world.engine(), world.policy, wait=True, start=False)
    assert progress.outcome is not None
    assert_clean_end(world, old_id)


def test_crash_right_after_disabling_still_reenables_on_abort(world_for: WorldFactory) -> None:
    """Disabled, then a crash before anything else: an abort re-enables the old key first."""
    world = world_for("c", disable_before_delete_s=600.0)
    old_id, _ = world.seed_old_key()
    consumer = world.add_consumer(refresh_s=30.0)
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("disable")), world.policy, wait=True)
    world.expire_lease()
    progress = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    old = next(k for k in world.emulator.all_keys() if k["id"] == old_id)
    assert not old["disabled"]
    consumer.tick()
    assert consumer.statuses[-1] == 200


def test_one_engine_cannot_run_two_passes_on_a_key_at_once(world_for: WorldFactory) -> None:
    """A live lease is not re-entered even by its own holder (a tick and an API call)."""
    world = world_for("c")
    world.seed_old_key()
    engine = world.engine(holder="daemon")
    store = engine.store(world.policy)
    session = Session.acquire(
        store, world.policy.env, world.policy.name, holder="daemon", clock=world.clock, ttl=30
    )
    with pytest.raises(LeaseHeldError):
        engine.advance(world.policy, start=True)
    session.release()
    assert engine.advance(world.policy, start=True).rotation_id is not None


def test_abort_stalled_on_a_changed_secret_can_be_resumed(world_for: WorldFactory) -> None:
    """The secret is edited, abort stalls on it; resume accepts it as it still serves the key."""
    world = world_for("c")
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    drive(world.engine(), world.policy, wait=False)
    version = world.kv.current_version(world.policy.secret_path)
    world.kv.write(world.policy.secret_path, world.served() | {"note": "edited"}, cas=version)
    stalled = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert stalled.stalled is not None
    assert stalled.stalled.reason == reasons.SECRET_CHANGED
    done = drive(world.engine(), world.policy, wait=True, start=False, command=RESUME)
    assert done.outcome is not None
    assert done.outcome.outcome == reasons.ABORTED
    assert world.live_ids() == {old_id}


def test_a_404_for_a_key_still_listed_stalls_the_sweep(world_for: WorldFactory) -> None:
    """The provider says 404 yet lists the key: the sweep stalls instead of looping forever."""
    world = world_for("c")
    world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    world.emulator.set_fault("create", drop_after_commit=True, count=1)
    world.emulator.set_fault("delete", status=404)
    progress = drive(world.engine(), world.policy, wait=True)
    assert progress.stalled is not None
    assert progress.stalled.reason == reasons.DELETE_UNCONFIRMED


def test_a_key_removed_from_the_policies_can_still_be_addressed(world_for: WorldFactory) -> None:
    """A rotation in flight of a key no longer in the config is found by its stored policy."""
    world = world_for("c")
    world.seed_old_key()
    drive(world.engine(), world.policy, wait=False)
    environment = EnvironmentPolicy(
        environment=world.policy.env,
        source=Path(world.policy.secret_path),
        provider=world.policy.provider,
        vault=world.policy.vault,
        require_spending_limit=False,
        keys=(),
    )
    empty = PolicySet(environments={world.policy.env: environment}, warnings=[])
    found = in_flight_policy(empty, world.policy.ref, world.runtime.kv)
    assert found == world.policy


def test_a_publish_after_an_earlier_abort_is_recognised_after_a_crash(
    world_for: WorldFactory,
) -> None:
    """After an aborted rotation the secret carries `aborted: true`; the next rotation's publish
    must not inherit it, so a crash right after that publish is recovered, and an abort then
    never deletes the key consumers are served."""
    world = world_for("c")
    world.seed_old_key()
    consumer = world.add_consumer(refresh_s=30.0)
    drive(world.engine(), world.policy, wait=False)
    aborted = drive(world.engine(), world.policy, wait=True, start=False, command=ABORT)
    assert aborted.outcome is not None
    assert aborted.outcome.outcome == reasons.ABORTED
    assert world.served()["aborted"] is True
    with pytest.raises(Crash):
        drive(world.engine(fault=crash_at("publish")), world.policy, wait=True)
    served = world.served()
    assert served.get("aborted") is None  # a publish is not an abort (no dict in the message)
    world.expire_lease()
    engine = world.fresh_runtime().engine(holder="successor")
    progress = drive(engine, world.policy, wait=False, start=False)
    assert world.record().phase in (reasons.PUBLISHED, reasons.IDLE), progress
    progress = drive(engine, world.policy, wait=True, start=False, command=ABORT)
    assert progress.outcome is not None
    assert progress.outcome.outcome == reasons.ABORTED
    assert world.served()["key_id"] in world.live_ids()
    assert consumer.unauthorized == 0
