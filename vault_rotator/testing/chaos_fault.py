"""One fault of a chaos run's Vault phase, seen from the harness: what was in flight when it
hit, ``/readyz`` while Vault is unusable and after, and the rotations it hit completing.

Each expectation that fails adds 1 to ``vault_missed`` with a note; used by
:mod:`.chaos_vault` and :mod:`.chaos_writers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from vault_rotator.testing import chaos_figures as figs
from vault_rotator.testing.chaos_daemon import keep_rotating, until
from vault_rotator.testing.chaos_world import Bench, Daemon

HOLD_S = 7.0  # a fault held this long: /readyz caches its Vault check for 5 s
BACK_S = 25.0  # /readyz 200 again within this
COMPLETE_S = 90.0  # the rotations in flight when a fault hit complete within this


@dataclass
class Fault:
    """One fault's run: the daemon, the rotations in flight when it hit, what was seen."""

    bench: Bench
    http: httpx.Client
    daemon: Daemon
    f: figs.Figures
    flying: dict[str, str] = field(default_factory=dict)  # key name -> rotation id

    def miss(self, why: str) -> None:
        self.f.vault_missed += 1
        self.f.notes.append(f"vault fault: {why}")

    def wait(self, seconds: float, done: Callable[[], bool], *, rotate: bool = True) -> bool:
        """Keep rotating (or only probe /readyz) until ``done()``; False on the deadline."""
        tick: Callable[[], object] = (
            keep_rotating(self.bench, self.http, self.daemon) if rotate else self.probe
        )
        until(self.daemon.proc, time.monotonic() + seconds, tick, done)
        return done()

    def probe(self) -> int:
        answer = self.bench.ask(self.http, "GET", self.daemon.url("/readyz"))
        return 0 if answer is None else answer.status_code

    def hit(self) -> None:
        """Wait for a rotation in flight; note which are, and count the fault."""
        if not self.wait(30, lambda: bool(in_flight(self.bench))):
            self.miss("no rotation in flight to hit")
        self.flying = in_flight(self.bench)
        self.f.vault_faults += 1

    def unusable(self, why: str) -> None:
        """Vault is unusable for HOLD_S: /readyz must say 503, and 200 no more once it has."""
        self.f.readyz_503_expected += 1
        seen = []
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and self.daemon.proc.poll() is None:
            seen.append(self.probe())
            time.sleep(0.25)
        if 503 not in seen:
            self.miss(f"{why}: /readyz never answered 503")
        elif 200 in seen[seen.index(503) :]:
            self.miss(f"{why}: /readyz answered 200 again while Vault was unusable")
        else:
            self.f.readyz_503_seen += 1

    def usable(self, why: str) -> None:
        """Vault is back: /readyz 200 within BACK_S, then the rotations hit complete."""
        if not self.wait(BACK_S, lambda: self.probe() == 200, rotate=False):
            self.miss(f"{why}: /readyz not 200 again within {BACK_S:.0f}s")
        self.complete(why)

    def complete(self, why: str) -> None:
        if self.wait(COMPLETE_S, lambda: completed(self.bench, self.flying)):
            self.f.vault_fault_rotations += len(self.flying)
        else:
            self.miss(f"{why}: rotations in flight did not complete")


def in_flight(bench: Bench) -> dict[str, str]:
    """Key name -> rotation id of every rotation in flight and not stalled."""
    found = {}
    for name in bench.names:
        rotation = bench.store.read(bench.env, name)[0].rotation
        if rotation is not None and rotation.stalled is None:
            found[name] = rotation.id
    return found


def completed(bench: Bench, flying: dict[str, str]) -> bool:
    bench.observe()
    return all(
        bench.outcomes.get((name, rid), "").startswith("succeeded") for name, rid in flying.items()
    )
