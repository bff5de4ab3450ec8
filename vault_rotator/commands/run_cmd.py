"""``vault-rotator run [--config DIR] [--listen HOST:PORT]``: the daemon.

Rotates every key of every policy on its schedule, advances every rotation in flight (one list
pass per account per poll), and serves ``/healthz``, ``/readyz``, ``/metrics`` and the control
API on ``--listen`` (default ``127.0.0.1:9090``, or ``VAULT_ROTATOR_LISTEN``).
"""

from __future__ import annotations

import argparse
import os

import structlog

from vault_rotator.commands.common import add_config_argument
from vault_rotator.daemon.control import Control
from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.http import Listener, Ready
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.notify import Notifier
from vault_rotator.daemon.service import Service
from vault_rotator.errors import ConfigError
from vault_rotator.policy import load_policies, resolve_config_dir
from vault_rotator.runtime import Runtime, lease_ttl_from_env
from vault_rotator.secret import Secret
from vault_rotator.store.vault import VaultConnection, connect_from_env

log = structlog.get_logger(__name__)
DEFAULT_LISTEN = "127.0.0.1:9090"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=None,
        help=f"health, metrics, control API (default $VAULT_ROTATOR_LISTEN, else {DEFAULT_LISTEN})",
    )


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class VaultCallerAuth:
    """The control API's view of callers' tokens, through our Vault connection."""

    def __init__(self, conn: VaultConnection) -> None:
        self.conn = conn

    def accessor_of(self, token: Secret) -> str:
        return self.conn.lookup_token(token).accessor

    def capabilities_of(self, token: Secret, paths: list[str]) -> dict[str, frozenset[str]]:
        return self.conn.capabilities_of(token, paths)


def run(args: argparse.Namespace) -> int:
    config_dir = resolve_config_dir(args.config)
    policies = load_policies(config_dir)
    host, port = parse_listen(args.listen or os.environ.get("VAULT_ROTATOR_LISTEN", DEFAULT_LISTEN))
    stop = StopFlag()
    metrics = Metrics()
    conn = connect_from_env()
    conn.check()
    runtime = Runtime(conn, lease_ttl=lease_ttl_from_env(), sleep=stop.sleep)
    notifier = Notifier.from_env()
    daemon = Daemon(policies, runtime, notifier=notifier, metrics=metrics)
    service = Service(daemon, stop, config_dir, renew=conn.renew_or_relogin)
    listener = Listener(
        host,
        port,
        control=Control(daemon, VaultCallerAuth(conn)),
        ready=Ready(conn.check, service.ticking_problem),
        metrics=metrics.render,
    )
    service.install_signals()
    listener.start()
    keys = sum(1 for _ in policies)
    print(f"vault-rotator daemon on {listener.address}: {keys} keys", flush=True)
    log.info(
        "daemon started", listen=listener.address, keys=keys, accounts=len(policies.accounts())
    )
    try:
        service.run_until_stopped()
    finally:
        listener.stop()
        notifier.close(timeout=2.0)
        runtime.close()
    log.info("daemon stopped")
    return 0
