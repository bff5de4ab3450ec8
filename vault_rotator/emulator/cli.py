"""``vault-rotator emulator``: serve the ARouter emulator until SIGTERM or SIGINT.

Prints ``emulator listening on http://HOST:PORT (dialect X)`` once it accepts connections,
then serves; a signal stops it cleanly with exit status 0 (SIGINT only unless it was ignored
when the process started, as in a script's background job). Management keys come from
``--management-key`` (repeatable) or ``AROUTER_EMULATOR_MANAGEMENT_KEY`` (comma-separated);
they are never printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType

from vault_rotator.emulator.emulator import PAGING_MODES, Emulator
from vault_rotator.errors import ConfigError

ENV_MANAGEMENT_KEY = "AROUTER_EMULATOR_MANAGEMENT_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8790, help="port (0: any free port)")
    parser.add_argument("--dialect", choices=("a", "b", "c"), default="a", help="API dialect")
    parser.add_argument(
        "--management-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"a management key to accept (repeatable; or set {ENV_MANAGEMENT_KEY})",
    )
    parser.add_argument("--paging", choices=PAGING_MODES, default="token", help="list paging")
    parser.add_argument(
        "--last-used-granularity",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="round last_used_at down to a multiple of this",
    )
    parser.add_argument(
        "--usage-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before a use shows in last_used_at and usage",
    )
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="skew of the provider's clock against ours",
    )
    parser.add_argument("--persist", metavar="FILE", help="keep keys in this JSON file")
    parser.add_argument(
        "--allow-live-management",
        action="store_true",
        help="let lr_live_ API keys call management routes (as the rotation guide does)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for ids, values and faults")


def _management_keys(args: argparse.Namespace) -> list[str]:
    keys = list(args.management_key)
    env = os.environ.get(ENV_MANAGEMENT_KEY, "")
    keys += [key.strip() for key in env.split(",") if key.strip()]
    if not keys:
        raise ConfigError(f"emulator: pass --management-key or set {ENV_MANAGEMENT_KEY}")
    return keys


def _emulator(args: argparse.Namespace) -> Emulator:
    try:
        return Emulator(
            dialect=args.dialect,
            management_keys=_management_keys(args),
            paging=args.paging,
            host=args.host,
            port=args.port,
            clock_offset=args.clock_offset,
            last_used_granularity=args.last_used_granularity,
            usage_lag=args.usage_lag,
            persist_path=args.persist,
            allow_live_management=args.allow_live_management,
            seed=args.seed,
        )
    except ValueError as exc:
        raise ConfigError(f"emulator: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    emulator = _emulator(args)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    wanted = [signal.SIGTERM]  # and SIGINT, unless inherited ignored (a background job's)
    wanted += [signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else []
    previous = {sig: signal.signal(sig, on_signal) for sig in wanted}
    try:
        try:
            emulator.start()
        except OSError as exc:
            raise ConfigError(f"emulator: cannot listen on {args.host}:{args.port}: {exc}") from exc
        print(
            f"emulator listening on {emulator.base_url} (dialect {args.dialect})",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
