"""``vault-rotator rotate ENV/NAME [--wait [--timeout DURATION]] [--dry-run] [--emergency …]``.

Starts a rotation, or resumes the one in flight. Without ``--wait`` it returns once the new key
is published and prints the command that continues it; with ``--wait`` it runs to the end, or
until ``--timeout`` (exit 1, the rotation left in flight). What it prints while it waits is
:mod:`.follow`'s: a line per change, or one live line on a terminal.
``--emergency`` (a suspected leak) skips the drain: the old key is deleted as soon as the new
one is confirmed in use; on a rotation in flight it upgrades it. ``--revoke-old-now`` deletes
the old key right after publishing. Exit 0 when published or finished, 1 when failed or
stalled, 2 on a usage or config error.

The other operator verbs (``resume``, ``finish``, ``abort``) share :func:`run_command`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime

from vault_rotator.commands.common import add_config_argument, load, operator
from vault_rotator.commands.follow import LocalWatch, add_wait_arguments, gave_up, wait_timeout
from vault_rotator.commands.remote import act, add_daemon_argument, daemon_url
from vault_rotator.daemon.refs import in_flight_policy, key_policy, parse_ref
from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Progress, Verb
from vault_rotator.engine.outcomes import classify
from vault_rotator.errors import ConfigError
from vault_rotator.policy import PolicySet
from vault_rotator.runtime import Runtime

REVOKE_WARNING = (
    "WARNING: --revoke-old-now deletes the old key right after the new one is published: "
    "consumers that have not switched yet WILL FAIL until they pick up the new key."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="ENV/NAME", help="the key to rotate")
    add_wait_arguments(parser, "run the rotation to its end")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument(
        "--emergency", action="store_true", help="suspected leak: skip the drain (saved)"
    )
    parser.add_argument(
        "--revoke-old-now",
        action="store_true",
        help="with --emergency: delete the old key right after publish",
    )
    add_config_argument(parser)
    add_daemon_argument(parser)


def run(args: argparse.Namespace) -> int:
    parse_ref(args.ref)  # arguments first: a bad ref is named before any config or env problem
    if args.revoke_old_now and not args.emergency:
        raise ConfigError("--revoke-old-now needs --emergency")
    if args.dry_run:
        return _dry_run(args)
    if args.revoke_old_now:
        print(REVOKE_WARNING, file=sys.stderr)
    command = Command(
        Verb.ROTATE, emergency=args.emergency, revoke_old_now=args.revoke_old_now, by=operator()
    )
    return run_command(args, command, wait=args.wait)


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


def _dry_run(args: argparse.Namespace) -> int:
    policy = key_policy(load(args), args.ref)
    runtime = Runtime.from_env()
    try:
        plan = runtime.engine().plan(policy)
        example = policy.render_name(date=_today(runtime.clock()), rotation_id="<id>.1")
    finally:
        runtime.close()
    print("\n".join(plan.describe(example)))
    if args.emergency:
        print(
            "  mode: emergency (no drain"
            + (", old key revoked at publish)" if args.revoke_old_now else ")")
        )
    return 0


def _today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def conclude(progress: Progress, ref: str, command: Command) -> int:
    """Print the outcome, stall or next step; return the exit code."""
    if progress.stalled is not None:
        stall = progress.stalled
        print(f"{ref}: STALLED ({stall.reason}): {stall.detail}")
        print("  both keys stay alive. Next, one of:")
        print(f"    vault-rotator resume {ref} --wait        # try again (deadline renewed)")
        print(f"    vault-rotator abort {ref} --wait         # go back to the old key")
        print(
            f"    vault-rotator finish {ref} --keep-old    # keep the new key, leave the old alive"
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
