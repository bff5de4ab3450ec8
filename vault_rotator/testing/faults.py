"""Test-only fault injection for real processes: ``VAULT_ROTATOR_FAULT_AT``.

The engine calls its fault hook at every step boundary (``engine.BOUNDARIES``) and does nothing
by default. The composition root (:mod:`vault_rotator.runtime`) installs :func:`env_fault_hook`
when ``VAULT_ROTATOR_FAULT_AT`` is set, so crash tests can SIGKILL a real ``rotate`` or ``run``
process exactly at a boundary; nothing in the engine reads the environment.

``VAULT_ROTATOR_FAULT_SIGNAL=STOP`` makes the process SIGSTOP itself there instead (a paused
replica: the HA test lets its leases lapse, then SIGCONTs it). It stops only the first time
the boundary is reached, so the resumed process runs on.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

FAULT_ENV = "VAULT_ROTATOR_FAULT_AT"
FAULT_SIGNAL_ENV = "VAULT_ROTATOR_FAULT_SIGNAL"
SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}
_stopped: set[str] = set()


def env_fault_hook(step: str) -> None:
    """At the boundary named by ``VAULT_ROTATOR_FAULT_AT``: die (SIGKILL: no cleanup, as a
    crash), or with ``VAULT_ROTATOR_FAULT_SIGNAL=STOP`` pause once (SIGSTOP)."""
    if os.environ.get(FAULT_ENV) != step:
        return
    sig = SIGNALS.get(os.environ.get(FAULT_SIGNAL_ENV, "KILL").upper(), signal.SIGKILL)
    if sig == signal.SIGSTOP:
        if step in _stopped:
            return
        _stopped.add(step)
    os.kill(os.getpid(), sig)


def fault_hook_from_env() -> Callable[[str], None] | None:
    """:func:`env_fault_hook` when ``VAULT_ROTATOR_FAULT_AT`` is set, else None."""
    return env_fault_hook if os.environ.get(FAULT_ENV) else None
