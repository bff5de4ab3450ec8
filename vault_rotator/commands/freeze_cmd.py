"""``vault-rotator freeze|unfreeze ENV[/NAME] [--reason TEXT]``: stop or allow new rotations.

A freeze stops new rotations (scheduled or not started yet) of an environment or one key; a
rotation in flight is not touched. The freeze lives in Vault at
``<kv_mount>/<state_prefix>/control/frozen``, so every daemon and CLI sees it.
"""

from __future__ import annotations

import argparse

from vault_rotator.commands.common import add_config_argument, load, operator
from vault_rotator.commands.remote import act, add_daemon_argument, daemon_url
from vault_rotator.daemon import freeze as freezes
from vault_rotator.errors import ConfigError
from vault_rotator.runtime import Runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="ENV[/NAME]")
    parser.add_argument("--reason", default="", help="why (shown in the freeze record)")
    add_config_argument(parser)
    add_daemon_argument(parser)


def run(args: argparse.Namespace) -> int:
    target = freezes.parse_target(args.target)
    if (url := daemon_url(args)) is not None:
        body = {"reason": args.reason} if args.verb == "freeze" else {}
        return act(url, args.verb, target, body, wait=False)
    policies = load(args)
    env, _, name = target.partition("/")
    environment = policies.environments.get(env)
    if environment is None:
        raise ConfigError(f"no environment {env!r} in the policies")
    if name:
        environment.key(name)  # ConfigError naming the known keys
    runtime = Runtime.from_env()
    try:
        kv = runtime.kv(environment.vault.kv_mount)
        prefix = environment.vault.state_prefix
        if args.verb == "freeze":
            result = freezes.freeze(
                kv, prefix, target, operator(), at=runtime.clock(), reason=args.reason
            )
        else:
            result = freezes.unfreeze(kv, prefix, target)
    finally:
        runtime.close()
    state = "frozen" if target in result else "not frozen"
    print(f"{target}: {state}")
    return 0
