"""``vault-rotator rotate ENV/NAME [--wait [--timeout DURATION]] [--dry-run] [--emergency …]``,
and ``vault-rotator rotate --env ENV --emergency --yes [...]`` for a whole environment.

Starts a rotation, or resumes the one in flight. Without ``--wait`` it returns once the new key
is published and prints the command that continues it; with ``--wait`` it runs to the end, or
until ``--timeout`` (exit 1, the rotation left in flight). What it prints while it waits is
:mod:`.follow`'s: a line per change, or one live line on a terminal.
``--emergency`` (a suspected leak) skips the drain: the old key is deleted as soon as the new
one is confirmed in use; on a rotation in flight it upgrades it. ``--revoke-old-now`` deletes
the old key right after publishing. Exit 0 when published or finished, 1 when failed or
stalled, 2 on a usage or config error.

It and the other operator verbs (``resume``, ``finish``, ``abort``) run through :mod:`.runner`.
``--env ENV --emergency --yes`` (every key of one environment; ``--yes`` is required, a typo
costs every key) is :mod:`.emergency_cmd`'s.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime

from vault_rotator.commands import emergency_cmd
from vault_rotator.commands.common import add_config_argument, load, operator
from vault_rotator.commands.follow import add_wait_arguments
from vault_rotator.commands.remote import add_daemon_argument
from vault_rotator.commands.runner import run_command
from vault_rotator.daemon.refs import key_policy, parse_ref
from vault_rotator.engine.engine import Command, Verb
from vault_rotator.engine.status import derive_state
from vault_rotator.errors import ConfigError
from vault_rotator.runtime import Runtime

REVOKE_WARNING = (
    "WARNING: --revoke-old-now deletes the old key right after the new one is published: "
    "consumers that have not switched yet WILL FAIL until they pick up the new key."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="ENV/NAME", nargs="?", help="the key to rotate")
    parser.add_argument(
        "--env",
        metavar="ENV",
        default=None,
        help="with --emergency --yes: every key of this environment (instead of ENV/NAME)",
    )
    parser.add_argument(
        "--yes", action="store_true", help="with --env: confirm rotating every key of ENV"
    )
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
    if args.env is not None:
        return emergency_cmd.run(args)
    if args.ref is None:
        raise ConfigError("give ENV/NAME, or --env ENV --emergency --yes for a whole environment")
    if args.yes:
        raise ConfigError("--yes goes with --env")
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


def _dry_run(args: argparse.Namespace) -> int:
    policy = key_policy(load(args), args.ref)
    runtime = Runtime.from_env()
    try:
        engine = runtime.engine()
        record = engine.read(policy)
        if record.rotation is not None:  # nothing new would be planned: say what would happen
            state = derive_state(record, runtime.clock())[0]
            print(f"{policy.ref}: rotation {record.rotation.id} is in flight ({state}):")
            print("  rotate would resume it, not start another; nothing is planned")
            if args.emergency:
                print("  --emergency would upgrade it: no drain (saved, survives restarts)")
            return 0
        plan = engine.plan(policy)
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
