"""The chaos run behind ``make chaos``: the daemon SIGKILLed again and again under live traffic.

A real OpenBao (:func:`vault_server`), the ARouter emulator, and per key a real ``bao agent``
rendering the shipped template and the shipped consumer (``deploy/compose/consumer.py``)
calling every 0.1 s with whatever key the agent serves. ``vault-rotator run`` is a subprocess
(least-privilege rotator token, split listeners, ``--log-level debug``, webhooks for every event
to a local receiver). The run kills it ``kills`` times and restarts it each time: first once at
every step boundary (``VAULT_ROTATOR_FAULT_AT``, in order), then alternately at a boundary and
at a random moment (seeded). Each life, idle keys get a new rotation through the control API.
Then a last daemon settles every rotation, and the figures are computed
(:mod:`vault_rotator.testing.chaos_figures`). Every output is kept and searched for every key
value, the management key and every Vault token; the harness never prints one.

``python -m vault_rotator.testing.chaos [--kills N] [--seed S] [--keys K] [--provider-faults]``:
one line of figures; exit 1 when a must-be-zero figure is not 0. ``--provider-faults``: every
third life the emulator first gets the next of :data:`PROVIDER_FAULTS` (5xx bursts, a 429, a
lost create answer, slow and malformed list pages).
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import io
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hvac

from vault_rotator import cli
from vault_rotator.emulator import Emulator
from vault_rotator.engine.engine import BOUNDARIES
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.session import StateStore
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing import chaos_figures as figs
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer, free_port, vault_server

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "agent" / "arouter-api-key.ctmpl"
SHIPPED_PATH = "secret/data/arouter/dev/demo-app"
CONSUMER = REPO / "deploy" / "compose" / "consumer.py"
BOUNDARY_WAIT_S = 45.0
SETTLE_S = 180.0
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: b
  management_key: {{path: {env}-admin/management}}
  usage_lag: 1s
  poll_interval: 0.5s
vault: {{kv_mount: secret, state_prefix: {env}-rotator}}
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 120s
  drain_period: 2s
  drain_timeout: 120s
  disable_before_delete: 1s
keys:
{keys}
"""


PROVIDER_FAULTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("list", {"status": 503, "count": 3}),
    ("create", {"status": 429, "retry_after": 0.2, "count": 1}),
    ("create", {"drop_after_commit": True, "count": 1}),
    ("list", {"latency": 0.5, "count": 2}),
    ("list", {"garbage": "json", "count": 1}),
    ("delete", {"status": 502, "count": 2}),
    ("update", {"status": 500, "count": 1}),
)  # each spent after a few requests; a 429's Retry-After stays under a poll interval


