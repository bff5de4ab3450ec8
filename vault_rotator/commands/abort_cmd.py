"""``vault-rotator abort ENV/NAME [--wait [--timeout DURATION]]``: the rotation in reverse.

Before publishing: the new key is deleted. After: the old secret's whole data map is
republished (marked with the rotation id and ``aborted: true``), the new key is drained and
deleted, and the rotation ends as ``aborted``. Refused once the old key is deleted.
"""

from __future__ import annotations

import argparse

from vault_rotator.commands.common import add_config_argument, operator
from vault_rotator.commands.follow import add_wait_arguments
from vault_rotator.commands.remote import add_daemon_argument
from vault_rotator.commands.runner import run_command
from vault_rotator.engine.engine import Command, Verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="ENV/NAME")
    add_wait_arguments(parser, "run the abort to its end")
    add_config_argument(parser)
    add_daemon_argument(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, Command(Verb.ABORT, by=operator()), wait=args.wait)
