"""``vault-rotator finish ENV/NAME --keep-old``: end a published rotation now.

The new key stays served; the old key is left alive (re-enabled if it was disabled) and the
outcome says so. Keys the rotation created but never served are deleted.
"""

from __future__ import annotations

import argparse

from vault_rotator.commands.common import add_config_argument, operator
from vault_rotator.commands.remote import add_daemon_argument
from vault_rotator.commands.runner import run_command
from vault_rotator.engine.engine import Command, Verb
from vault_rotator.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="ENV/NAME")
    parser.add_argument(
        "--keep-old", action="store_true", help="required: end now, keeping the old key alive"
    )
    add_config_argument(parser)
    add_daemon_argument(parser)


def run(args: argparse.Namespace) -> int:
    if not args.keep_old:
        raise ConfigError("finish needs --keep-old (end the rotation now, keeping the old key)")
    return run_command(args, Command(Verb.FINISH_KEEP_OLD, by=operator()), wait=False)
