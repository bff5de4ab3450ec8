"""The ``vault-rotator`` command line.

Exit codes: 0 ok, 1 failed or stalled, 2 usage or config error.
Each verb lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this module only wires them and turns project errors into one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from vault_rotator import __version__
from vault_rotator.errors import ConfigError, VaultRotatorError
from vault_rotator.logs import configure, redact_text

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "run": ("vault_rotator.commands.run_cmd", "run the daemon: schedules, health, metrics, API"),
    "validate": ("vault_rotator.policy.validate_cmd", "check policy files; print FILE:LINE errors"),
    "rotate": ("vault_rotator.commands.rotate_cmd", "start or resume a key's rotation"),
    "resume": ("vault_rotator.commands.resume_cmd", "continue a rotation from its saved step"),
    "finish": ("vault_rotator.commands.finish_cmd", "end a rotation now, keeping the old key"),
    "abort": ("vault_rotator.commands.abort_cmd", "roll a rotation back to the old key"),
    "status": ("vault_rotator.commands.status_cmd", "show every key's rotation state"),
    "demo": ("vault_rotator.demo", "run a full rotation on an embedded OpenBao + emulator"),
    "audit": (
        "vault_rotator.commands.audit_cmd",
        "list unmanaged, unused, uncapped and twice-served keys; delete unused ones",
    ),
    "freeze": ("vault_rotator.commands.freeze_cmd", "stop new rotations of ENV or ENV/NAME"),
    "unfreeze": ("vault_rotator.commands.freeze_cmd", "allow new rotations of ENV or ENV/NAME"),
    "emulator": ("vault_rotator.emulator.cli", "run the ARouter emulator (for tests and demos)"),
}


class _Verb(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def _load(module: str) -> _Verb:
    return cast(_Verb, importlib.import_module(module))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vault-rotator", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vault-rotator {__version__}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        _load(module).add_arguments(verb_parser)
        verb_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_level)
    try:
        return _load(args._module).run(args)
    except ConfigError as exc:
        print(f"vault-rotator: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except VaultRotatorError as exc:
        print(f"vault-rotator: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
