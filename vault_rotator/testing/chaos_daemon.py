"""The daemon's lives in a chaos run: killed at a step boundary or a random moment, and the last.

:func:`plan` is the seeded order of kills: first once at every step boundary
(``VAULT_ROTATOR_FAULT_AT``, in order), then alternately at a boundary and at a random moment.
:func:`one_life` starts ``vault-rotator run``, keeps every idle key rotating through the
control API, and kills it (or lets it kill itself at its boundary); :func:`settle` runs a last,
unharmed daemon until no rotation is in flight and stops it with SIGTERM.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable

import httpx

from vault_rotator.engine.engine import BOUNDARIES
from vault_rotator.testing import chaos_figures as figs
from vault_rotator.testing.chaos_world import Bench, Daemon, ready

BOUNDARY_WAIT_S = 45.0
SETTLE_S = 180.0
VISIT_EVERY_S = 2.0


def plan(kills: int, seed: int) -> list[tuple[str, float]]:
    """The kills, in order: ``(boundary, 0)`` or ``("", seconds)`` for a random moment."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible test plan, not a secret)
    steps: list[tuple[str, float]] = [(b, 0.0) for b in BOUNDARIES[:kills]]
    turn = 0
    while len(steps) < kills:
        if turn % 2:
            steps.append((BOUNDARIES[(turn // 2) % len(BOUNDARIES)], 0.0))
        else:
            steps.append(("", round(rng.uniform(0.3, 4.0), 2)))
        turn += 1
    return steps


def until(
    proc: subprocess.Popen[bytes],
    deadline: float,
    tick: Callable[[], object],
    done: Callable[[], bool] = lambda: False,
) -> bool:
    """Call ``tick`` about every 0.25 s until ``proc`` exits (True), or ``done()`` or the
    deadline (False)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        if done():
            return False
        tick()
        time.sleep(0.25)
    return proc.poll() is not None


def keep_rotating(bench: Bench, http: httpx.Client, daemon: Daemon) -> Callable[[], None]:
    """A tick that notes stalls and outcomes, and every 2 s visits the daemon (idle keys
    get a new rotation)."""
    last = [time.monotonic()]

    def tick() -> None:
        bench.observe()
        if time.monotonic() - last[0] > VISIT_EVERY_S:
            last[0] = time.monotonic()
            bench.visit(http, daemon, rotate=True)

    return tick


def one_life(bench: Bench, http: httpx.Client, step: tuple[str, float], f: figs.Figures) -> str:
    """Start the daemon, kill it (or let it kill itself) as ``step`` says; the boundary hit."""
    daemon = bench.daemon(step[0])
    try:
        return _drive(bench, http, daemon, step, f)
    finally:
        daemon.reap()
        bench.ended()


def _drive(
    bench: Bench, http: httpx.Client, daemon: Daemon, step: tuple[str, float], f: figs.Figures
) -> str:
    fault, seconds = step
    proc = daemon.proc
    if ready(http, daemon):
        bench.visit(http, daemon, rotate=True)
    tick = keep_rotating(bench, http, daemon)
    hit = ""
    if fault:
        f.boundary_kills += 1
        if until(proc, time.monotonic() + BOUNDARY_WAIT_S, tick):
            hit = fault if proc.returncode == -signal.SIGKILL else ""
            f.unexpected_exits += proc.returncode != -signal.SIGKILL
        else:
            f.notes.append(f"boundary {fault} not reached in {BOUNDARY_WAIT_S:.0f}s")
    else:
        f.random_kills += 1
        if until(proc, time.monotonic() + seconds, tick):
            f.unexpected_exits += 1
    f.kills += 1
    return hit


def kill_phase(
    bench: Bench,
    http: httpx.Client,
    steps: list[tuple[str, float]],
    f: figs.Figures,
    before: Callable[[], None] = lambda: None,
) -> set[str]:
    """Every life of the plan (``before`` runs before each); the boundaries hit."""
    hit: set[str] = set()
    for step in steps:
        before()
        hit.add(one_life(bench, http, step, f))
    return hit


def stop(daemon: Daemon, f: figs.Figures) -> None:
    """SIGTERM; an exit other than 0 within 20 s is an unexpected exit."""
    proc = daemon.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            f.unexpected_exits += proc.wait(timeout=20) != 0
        except subprocess.TimeoutExpired:
            daemon.reap()
            f.unexpected_exits += 1


def settle_with(bench: Bench, http: httpx.Client, daemon: Daemon, timeout: float) -> int:
    """Wait (visiting, starting nothing) until every key is idle; how many are not."""
    ready(http, daemon)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(bench.observe()) < len(bench.names):
        if daemon.proc.poll() is not None:
            break
        time.sleep(0.5)
    bench.visit(http, daemon, rotate=False)
    return len(bench.names) - len(bench.observe())


def settle(bench: Bench, http: httpx.Client, f: figs.Figures) -> None:
    """A last daemon, unharmed, until no rotation is in flight; then SIGTERM."""
    daemon = bench.daemon()
    try:
        f.unsettled = settle_with(bench, http, daemon, SETTLE_S)
        f.unexpected_exits += daemon.proc.poll() is not None
        stop(daemon, f)
    finally:
        daemon.reap()
        bench.ended()