def plan(kills: int, seed: int) -> list[tuple[str, float]]:
    """The kills, in order: ``(boundary, 0)`` or ``("", seconds)`` for a random moment."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible test plan, not a secret)
    steps: list[tuple[str, float]] = [(b, 0.0) for b in BOUNDARIES[:kills]]
    turn = 0
    while len(steps) < kills:
        if turn % 2:
            steps.append((BOUNDARIES[(turn // 2) % len(BOUNDARIES)], 0.0))
        else:
            steps.append(("", round(rng.uniform(0.3, 4.0), 2)))
        turn += 1
    return steps


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
    stalls: set[tuple[str, str]] = field(default_factory=set)
    # every outcome seen while polling (a record keeps only its last 20), by (key, rotation id)
    outcomes: dict[tuple[str, str], str] = field(default_factory=dict)
    lives: int = 0
    provider_faults: bool = False

    def daemon(self, fault: str) -> tuple[subprocess.Popen[bytes], int, int]:
        """Start ``vault-rotator run``; its output goes to a file of its own."""
        control, metrics = free_port(), free_port()
        self.lives += 1
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "VAULT_ADDR": self.vault.addr,
            "VAULT_TOKEN": self.rotator_token,
            "VAULT_ROTATOR_LEASE_TTL": "5s",
            "VAULT_ROTATOR_WEBHOOK_URL": self.webhook,
            "VAULT_ROTATOR_WEBHOOK_EVENTS": "stalled,failed,needs-attention,succeeded",
        }
        env.pop("VAULT_ROTATOR_FAULT_AT", None)
        if fault:
            env["VAULT_ROTATOR_FAULT_AT"] = fault
        log = (self.work / f"daemon-{self.lives:03d}.log").open("wb")
        with log:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "vault_rotator", "--log-level", "debug", "run",
                 "--config", str(self.work / "config"), "--listen", f"127.0.0.1:{control}",
                 "--metrics-listen", f"127.0.0.1:{metrics}"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return proc, control, metrics

    def observe(self) -> list[str]:
        """Note the stalls in flight; the names of idle keys."""
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

    def ask(self, http: httpx.Client, method: str, url: str) -> None:
        """One request to the daemon; its answer kept for the secret search."""
        headers = {"Authorization": f"Bearer {self.vault.token}"}
        with contextlib.suppress(httpx.HTTPError):
            answer = http.request(method, url, headers=headers)
            self.outputs.add(f"{answer.status_code} {answer.headers} {answer.text}")

    def visit(self, http: httpx.Client, control: int, metrics: int, rotate: bool) -> None:
        """Read the probes, metrics and status; start a rotation of every idle key."""
        for path in ("/readyz", "/metrics"):
            self.ask(http, "GET", f"http://127.0.0.1:{metrics}{path}")
        self.ask(http, "GET", f"http://127.0.0.1:{control}/v1/status")
        for name in self.observe() if rotate else ():
            self.ask(http, "POST", f"http://127.0.0.1:{control}/v1/rotate/{self.env}/{name}")


def _until(proc: subprocess.Popen[bytes], deadline: float, tick: Callable[[], None]) -> bool:
    """Call ``tick`` about every 0.5 s until ``proc`` exits (True) or the deadline (False)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return True
        tick()
        time.sleep(0.25)
    return proc.poll() is not None


def _ready(http: httpx.Client, proc: subprocess.Popen[bytes], metrics: int) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if http.get(f"http://127.0.0.1:{metrics}/healthz").status_code == 200:
                return True
        time.sleep(0.1)
    return False


def one_life(bench: Bench, http: httpx.Client, step: tuple[str, float], f: figs.Figures) -> str:
    """Start the daemon, kill it (or let it kill itself) as ``step`` says; the boundary hit."""
    if bench.provider_faults and f.kills % 3 == 2:  # every third life, the next fault
        route, fault = PROVIDER_FAULTS[f.provider_faults % len(PROVIDER_FAULTS)]
        bench.emulator.set_fault(route, **fault)
        f.provider_faults += 1
    proc, control, metrics = bench.daemon(step[0])
    try:
        return _drive(bench, http, (proc, control, metrics), step, f)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def _drive(
    bench: Bench,
    http: httpx.Client,
    daemon: tuple[subprocess.Popen[bytes], int, int],
    step: tuple[str, float],
    f: figs.Figures,
) -> str:
    fault, seconds = step
    proc, control, metrics = daemon
    if _ready(http, proc, metrics):
        bench.visit(http, control, metrics, rotate=True)
    last = [time.monotonic()]

    def tick() -> None:
        bench.observe()
        if time.monotonic() - last[0] > 2:
            last[0] = time.monotonic()
            bench.visit(http, control, metrics, rotate=True)

    hit = ""
    if fault:
        f.boundary_kills += 1
        if _until(proc, time.monotonic() + BOUNDARY_WAIT_S, tick):
            hit = fault if proc.returncode == -signal.SIGKILL else ""
            f.unexpected_exits += proc.returncode != -signal.SIGKILL
        else:
            f.notes.append(f"boundary {fault} not reached in {BOUNDARY_WAIT_S:.0f}s")
    else:
        f.random_kills += 1
        if _until(proc, time.monotonic() + seconds, tick):
            f.unexpected_exits += 1
    f.kills += 1
    return hit


