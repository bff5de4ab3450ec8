"""Acks through the engine, on real OpenBao and the emulator with a fake clock: a rotation with
``require_acks`` stalls ``acks-missing``, ``resume`` gives it a fresh pickup period, and it
completes once the ack arrives; an emergency rotation does not wait for acks."""

from __future__ import annotations

from typing import Any

from world import World, WorldFactory, assert_clean_end

from vault_rotator.engine import reasons
from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Verb

# An ack's age is Vault's own time against the engine's clock; this test's clock is a fake one
# (2027) and Vault's is real: an ack_ttl of years keeps every ack present.
YEARS = 10 * 365 * 86400.0


def ack_now(world: World, instance: str, *, kind: str = "app") -> None:
    """``instance`` acknowledges the version the consumer secret serves now."""
    got = world.kv.read(world.policy.secret_path)
    assert got is not None
    folder = AckStore(world.kv, world.policy.vault.state_prefix).folder(
        world.policy.env, world.policy.name
    )
    data: dict[str, Any] = {
        "version": got.version,
        "key_id": got.data["key_id"],
        "at": "2027-01-15T10:00:00Z",
        "kind": kind,
        "instance": instance,
    }
    path = f"{folder}/{instance}"
    world.kv.write(path, data, cas=world.kv.current_version(path))


def test_acks_missing_stalls_then_resume_and_an_ack_finish_the_rotation(
    world_for: WorldFactory,
) -> None:
    """require_acks 2 with one ack: stall acks-missing naming the other instance, both keys
    alive; after resume and its ack the rotation succeeds."""
    world = world_for("c", require_acks=2, ack_ttl_s=YEARS)
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    ack_now(world, "web-1")
    ack_now(world, "web-2")  # both present, on the old version
    published = drive(world.engine(), world.policy, wait=False)
    ack_now(world, "web-1")
    stalled = drive(world.engine(), world.policy, wait=True, start=False)
    assert stalled.stalled is not None
    assert stalled.stalled.reason == reasons.ACKS_MISSING
    assert stalled.stalled.detail.endswith("(web-1); not acknowledged: web-2")
    assert old_id in world.live_ids()
    assert len(world.live_ids()) == 2
    resumed = drive(world.engine(), world.policy, wait=False, start=False,
                    command=Command(Verb.RESUME))  # fmt: skip
    assert resumed.stalled is None  # a fresh pickup period: waiting again, not stalled at once
    ack_now(world, "web-2", kind="agent")
    done = drive(world.engine(), world.policy, wait=True, start=False)
    assert done.rotation_id == published.rotation_id
    assert done.outcome is not None
    assert done.outcome.outcome == reasons.SUCCEEDED
    assert_clean_end(world, old_id)


def test_an_emergency_rotation_does_not_wait_for_acks(world_for: WorldFactory) -> None:
    """require_acks 5 and no ack at all: an emergency rotation still ends as soon as the new
    key is used."""
    world = world_for("c", require_acks=5)
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    done = drive(world.engine(), world.policy, wait=True, command=Command(emergency=True))
    assert done.outcome is not None
    assert done.outcome.outcome == reasons.SUCCEEDED_EMERGENCY
    assert_clean_end(world, old_id)
