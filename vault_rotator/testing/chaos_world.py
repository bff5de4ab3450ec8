"""The chaos run's world: what the harness acts on and everything the system said.

:class:`Bench` holds Vault, the emulator, the key names and tokens, and what was seen while
polling (stalls, outcomes, the daemon's lives); :meth:`Bench.daemon` starts
``vault-rotator run`` as a subprocess with its output in a file of its own, and every answer of
its APIs and every webhook body is kept (:class:`Outputs`) for the secret search. The world is
set up by :mod:`.chaos_setup`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vault_rotator.emulator import Emulator
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.session import StateStore
from vault_rotator.testing.vault_server import VaultServer, free_port

REPO = Path(__file__).resolve().parents[2]
LEASE_TTL = "5s"  # short, so a killed daemon's successor takes over soon


@dataclass
class Outputs:
    """Every text the system under test produced, to be searched for secrets."""

    texts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, text: str) -> None:
        with self.lock:
            self.texts.append(text)


@contextlib.contextmanager
def webhook_receiver(outputs: Outputs) -> Iterator[str]:
    """A loopback HTTP server keeping every webhook body; yields its URL."""

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            outputs.add(self.rfile.read(length).decode(errors="replace"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def log_events(path: Path) -> list[dict[str, Any]]:
    """A daemon's JSON log, one dict per line (other lines skipped)."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


@dataclass
class Daemon:
    """One life of ``vault-rotator run``: its process, its two ports, its log file."""

    proc: subprocess.Popen[bytes]
    control: int
    metrics: int
    log: Path

    def url(self, path: str) -> str:
        port = self.metrics if path in ("/readyz", "/healthz", "/metrics") else self.control
        return f"http://127.0.0.1:{port}{path}"

    def events(self) -> list[dict[str, Any]]:
        """Its log so far, one dict per JSON line."""
        return log_events(self.log)

    def reap(self) -> None:
        """SIGKILL it if it still runs; always waited for."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@dataclass
class Bench:
    """The world a run acts on (Vault, emulator, config, tokens) and what it saw."""

    vault: VaultServer
    emulator: Emulator
    work: Path
    env: str
    names: tuple[str, ...]
    rotator_token: str
    webhook: str
    outputs: Outputs
    store: StateStore
    tokens: list[str]
    admin: Any = None  # an hvac client with the root token
    stalls: set[tuple[str, str]] = field(default_factory=set)
    # every outcome seen while polling (a record keeps only its last 20), by (key, rotation id)
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict)
    resumed: set[tuple[str, str]] = field(default_factory=set)  # stalls the harness resumed
    foreign: dict[str, str] = field(default_factory=dict)  # foreign key id -> its name
    lives: list[tuple[float, float]] = field(default_factory=list)  # each life's (start, end)

    def daemon(self, fault: str = "", env: Mapping[str, str] | None = None) -> Daemon:
        """Start ``vault-rotator run``; its output goes to a file of its own."""
        control, metrics = free_port(), free_port()
        environ = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "VAULT_ADDR": self.vault.addr,
            "VAULT_TOKEN": self.rotator_token,
            "VAULT_ROTATOR_LEASE_TTL": LEASE_TTL,
            "VAULT_ROTATOR_WEBHOOK_URL": self.webhook,
            "VAULT_ROTATOR_WEBHOOK_EVENTS": "stalled,failed,needs-attention,succeeded",
            **(env or {}),
        }
        environ.pop("VAULT_ROTATOR_FAULT_AT", None)
        if fault:
            environ["VAULT_ROTATOR_FAULT_AT"] = fault
        environ = {k: v for k, v in environ.items() if v}  # an empty override unsets
        log = self.work / f"daemon-{len(self.lives) + 1:03d}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "vault_rotator", "--log-level", "debug", "run",
                 "--config", str(self.work / "config"), "--listen", f"127.0.0.1:{control}",
                 "--metrics-listen", f"127.0.0.1:{metrics}"],
                cwd=REPO, env=environ, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.lives.append((time.time(), float("inf")))
        return Daemon(proc, control, metrics, log)

    def ended(self) -> None:
        """The current life is over (for the back-off figures: requests are judged per life)."""
        start, _ = self.lives[-1]
        self.lives[-1] = (start, time.time())

    def observe(self) -> list[str]:
        """Note the stalls in flight and every outcome; the names of idle keys."""
        idle = []
        for name in self.names:
            record = self.store.read(self.env, name)[0]
            rotation = record.rotation
            if rotation is not None and rotation.stalled is not None:
                self.stalls.add((name, rotation.id))
            self.outcomes.update({(name, o.rotation_id): o.outcome for o in record.outcomes})
            if record.phase == Phase.IDLE:
                idle.append(name)
        return idle

    def ask(self, http: httpx.Client, method: str, url: str) -> httpx.Response | None:
        """One request to the daemon; its answer kept for the secret search."""
        headers = {"Authorization": f"Bearer {self.vault.token}"}
        with contextlib.suppress(httpx.HTTPError):
            answer = http.request(method, url, headers=headers)
            self.outputs.add(f"{answer.status_code} {answer.headers} {answer.text}")
            return answer
        return None

    def visit(self, http: httpx.Client, daemon: Daemon, *, rotate: bool) -> None:
        """Read the probes, metrics and status; start a rotation of every idle key."""
        for path in ("/readyz", "/metrics", "/v1/status"):
            self.ask(http, "GET", daemon.url(path))
        for name in self.observe() if rotate else ():
            self.ask(http, "POST", daemon.url(f"/v1/rotate/{self.env}/{name}"))


def ready(http: httpx.Client, daemon: Daemon, timeout: float = 20.0) -> bool:
    """Wait until the daemon's ``/healthz`` answers 200 (False if it died or took too long)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if http.get(daemon.url("/healthz")).status_code == 200:
                return True
        time.sleep(0.1)
    return False
