"""A real single-node OpenBao with raft storage, for tests that stop, restart and seal Vault.

:func:`raft_server` writes a server config (``storage "raft"`` with its data directory under
``work``, a TCP listener on a free loopback port), starts ``bao server`` (not ``-dev``),
initialises it with ``bao operator init -key-shares=1 -key-threshold=1``, unseals it, waits
until it is active, and mounts KV v2 at ``secret/`` (as the dev server does). The data lives on
disk, so :meth:`RaftVault.restart` brings back the same secrets, tokens and policies on the same
address (sealed, as a real restart is: :meth:`RaftVault.unseal`).

The root token and the unseal key stay in this process: never printed, never in a ``repr``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vault_rotator.testing.vault_server import (
    STARTUP_TIMEOUT_S,
    VaultServer,
    bao_binary,
    free_port,
    stop_process,
    wait_healthy,
)

CONFIG = """\
storage "raft" {{
  path    = {data}
  node_id = "chaos-1"
}}
listener "tcp" {{
  address     = "127.0.0.1:{port}"
  tls_disable = true
}}
api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster}"
disable_mlock = true
ui            = false
"""


@dataclass(repr=False)
class RaftVault(VaultServer):
    """A raft-backed ``bao server`` this process started; stop, restart, seal and unseal it."""

    work: Path = field(default_factory=Path)
    unseal_key: str = ""
    restarts: int = 0

    def __repr__(self) -> str:  # never show the token or the unseal key
        return f"RaftVault(addr={self.addr!r}, restarts={self.restarts})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server on its address and data directory (it comes up sealed)."""
        if self.running:
            raise RuntimeError("the raft server is already running")
        log = (self.work / "bao.log").open("ab")
        with log:
            self.process = subprocess.Popen(  # noqa: S603
                [bao_binary(), "server", f"-config={self.work / 'server.hcl'}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_bao_env(self.addr, self.work),
            )
        _wait_answering(self.addr, self.process)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (a clean shutdown), or SIGKILL when ``kill``."""
        if self.process is None:
            return
        if kill and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        stop_process(self.process)
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop, then start again on the same data: it comes back sealed."""
        self.stop(kill=kill)
        self.start()
        self.restarts += 1

    def seal(self) -> None:
        self.call("PUT", "seal")

    def unseal(self) -> None:
        """Unseal with the key ``init`` gave, then wait until active and healthy."""
        self.call("PUT", "unseal", {"key": self.unseal_key})
        wait_healthy(self.addr)

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, prefix: str = "sys/"
    ) -> Any:
        """One request with the root token to ``/v1/<prefix><path>``; its JSON answer."""
        return _request(self.addr, method, f"/v1/{prefix}{path}", self.token, body)


def _bao_env(addr: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    return {**env, "HOME": str(home), "BAO_ADDR": addr, "VAULT_ADDR": addr}


def _request(
    addr: str, method: str, path: str, token: str = "", body: dict[str, Any] | None = None
) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{addr}{path}", data=data, method=method)  # noqa: S310
    if token:
        request.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        text = answer.read()
    return json.loads(text) if text else None


def _wait_answering(addr: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``/v1/sys/health`` answers at all (sealed or not initialised is an answer)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bao server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2):  # noqa: S310
                return
        except urllib.error.HTTPError:
            return  # 501 not initialised, 503 sealed: it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"bao server at {addr} did not answer in {STARTUP_TIMEOUT_S:.0f}s")


def _init(vault: RaftVault) -> None:
    """``bao operator init`` with one key share; keep the root token and the unseal key."""
    done = subprocess.run(  # noqa: S603
        [bao_binary(), "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json"],
        env=_bao_env(vault.addr, vault.work),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bao operator init failed (exit {done.returncode})")
    answer = json.loads(done.stdout)
    vault.unseal_key = answer["unseal_keys_b64"][0]
    vault.token = answer["root_token"]


@contextlib.contextmanager
def raft_server(work: Path) -> Iterator[RaftVault]:
    """A raft ``bao server`` with its data under ``work``, initialised, unsealed, KV v2 at
    ``secret/``; stopped (and reaped) on exit."""
    work.mkdir(parents=True, exist_ok=True)
    port, cluster = free_port(), free_port()
    data = work / "raft"
    data.mkdir(exist_ok=True)
    (work / "server.hcl").write_text(
        CONFIG.format(data=json.dumps(str(data)), port=port, cluster=cluster)
    )
    vault = RaftVault(f"http://127.0.0.1:{port}", "", "bao-raft", work=work)
    try:
        vault.start()
        _init(vault)
        vault.unseal()
        _request(vault.addr, "POST", "/v1/sys/mounts/secret", vault.token,
                 {"type": "kv", "options": {"version": "2"}})  # fmt: skip
        yield vault
    finally:
        vault.stop()
