"""What several CLI verbs share: loading policies, naming keys, a runtime from the env."""

from __future__ import annotations

import argparse
import getpass
import socket

from vault_rotator.errors import ConfigError
from vault_rotator.policy import KeyPolicy, PolicySet, load_policies, resolve_config_dir


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="DIR",
        default=None,
        help="policy directory (default: $VAULT_ROTATOR_CONFIG, else ./config)",
    )


def load(args: argparse.Namespace) -> PolicySet:
    return load_policies(resolve_config_dir(args.config))


def key_policy(policies: PolicySet, ref: str) -> KeyPolicy:
    """The policy of ``ENV/NAME``; a malformed ref is a usage error."""
    env, sep, name = ref.partition("/")
    if not sep or not env or not name or "/" in name:
        raise ConfigError(f"{ref!r} is not ENV/NAME (for example production/backend)")
    return policies.key(env, name)


def operator() -> str:
    """Who is running this command, for the outcome history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
