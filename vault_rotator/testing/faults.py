"""Test-only fault injection for real processes: ``VAULT_ROTATOR_FAULT_AT``.

The engine calls its fault hook at every step boundary (``engine.BOUNDARIES``) and does nothing
by default. The composition root (:mod:`vault_rotator.runtime`) installs :func:`env_fault_hook`
when ``VAULT_ROTATOR_FAULT_AT`` is set, so crash tests can SIGKILL a real ``rotate`` or ``run``
process exactly at a boundary; nothing in the engine reads the environment.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

FAULT_ENV = "VAULT_ROTATOR_FAULT_AT"


def env_fault_hook(step: str) -> None:
    """Die (SIGKILL: no cleanup, as a crash) at the boundary named by ``VAULT_ROTATOR_FAULT_AT``."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def fault_hook_from_env() -> Callable[[str], None] | None:
    """:func:`env_fault_hook` when ``VAULT_ROTATOR_FAULT_AT`` is set, else None."""
    return env_fault_hook if os.environ.get(FAULT_ENV) else None
