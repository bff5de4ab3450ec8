"""``vault-rotator resume ENV/NAME [--wait [--timeout DURATION]]``: continue from the saved step.

A stall is cleared and the deadline that passed gets a fresh period; after "secret changed" it
goes on only if the consumer secret still serves the new key.
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
    add_wait_arguments(parser, "run the rotation to its end")
    add_config_argument(parser)
    add_daemon_argument(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, Command(Verb.RESUME, by=operator()), wait=args.wait)
