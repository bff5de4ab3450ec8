"""A process paused past its lease at any step boundary, taken over, then resumed: fenced.

The HA promise (docs/high-availability.md): once another process holds a key's lease, the old
holder gets no Vault write accepted and starts no provider mutation, whatever step it was
paused at. Pausing is simulated in-process: the fault hook advances the shared fake clock past
the lease, lets a second engine take the key over, then returns, as a SIGCONT would.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from world import WorldFactory, assert_clean_end

from vault_rotator.engine.changes import changes_path
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import BOUNDARIES
from vault_rotator.errors import LeaseHeldError, LeaseLostError
from vault_rotator.store.vault import VaultKv

MUTATIONS = ("POST", "PATCH", "PUT", "DELETE")
# where the successor's pass must act (and so take the lease); elsewhere it only observes
TAKEN_OVER_AT = frozenset({"intent", "create", "verify", "publish", "delete"})


@pytest.mark.parametrize("step", [b for b in BOUNDARIES if b != "destroy"])
def test_a_paused_holder_resumed_after_a_take_over_writes_nothing(
    world_for: WorldFactory, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused at ``step`` past its lease while a successor takes the key: once resumed, the
    old holder's Vault writes are all refused and it sends no provider mutation; the
    successor then finishes with one live key, served."""
    world = world_for("c", disable_before_delete_s=300.0 if step == "disable" else 0.0)
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    if step == "sweep":  # a stray to sweep: the first create's answer is lost
        world.emulator.set_fault("create", drop_after_commit=True, count=1)
    resumed = {"on": False}
    vault_ok: Counter[str] = Counter()
    provider: Counter[str] = Counter()

    def counted(name: str) -> Any:
        original = getattr(VaultKv, name)

        def wrapper(kv: VaultKv, path: str, *args: Any, **kwargs: Any) -> Any:
            result = original(kv, path, *args, **kwargs)
            # the change signal is a counter of writes for the daemon, not a key's state
            if resumed["on"] and kv._conn is world.runtime.conn and path != changes:
                vault_ok[f"{name} {path}"] += 1
            return result

        return wrapper

    changes = changes_path(world.policy.vault.state_prefix)
    for name in ("write", "destroy", "set_custom_metadata"):
        monkeypatch.setattr(VaultKv, name, counted(name))

    def provider_seen(method: str, route: str, _status: int | str) -> None:
        if resumed["on"] and method in MUTATIONS:
            provider[f"{method} {route}"] += 1

    world.runtime.on_provider_request = provider_seen
    successor = world.fresh_runtime().engine(holder="successor")

    taken = {"over": False}

    def pause(at: str) -> None:
        if at != step or resumed["on"]:
            return
        world.expire_lease()  # paused past the lease
        before = world.record().fence
        successor.advance(world.policy)  # a live replica takes the key over, if it must act
        taken["over"] = world.record().fence > before
        resumed["on"] = True  # SIGCONT

    paused = world.engine(fault=pause, holder="paused")
    for turn in range(100):  # polls of the paused process, until its pass that was paused ends
        try:
            paused.advance(world.policy, start=turn == 0)
        except (LeaseLostError, LeaseHeldError):
            assert resumed["on"]
        if resumed["on"]:
            break
        world.clock.sleep(world.policy.provider.poll_interval_s)
    assert resumed["on"], f"boundary {step} was never reached"
    if taken["over"]:
        assert not vault_ok, f"Vault writes accepted after the take-over: {dict(vault_ok)}"
        assert not provider, f"provider mutations after the take-over: {dict(provider)}"
    else:  # the successor only observed (a pass that waits writes nothing, takes no lease):
        # nobody else wrote, so the resumed pass's CAS writes are its own turn, never twice
        assert all(n == 1 for n in provider.values()), dict(provider)
    assert taken["over"] == (step in TAKEN_OVER_AT), (step, taken)
    world.expire_lease()  # the successor's pass ended; it (or any replica) goes on
    drive(successor, world.policy, wait=True, start=False)
    assert_clean_end(world, old_id)
