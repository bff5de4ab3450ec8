"""``vault-rotator run [--config DIR] [--listen HOST:PORT] [--metrics-listen HOST:PORT]``.

The daemon: rotates every key of every policy on its schedule, advances every rotation in flight
(one list pass per account per poll), and serves ``/healthz``, ``/readyz``, ``/metrics`` and the
control API on ``--listen`` (default ``127.0.0.1:9090``, or ``VAULT_ROTATOR_LISTEN``). With
``--metrics-listen`` (or ``VAULT_ROTATOR_METRICS_LISTEN``) the probes and metrics move to that
listener (plain HTTP, for kubelet and Prometheus) and ``--listen`` serves the control API alone.
``--tls-cert-file``/``--tls-key-file`` (or ``VAULT_ROTATOR_TLS_CERT_FILE``/``_KEY_FILE``) make the
control listener HTTPS; SIGHUP loads the files again.

A Vault that is sealed or unreachable at start is waited for (backoff up to 30 s, /healthz
answering and /readyz saying why) instead of exiting: in compose and Kubernetes the daemon often
starts before Vault. A refused token or a bad setting still exits 1 with one line.
"""

from __future__ import annotations

import argparse
import os

import structlog

from vault_rotator.commands.common import add_config_argument
from vault_rotator.daemon.control import Control
from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.http import Listener, Ready, TlsFiles
from vault_rotator.daemon.memory import HeapTrimmer, limit_arenas, tune_gc
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.notify import Notifier
from vault_rotator.daemon.service import Service
from vault_rotator.errors import ConfigError, StoreUnavailableError
from vault_rotator.files import why_not_regular
from vault_rotator.policy import load_policies, resolve_config_dir
from vault_rotator.runtime import Runtime, lease_ttl_from_env
from vault_rotator.secret import Secret
from vault_rotator.store.vault import VaultConnection, connect_from_env

log = structlog.get_logger(__name__)
DEFAULT_LISTEN = "127.0.0.1:9090"
LISTEN_ENV = "VAULT_ROTATOR_LISTEN"
METRICS_LISTEN_ENV = "VAULT_ROTATOR_METRICS_LISTEN"
TLS_CERT_ENV = "VAULT_ROTATOR_TLS_CERT_FILE"
TLS_KEY_ENV = "VAULT_ROTATOR_TLS_KEY_FILE"
VAULT_WAIT_MAX_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=None,
        help=f"control API, and health and metrics unless --metrics-listen (default "
        f"${LISTEN_ENV}, else {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default=None,
        help=f"serve /healthz, /readyz and /metrics here, plain HTTP (or ${METRICS_LISTEN_ENV})",
    )
    parser.add_argument(
        "--tls-cert-file",
        metavar="FILE",
        default=None,
        help=f"PEM certificate chain: the control listener speaks HTTPS (or ${TLS_CERT_ENV})",
    )
    parser.add_argument(
        "--tls-key-file",
        metavar="FILE",
        default=None,
        help=f"PEM private key of --tls-cert-file (or ${TLS_KEY_ENV})",
    )


def parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} {text[:80]!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The control listener's certificate and key, both or neither, each a regular file
    (checked before anything else starts: a FIFO would hang the start)."""
    cert = _tls_file(args.tls_cert_file, "--tls-cert-file", TLS_CERT_ENV)
    key = _tls_file(args.tls_key_file, "--tls-key-file", TLS_KEY_ENV)
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert-file and --tls-key-file go together")
    return None if cert is None or key is None else TlsFiles(cert, key)


def _tls_file(flag_value: str | None, flag: str, env: str) -> str | None:
    path = flag_value or os.environ.get(env) or None
    if path is not None and (why := why_not_regular(path)) is not None:
        raise ConfigError(f"{flag if flag_value else env} {path[:200]}: {why}")
    return path


def wait_for_vault(conn: VaultConnection, stop: StopFlag) -> bool:
    """Until Vault answers: True; False if told to stop first. Other errors are raised."""
    delay = 1.0
    while True:
        try:
            conn.check()
        except StoreUnavailableError as exc:
            log.warning("waiting for Vault", error=str(exc), retry_in_s=delay)
            if stop.event.wait(delay):
                return False
            delay = min(delay * 2, VAULT_WAIT_MAX_S)
            continue
        return True


class VaultCallerAuth:
    """The control API's view of callers' tokens, through our Vault connection."""

    def __init__(self, conn: VaultConnection) -> None:
        self.conn = conn

    def accessor_of(self, token: Secret) -> str:
        return self.conn.lookup_token(token).accessor

    def capabilities_of(self, token: Secret, paths: list[str]) -> dict[str, frozenset[str]]:
        return self.conn.capabilities_of(token, paths)


def run(args: argparse.Namespace) -> int:
    limit_arenas()  # before the threads start (daemon/memory.py)
    tune_gc()
    config_dir = resolve_config_dir(args.config)
    policies = load_policies(config_dir)
    host, port = parse_listen(args.listen or os.environ.get(LISTEN_ENV, DEFAULT_LISTEN))
    metrics_text = args.metrics_listen or os.environ.get(METRICS_LISTEN_ENV)
    metrics_at = parse_listen(metrics_text, "--metrics-listen") if metrics_text else None
    if metrics_at == (host, port):
        raise ConfigError("--listen and --metrics-listen name the same address: give two")
    tls = tls_files(args)
    stop = StopFlag()
    metrics = Metrics()
    conn = connect_from_env()
    runtime = Runtime(conn, lease_ttl=lease_ttl_from_env(), sleep=stop.sleep)
    notifier = Notifier.from_env()
    daemon = Daemon(policies, runtime, notifier=notifier, metrics=metrics)
    daemon.after_tick = HeapTrimmer()  # free heap memory handed back (daemon/memory.py)
    service = Service(daemon, stop, config_dir, renew=conn.renew_or_relogin)
    ready = Ready(conn.check)
    control = Control(daemon, VaultCallerAuth(conn))
    if metrics_at is None:
        both = Listener(host, port, control=control, ready=ready, metrics=metrics.render, tls=tls)
        listeners = [both]
    else:
        listeners = [
            Listener(host, port, control=control, tls=tls),
            Listener(*metrics_at, ready=ready, metrics=metrics.render),
        ]
    service.on_reload.append(listeners[0].reload_tls)
    service.install_signals()
    for listener in listeners:
        listener.start()
    try:
        if not wait_for_vault(conn, stop):
            return 0
        keys = sum(1 for _ in policies)
        where = " and ".join(listener.address for listener in listeners)
        print(f"vault-rotator daemon on {where}: {keys} keys", flush=True)
        log.info(
            "daemon started",
            listen=listeners[0].address,
            metrics_listen=listeners[-1].address if metrics_at else None,
            keys=keys,
            accounts=len(policies.accounts()),
        )
        service.run_until_stopped()
    finally:
        for listener in listeners:
            listener.stop()
        notifier.close(timeout=2.0)
        daemon.close()
        runtime.close()
    log.info("daemon stopped")
    return 0