def settle(bench: Bench, http: httpx.Client, f: figs.Figures) -> None:
    """A last daemon, unharmed, until no rotation is in flight; then SIGTERM."""
    proc, control, metrics = bench.daemon("")
    try:
        _settle(bench, http, (proc, control, metrics), f)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _settle(
    bench: Bench,
    http: httpx.Client,
    daemon: tuple[subprocess.Popen[bytes], int, int],
    f: figs.Figures,
) -> None:
    proc, control, metrics = daemon
    _ready(http, proc, metrics)
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline and len(bench.observe()) < len(bench.names):
        if proc.poll() is not None:
            f.unexpected_exits += 1
            break
        time.sleep(0.5)
    bench.visit(http, control, metrics, rotate=False)
    f.unsettled = len(bench.names) - len(bench.observe())
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            f.unexpected_exits += proc.wait(timeout=20) != 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            f.unexpected_exits += 1


def _policy(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["vault-policy", *args]) == 0
    return out.getvalue()


def _token(admin: hvac.Client, name: str, rules: str) -> str:
    admin.sys.create_or_update_policy(name, rules)
    return str(admin.auth.token.create(policies=[name], ttl="2h")["auth"]["client_token"])


@contextlib.contextmanager
def consumer(key_file: Path, base_url: str, out: Path) -> Iterator[None]:
    """The shipped consumer, calling every 0.1 s, its output to ``out``."""
    with out.open("wb") as sink:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, str(CONSUMER), "--key-file", str(key_file), "--base-url", base_url,
             "--interval", "0.1"],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _secret_versions(kv: Any, bench: Bench) -> tuple[list[figs.SecretVersion], list[str]]:
    """Every version of every consumer secret (no value kept), and the values they served."""
    versions, values = [], []
    for name in bench.names:
        current = kv.read(f"{bench.env}/{name}")
        for number in range(1, current.version + 1):
            read = kv.read(f"{bench.env}/{name}", version=number)
            if read is None:  # beyond the mount's max_versions after all: say so
                bench.outputs.notes.append(f"{name} version {number} no longer kept")
                continue
            data = read.data
            values.append(str(data.get("api_key", "")))
            versions.append(
                figs.SecretVersion(
                    name,
                    number,
                    data.get("key_id"),
                    data.get("rotation_id"),
                    bool(data.get("aborted")),
                )
            )
    return versions, values


def gather(bench: Bench, kv: Any, f: figs.Figures) -> None:
    """Compute the figures from the settled world and everything that was said."""
    keys = bench.emulator.all_keys()
    versions, values = _secret_versions(kv, bench)
    served = [str(kv.read(f"{bench.env}/{name}").data.get("key_id")) for name in bench.names]
    f.orphans, f.lost = figs.orphans_and_lost(keys, served)
    bench.observe()
    completed = set(bench.outcomes)
    f.rotations = sum(1 for o in bench.outcomes.values() if o.startswith("succeeded"))
    f.false_stalls = len(bench.stalls & completed)
    repeated = figs.repeated_work(
        keys, bench.emulator.mutation_log(), versions, [rid for _, rid in completed]
    )
    f.repeated = len(repeated)
    f.notes += bench.outputs.notes
    f.notes += repeated[:5]
    texts = [*bench.outputs.texts]
    texts += [p.read_text(errors="replace") for p in sorted(bench.work.glob("*.log"))]
    texts += [p.read_text(errors="replace") for p in sorted(bench.work.glob("consumer-*.out"))]
    for lines in (t.splitlines() for t in texts if "call 1: HTTP" in t):
        ok, failed = figs.consumer_calls(lines)
        f.consumer_ok += ok
        f.consumer_failed += failed
    hits = figs.secret_hits(
        texts, [*values, *bench.tokens], lambda v: bench.emulator.key_id_for_value(v) is not None
    )
    f.secret_hits = len(hits)
    f.searched_texts, f.searched_bytes = len(texts), sum(len(t.encode()) for t in texts)
    f.notes += hits[:5]


