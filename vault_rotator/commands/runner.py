"""The verb runner that rotate, resume, abort and finish share.

:func:`run_command` drives ``ENV/NAME`` with a :class:`~vault_rotator.engine.engine.Command`:
through the daemon when ``--daemon`` (or ``$VAULT_ROTATOR_DAEMON``) names one, else in this
process, showing each change; :func:`conclude` prints where the rotation ended (its outcome, a
stall and the commands that resolve it, or the next step) and returns the exit code.
"""

from __future__ import annotations

import argparse

from vault_rotator.commands.common import load
from vault_rotator.commands.follow import LocalWatch, gave_up, wait_timeout
from vault_rotator.commands.remote import act, daemon_url
from vault_rotator.daemon.refs import in_flight_policy, parse_ref
from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Progress, Verb
from vault_rotator.engine.outcomes import classify
from vault_rotator.policy import PolicySet
from vault_rotator.runtime import Runtime


def run_command(args: argparse.Namespace, command: Command, *, wait: bool) -> int:
    """Drive ``args.ref`` with ``command``; print where it ended; the exit code."""
    parse_ref(args.ref)  # before the config and the environment (VAULT_TOKEN, the daemon)
    timeout = wait_timeout(args, wait=wait)
    policies = load(args)
    if (url := daemon_url(args)) is not None:
        verb = REMOTE_VERBS[command.verb]
        return act(url, verb, args.ref, _body(command), wait=wait, timeout=timeout)
    progress = _drive_here(policies, args.ref, command, wait=wait, timeout=timeout)
    if timeout is not None and _in_flight(progress):
        print(gave_up(args.ref, _where(progress), timeout, _follow_with(progress, args.ref)))
        return 1
    return conclude(progress, args.ref, command)


def _drive_here(
    policies: PolicySet, ref: str, command: Command, *, wait: bool, timeout: float | None
) -> Progress:
    """Drive the rotation in this process, showing each change; stop waiting at ``timeout``."""
    runtime = Runtime.from_env()
    try:
        policy = in_flight_policy(policies, ref, runtime.kv)
        engine = runtime.engine()
        deadline = None if timeout is None else engine.clock() + timeout
        watch = LocalWatch(engine, policy)
        try:
            start = command.verb == Verb.ROTATE
            return drive(
                engine,
                policy,
                wait=wait,
                start=start,
                command=command,
                report=watch,
                deadline=deadline,
            )
        finally:
            watch.close()
    finally:
        runtime.close()


def _in_flight(progress: Progress) -> bool:
    return progress.rotation_id is not None and not progress.finished and not progress.stalled


def _where(progress: Progress) -> str:
    return progress.waiting or progress.phase


def _follow_with(progress: Progress, ref: str) -> str:
    """The commands that pick a rotation in flight up again."""
    return f"vault-rotator {_next_verb(progress)} {ref} --wait, or vault-rotator status"


def _next_verb(progress: Progress) -> str:
    return "abort" if progress.phase == reasons.ABORTING else "rotate"


REMOTE_VERBS = {
    Verb.ROTATE: "rotate",
    Verb.RESUME: "resume",
    Verb.ABORT: "abort",
    Verb.FINISH_KEEP_OLD: "finish",
}


def _body(command: Command) -> dict[str, bool]:
    if command.verb == Verb.FINISH_KEEP_OLD:
        return {"keep_old": True}
    return {"emergency": command.emergency, "revoke_old_now": command.revoke_old_now}


def conclude(progress: Progress, ref: str, command: Command) -> int:
    """Print the outcome, stall or next step; return the exit code."""
    if progress.stalled is not None:
        stall = progress.stalled
        print(f"{ref}: STALLED ({stall.reason}): {stall.detail}")
        if progress.published:
            print("  both keys stay alive. Next, one of:")
        else:  # nothing published yet: there is no new key to keep
            print("  the old key stays served, untouched. Next, one of:")
        print(f"    vault-rotator resume {ref} --wait        # try again (deadline renewed)")
        print(f"    vault-rotator abort {ref} --wait         # go back to the old key")
        if progress.published:
            print(
                f"    vault-rotator finish {ref} --keep-old    # keep the new key, leave the "
                "old alive"
            )
        return 1
    if progress.outcome is not None:
        out = progress.outcome
        print(
            f"{ref}: {out.outcome}: new key {out.new_key_id or 'none'}, "
            f"old key {out.old_key_id or 'none'}" + (f" ({out.detail})" if out.detail else "")
        )
        return classify(out.outcome).exit_code
    if progress.rotation_id is None:
        print(f"{ref}: no rotation in flight")
        return 0 if command.verb == Verb.ROTATE else 1
    then = f"vault-rotator {_next_verb(progress)} {ref} --wait"
    print(f"{ref}: {_where(progress)}; continue with: {then}")
    return 0
