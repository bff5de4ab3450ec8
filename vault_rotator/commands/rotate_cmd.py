"""``vault-rotator rotate ENV/NAME [--wait] [--dry-run]``: start or resume a rotation.

Without ``--wait`` it returns once the new key is published and prints the command that
continues it; with ``--wait`` it runs to the end (pickup, drain, delete, clean-up).
Exit 0 when published or finished, 1 when failed or stalled, 2 on a usage or config error.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

from vault_rotator.commands.common import add_config_argument, key_policy, load, operator
from vault_rotator.engine import reasons
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Progress
from vault_rotator.runtime import Runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="ENV/NAME", help="the key to rotate")
    parser.add_argument("--wait", action="store_true", help="run the rotation to its end")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    add_config_argument(parser)


def _say(progress: Progress) -> None:
    what = progress.waiting or progress.phase
    print(f"{progress.ref}: rotation {progress.rotation_id}: {what}", flush=True)


def run(args: argparse.Namespace) -> int:
    policy = key_policy(load(args), args.ref)
    runtime = Runtime.from_env()
    try:
        engine = runtime.engine()
        if args.dry_run:
            plan = engine.plan(policy)
            example = policy.render_name(date=_today(runtime.clock()), rotation_id="<id>.1")
            print("\n".join(plan.describe(example)))
            return 0
        progress = drive(engine, policy, wait=args.wait, by=operator(), report=_say)
    finally:
        runtime.close()
    return _conclude(progress, args.ref)


def _today(now: float) -> date:
    return datetime.fromtimestamp(now, UTC).date()


def _conclude(progress: Progress, ref: str) -> int:
    if progress.stalled is not None:
        stall = progress.stalled
        print(f"{ref}: STALLED ({stall.reason}): {stall.detail}")
        print("  both keys stay alive; inspect with: vault-rotator status --config DIR")
        return 1
    if progress.outcome is not None:
        out = progress.outcome
        print(
            f"{ref}: {out.outcome}: new key {out.new_key_id}, old key {out.old_key_id or 'none'}"
            + (f" ({out.detail})" if out.detail else "")
        )
        return 0 if out.outcome != reasons.FAILED_VERIFY else 1
    print(f"{ref}: new key published; continue with: vault-rotator rotate {ref} --wait")
    return 0