def _status_cli(bench: Bench) -> None:
    """``status --json`` as an operator would run it; its output kept for the search."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **bench.vault.env()}
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "vault_rotator", "--log-level", "debug", "status", "--json",
         "--config", str(bench.work / "config")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    bench.outputs.add(done.stdout + done.stderr)


def _setup(vault: VaultServer, emulator: Emulator, work: Path, keys: int) -> tuple[Any, Bench]:
    env = f"chaos{uuid.uuid4().hex[:6]}"
    management = "lr_mgmt_" + secrets.token_hex(16)
    emulator.add_management_key(management)
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{env}-admin/management", {"key": management}, cas=0)
    names = tuple(f"k{i}" for i in range(keys))
    for name in names:
        key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        kv.write(f"{env}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
    admin = hvac.Client(url=vault.addr, token=vault.token)
    for name in names:  # every version kept for the count (KV v2 keeps 10 by default)
        admin.secrets.kv.v2.update_metadata(
            f"{env}/{name}", max_versions=1000, mount_point="secret"
        )
    config = work / "config"
    config.mkdir()
    lines = [
        f"  - {{name: {n}, secret_path: {env}/{n}, allowed_providers: [openai]}}" for n in names
    ]
    (config / "chaos.yaml").write_text(
        CONFIG.format(env=env, base_url=emulator.base_url, keys="\n".join(lines))
    )
    rotator = _token(admin, f"{env}-rotator", _policy(["rotator", "--config", str(config)]))
    bench = Bench(
        vault, emulator, work, env, names, rotator, "", Outputs(),
        StateStore(kv, f"{env}-rotator"), [management, vault.token, rotator],
    )  # fmt: skip
    return (admin, config), bench


def run(
    kills: int,
    seed: int,
    keys: int = 3,
    vault: VaultServer | None = None,
    *,
    provider_faults: bool = False,
) -> figs.Figures:
    """One chaos run (on ``vault``, else on one of its own); its figures. ``provider_faults``:
    every third life, the next of :data:`PROVIDER_FAULTS` is set on the emulator first."""
    f = figs.Figures(seed=seed)
    started = time.monotonic()
    hit: set[str] = set()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vault-rotator-chaos-")))
        vault = vault or stack.enter_context(vault_server())
        emulator = stack.enter_context(Emulator(dialect="b", seed=seed))
        (admin, config), bench = _setup(vault, emulator, work, keys)
        bench.webhook = stack.enter_context(webhook_receiver(bench.outputs))
        bench.provider_faults = provider_faults
        template = TEMPLATE.read_text()
        with contextlib.ExitStack() as traffic:
            for name in bench.names:
                rules = _policy(["consumer", f"{bench.env}/{name}", "--config", str(config)])
                token = _token(admin, f"{bench.env}-{name}", rules)
                bench.tokens.append(token)
                agent = traffic.enter_context(
                    vault_agent(vault.addr, token, mount="secret", path=f"{bench.env}/{name}",
                                template=template.replace(SHIPPED_PATH,
                                                          f"secret/data/{bench.env}/{name}"))
                )  # fmt: skip
                out = work / f"consumer-{name}.out"
                traffic.enter_context(consumer(agent.destination, emulator.base_url, out))
            with httpx.Client(timeout=10) as http:
                for step in plan(kills, seed):
                    hit.add(one_life(bench, http, step, f))
                settle(bench, http, f)
            time.sleep(2.0)  # the consumers go on calling with the final keys
        _status_cli(bench)
        f.boundaries_missed = len(set(BOUNDARIES[:kills]) - hit)
        gather(bench, bench.store.kv, f)
    f.seconds = time.monotonic() - started
    return f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=int(os.environ.get("CHAOS_KILLS", "100")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--provider-faults", action="store_true")
    args = parser.parse_args(argv)
    figures = run(args.kills, args.seed, args.keys, provider_faults=args.provider_faults)
    for note in figures.notes:
        print(f"note: {note}", file=sys.stderr)
    print(figures.line(), flush=True)
    return 1 if figures.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
