"""What several CLI verbs share: the ``--config`` argument, loading policies, who runs them.

Key refs (``ENV/NAME``) are parsed in :mod:`vault_rotator.daemon.refs`, which the control API
shares.
"""

from __future__ import annotations

import argparse
import getpass
import socket

from vault_rotator.policy import PolicySet, load_policies, resolve_config_dir


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="DIR",
        default=None,
        help="policy directory (default: $VAULT_ROTATOR_CONFIG, else ./config)",
    )


def load(args: argparse.Namespace) -> PolicySet:
    return load_policies(resolve_config_dir(args.config))


def operator() -> str:
    """Who is running this command, for the outcome history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
