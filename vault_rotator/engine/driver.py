"""Drive one key's rotation pass after pass until it is published, finished or stalled.

Between passes it sleeps ``poll_interval`` on the engine's (injectable) clock. A lease held by
another process is waited out when ``wait`` is set (until it is released or expires); so is a
transient failure (provider 429/5xx/timeouts, Vault sealed or down, a lost lease), up to
``max_transient`` in a row. With a ``deadline`` (a time on the engine's clock, a caller's
``--timeout``) it stops waiting once the clock reaches it and returns the latest progress; the
rotation is left in flight as it is.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from vault_rotator.engine import reasons
from vault_rotator.engine.engine import Command, Engine, Progress
from vault_rotator.errors import (
    LeaseHeldError,
    LeaseLostError,
    ProviderRetryableError,
    StoreUnavailableError,
    VaultRotatorError,
)
from vault_rotator.policy import KeyPolicy

log = structlog.get_logger(__name__)

TRANSIENT = (ProviderRetryableError, StoreUnavailableError, LeaseLostError, LeaseHeldError)


def drive(
    engine: Engine,
    policy: KeyPolicy,
    *,
    wait: bool,
    start: bool = True,
    command: Command | None = None,
    report: Callable[[Progress], None] = lambda _p: None,
    max_transient: int = 10,
    deadline: float | None = None,
) -> Progress:
    """Start (or resume) ``policy``'s rotation and advance it; return where it stopped.

    With ``start=False`` it only resumes a rotation in flight (and returns at once if none).
    Past ``deadline`` it returns the last progress (a failing pass with none yet re-raises).
    """
    command = command or Command()
    rotation_id: str | None = None
    last: Progress | None = None
    failures = 0
    while True:
        first = rotation_id is None
        # The operator's command applies once; later passes just carry the rotation on.
        this = command if first else Command(trigger=command.trigger, by=command.by)
        try:
            progress = engine.advance(policy, start=start and first, command=this)
            failures = 0
        except TRANSIENT as exc:
            # A lease held by a live process is not a failure: it is doing the work.
            failures += 0 if isinstance(exc, LeaseHeldError) else 1
            if not wait:
                raise
            if failures > max_transient:
                return _exhausted(engine, policy, exc)
            log.warning("pass failed; will retry", key=policy.ref, error=str(exc))
            if not _pause(engine, policy, deadline):
                if last is None:
                    raise
                return last
            continue
        if rotation_id is not None and progress.rotation_id != rotation_id:
            progress = _finished_elsewhere(engine, policy, rotation_id)
        rotation_id = progress.rotation_id
        last = progress
        report(progress)
        if rotation_id is None:  # nothing in flight and nothing started
            return progress
        if progress.finished or progress.stalled or (progress.published and not wait):
            return progress
        if not _pause(engine, policy, deadline):
            return progress


def _pause(engine: Engine, policy: KeyPolicy, deadline: float | None) -> bool:
    """Sleep one poll interval, cut short at ``deadline``; False once the deadline has come."""
    pause = policy.provider.poll_interval_s
    if deadline is not None:
        left = deadline - engine.clock()
        if left <= 0:
            return False
        pause = min(pause, left)
    engine.sleep(pause)
    return True


def _exhausted(engine: Engine, policy: KeyPolicy, exc: Exception) -> Progress:
    """Too many failures in a row: stall the rotation in flight (if any) and say why."""
    detail = f"gave up after repeated failures: {exc}"
    try:
        progress = engine.stall(policy, reasons.RETRIES_EXHAUSTED, detail)
    except VaultRotatorError:
        raise exc from None
    if progress.stalled is None:
        raise exc
    return progress


def _finished_elsewhere(engine: Engine, policy: KeyPolicy, rotation_id: str) -> Progress:
    """Our rotation ended in another process's pass: report its recorded outcome."""
    record = engine.read(policy)
    for outcome in reversed(record.outcomes):
        if outcome.rotation_id == rotation_id:
            return Progress(policy.ref, record.phase, rotation_id, outcome=outcome)
    return Progress(policy.ref, record.phase, rotation_id, waiting="finished elsewhere")
