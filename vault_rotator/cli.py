"""The ``vault-rotator`` command line.

Exit codes: 0 ok, 1 failed or stalled, 2 usage or config error; every error is one line, a
usage error from argparse too. Each verb lives in its own module of
:mod:`vault_rotator.commands` exposing ``add_arguments(parser)`` and ``run(args) -> int``; this
module only wires them and turns project errors into one-line messages. The one exception is
``emulator``, whose module is the emulator's own CLI (:mod:`vault_rotator.emulator.cli`): the
emulator is a test helper that imports nothing of the product it fakes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol, cast

from vault_rotator import __version__
from vault_rotator.display import redact_text
from vault_rotator.errors import ConfigError, VaultRotatorError
from vault_rotator.logs import LOG_LEVEL_ENV, LOG_LEVELS, configure, log_settings
from vault_rotator.policy.problems import clipped, escaped

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_ERROR = 1000  # characters of an error line


def one_line(text: str) -> str:
    """``text`` on one line: every character that does not print (controls, bidi and other
    format characters, newlines) as its escape, and at most MAX_ERROR characters."""
    return clipped(escaped(text), MAX_ERROR)


# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "run": ("vault_rotator.commands.run_cmd", "run the daemon: schedules, health, metrics, API"),
    "validate": (
        "vault_rotator.commands.validate_cmd",
        "check policy files; print FILE:LINE errors",
    ),
    "rotate": (
        "vault_rotator.commands.rotate_cmd",
        "start or resume a key's rotation (--env ENV --emergency --yes: every key of ENV)",
    ),
    "resume": ("vault_rotator.commands.resume_cmd", "continue a rotation from its saved step"),
    "finish": ("vault_rotator.commands.finish_cmd", "end a rotation now, keeping the old key"),
    "abort": ("vault_rotator.commands.abort_cmd", "roll a rotation back to the old key"),
    "status": ("vault_rotator.commands.status_cmd", "show every key's rotation state"),
    "demo": (
        "vault_rotator.commands.demo_cmd",
        "run a full rotation on an embedded OpenBao + emulator",
    ),
    "audit": (
        "vault_rotator.commands.audit_cmd",
        "list unmanaged, unused, uncapped and twice-served keys; delete unused ones",
    ),
    "freeze": ("vault_rotator.commands.freeze_cmd", "stop new rotations of ENV or ENV/NAME"),
    "unfreeze": ("vault_rotator.commands.freeze_cmd", "allow new rotations of ENV or ENV/NAME"),
    "vault-policy": (
        "vault_rotator.commands.vault_policy_cmd",
        "print the Vault policy (HCL) of the rotator or of one key's consumer",
    ),
    "emulator": ("vault_rotator.emulator.cli", "run the ARouter emulator (for tests and demos)"),
}


class _Verb(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def _load(module: str) -> _Verb:
    return cast(_Verb, importlib.import_module(module))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_log_level(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=default,
        help=f"log level (default ${LOG_LEVEL_ENV}, else info)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vault-rotator", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vault-rotator {__version__}")
    _add_log_level(parser, default=None)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        _load(module).add_arguments(verb_parser)
        # Also after the verb; SUPPRESS keeps a value given before it from being overwritten.
        _add_log_level(verb_parser, default=argparse.SUPPRESS)
        verb_parser.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        level, json = log_settings(args.log_level)
        configure(level, json=json)
        return _load(args._module).run(args)
    except ConfigError as exc:
        return _fail(exc, EXIT_USAGE)
    except VaultRotatorError as exc:
        return _fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


def _fail(exc: VaultRotatorError, code: int) -> int:
    # One line, whatever the message quotes (a hostile argument, a server's text): escaped so
    # it cannot drive the terminal, and capped.
    print(f"vault-rotator: {one_line(redact_text(str(exc)))}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
