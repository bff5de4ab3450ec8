"""``vault-rotator validate``: check every policy file of a config directory.

Exit 0: one summary line per file, then any ``FILE:LINE: warning: ...`` lines.
Exit 2: every problem found, one ``FILE:LINE: message`` line each, then a count.
All output goes to stdout, like a linter's.
"""

from __future__ import annotations

import argparse

from vault_rotator.display import redact_text
from vault_rotator.policy.loader import (
    CONFIG_ENV,
    DEFAULT_CONFIG_DIR,
    load_policies,
    resolve_config_dir,
)
from vault_rotator.policy.model import EnvironmentPolicy
from vault_rotator.policy.problems import PolicyError, Problem

EXIT_OK, EXIT_INVALID = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config DIR``."""
    parser.add_argument(
        "--config",
        metavar="DIR",
        default=None,
        help=f"directory of policy files (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_DIR}/)",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the config directory; 0 when valid (warnings allowed), 2 otherwise."""
    config_dir = resolve_config_dir(args.config)
    try:
        policies = load_policies(config_dir)
    except PolicyError as exc:
        for problem in exc.problems:
            _print(str(problem))
        _print(_count(exc.problems))
        return EXIT_INVALID
    for environment in sorted(policies.environments.values(), key=lambda env: str(env.source)):
        _print(summary(environment))
        for warning in policies.warnings:
            if warning.file == environment.source:
                _print(str(warning))
    return EXIT_OK


def summary(environment: EnvironmentPolicy) -> str:
    """``FILE: environment ENV, N keys, provider URL (dialect D)``."""
    count = len(environment.keys)
    provider = environment.provider
    return (
        f"{environment.source}: environment {environment.environment}, "
        f"{count} key{'' if count == 1 else 's'}, provider {provider.base_url} "
        f"(dialect {provider.dialect})"
    )


def _count(problems: list[Problem]) -> str:
    errors = sum(problem.is_error for problem in problems)
    warnings = len(problems) - errors
    text = f"{errors} error{'' if errors == 1 else 's'}"
    if warnings:
        text += f", {warnings} warning{'' if warnings == 1 else 's'}"
    return f"{text}: the policy files are not valid"


def _print(line: str) -> None:
    print(redact_text(line))
