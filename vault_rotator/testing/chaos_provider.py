"""Provider faults in a chaos run, through the emulator's fault injection.

* :data:`KILL_FAULTS`: during the kill phase, before every third life, the next of a cycle
  (5xx bursts, 429s, a lost create answer, slow, trickled, malformed and oversized answers).
* :func:`add_foreign_keys`: someone else's keys with odd names (unicode, 256 characters,
  control characters, a name one character off ours) on the account for the whole run; they
  must never be touched.
* :func:`provider_phase`: one daemon life (a 20 s lease, so the ARouter client's timeout is
  about a second) under :data:`PHASE_FAULTS`, group by group, while every key keeps rotating; a
  rotation stalled as ``rate-limited`` is resumed once the wait it named has passed.

The figures come from the emulator's request log: requests a fault fired on, the busiest second
per route, and every request sent before a ``Retry-After`` had elapsed (``hammering``).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx

from vault_rotator.engine import reasons
from vault_rotator.testing import chaos_figures as figs
from vault_rotator.testing.chaos_daemon import keep_rotating, stop, until
from vault_rotator.testing.chaos_world import Bench, ready

Fault = tuple[str, dict[str, Any]]

KILL_FAULTS: tuple[Fault, ...] = (
    ("list", {"status": 503, "count": 3}),
    ("create", {"status": 429, "retry_after": 0.2, "count": 1}),
    ("create", {"drop_after_commit": True, "count": 1}),
    ("list", {"latency": 0.5, "count": 2}),
    ("list", {"garbage": "json", "count": 1}),
    ("delete", {"status": 502, "count": 2}),
    ("update", {"status": 500, "count": 1}),
    ("list", {"garbage": "huge", "count": 1}),
    ("list", {"status": 429, "retry_after": 2, "count": 1}),
    ("list", {"trickle_body": 0.001, "count": 2}),
    ("list", {"garbage": "types", "count": 1}),
)  # each spent after a few requests

LONG_WAIT_S = 4.0  # a create's Retry-After past a poll: the rotation stalls rate-limited
# Groups set one after the other in the provider phase, each once the last is spent.
PHASE_FAULTS: tuple[tuple[str, tuple[Fault, ...]], ...] = (
    ("5xx burst", (("list", {"status": 503, "count": 9}), ("delete", {"status": 500, "count": 3}),
                   ("update", {"status": 502, "count": 2}))),
    ("429 Retry-After", (("list", {"status": 429, "retry_after": 3, "count": 1}),
                         ("create", {"status": 429, "retry_after": 0.3, "count": 1}))),
    ("429 past a poll", (("create", {"status": 429, "retry_after": LONG_WAIT_S, "count": 1}),)),
    ("slow", (("list", {"latency": 0.4, "count": 3}), ("list", {"latency": 4, "count": 1}))),
    ("trickled", (("list", {"trickle": 0.03, "count": 1}),
                  ("list", {"trickle_body": 0.005, "count": 2}))),
    ("dropped create", (("create", {"drop_after_commit": True, "count": 1}),)),
    ("malformed", (("list", {"garbage": "json", "count": 1}),
                   ("list", {"garbage": "html", "count": 1}),
                   ("list", {"garbage": "types", "count": 1}),
                   ("create", {"garbage": "json", "count": 1}))),
    ("oversized", (("list", {"garbage": "huge", "count": 1}),
                   ("create", {"garbage": "huge", "count": 1}))),
)  # fmt: skip
GROUP_WAIT_S = 20.0
PHASE_LEASE_TTL = "20s"
ODD_NAMES = (
    "ünïcödé-кключ-键-🔑",
    "\u202eevil-rtl-override",
    "x" * 256,
    "ctl\x00nul\x07bell\x1b[31mred\r\nnewline",
    "  leading and trailing spaces  ",
)


def add_foreign_keys(bench: Bench) -> None:
    """Someone else's keys with odd names, one of them a character off a rotation's name."""
    names = (*ODD_NAMES, f"{bench.env}-k0-x")
    for name in names:
        key_id, _ = bench.emulator.seed_key(name, allowed_providers=["openai"])
        bench.foreign[key_id] = name


def next_kill_fault(bench: Bench, f: figs.Figures) -> None:
    """Before every third life of the kill phase: the next fault of :data:`KILL_FAULTS`."""
    if f.kills % 3 == 2:
        route, fault = KILL_FAULTS[f.provider_faults % len(KILL_FAULTS)]
        bench.emulator.set_fault(route, **fault)
        f.provider_faults += 1


def _fired(bench: Bench, since: float) -> int:
    return sum(1 for r in bench.emulator.request_log() if r["fault"] and r["at"] >= since)


def _resume_rate_limited(bench: Bench, http: httpx.Client, url: Callable[[str], str]) -> None:
    """Resume every rotation stalled as rate-limited once the wait it named has passed."""
    for name in bench.names:
        rotation = bench.store.read(bench.env, name)[0].rotation
        stalled = rotation.stalled if rotation else None
        if rotation is None or stalled is None or stalled.reason != reasons.RATE_LIMITED:
            continue
        if time.time() >= stalled.at + LONG_WAIT_S + 0.5:  # the wait it named has passed
            bench.resumed.add((name, rotation.id))
            bench.ask(http, "POST", url(f"/v1/resume/{bench.env}/{name}"))


def _one_group(
    bench: Bench,
    proc: subprocess.Popen[bytes],
    tick: Callable[[], None],
    group: tuple[str, tuple[Fault, ...]],
) -> bool:
    """Set ``faults``, tick until each has fired as often as its count (or 20 s), clear them;
    True if the daemon died meanwhile."""
    name, faults = group
    since = time.time()
    for route, fault in faults:
        bench.emulator.set_fault(route, **fault)
    expected = sum(fault.get("count", 1) for _, fault in faults)
    deadline = time.monotonic() + GROUP_WAIT_S
    died = until(proc, deadline, tick, lambda: _fired(bench, since) >= expected)
    if (fired := _fired(bench, since)) < expected:
        bench.outputs.notes.append(f"provider faults {name}: {fired} of {expected} fired")
    bench.emulator.clear_faults()
    return died


def provider_phase(
    bench: Bench, http: httpx.Client, f: figs.Figures, groups: tuple[int, ...] | None = None
) -> None:
    """One daemon life under :data:`PHASE_FAULTS` (``groups``: their indexes, default all)."""
    daemon = bench.daemon(env={"VAULT_ROTATOR_LEASE_TTL": PHASE_LEASE_TTL})
    try:
        if not ready(http, daemon):
            f.unexpected_exits += 1
            return
        bench.visit(http, daemon, rotate=True)
        rotate = keep_rotating(bench, http, daemon)

        def tick() -> None:
            rotate()
            _resume_rate_limited(bench, http, daemon.url)

        for index in range(len(PHASE_FAULTS)) if groups is None else groups:
            f.provider_faults += len(PHASE_FAULTS[index][1])
            if _one_group(bench, daemon.proc, tick, PHASE_FAULTS[index]):
                f.unexpected_exits += 1  # the daemon died
                return
        until(daemon.proc, time.monotonic() + 3, tick)  # the last group's effects play out
        stop(daemon, f)
    finally:
        daemon.reap()
        bench.ended()


def provider_figures(bench: Bench, f: figs.Figures) -> None:
    """Back-off and foreign-key figures from the emulator's logs."""
    requests = bench.emulator.request_log()
    f.provider_requests_during_faults = sum(
        1 for r in requests if r["fault"] and r["route"] in figs.MANAGEMENT_ROUTES
    )
    signs, f.max_route_rps = figs.hammering(requests, bench.lives)
    f.hammering = len(signs)
    f.notes += signs[:5]
    touched = figs.foreign_touched(
        bench.emulator.mutation_log(), bench.emulator.all_keys(), bench.foreign
    )
    f.foreign_touched = len(touched)
    f.notes += touched[:5]
