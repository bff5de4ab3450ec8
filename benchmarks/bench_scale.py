"""Scale: a scheduled mass rotation of 1,000 and 10,000 keys, the daemon idle, and the
environment-wide emergency of the same keys.

For each size (``BENCH_KEYS``, default ``1000,10000``; e.g. ``BENCH_KEYS=1000 make bench``), in a
process of its own: a real OpenBao dev server, the emulator in its own process, N keys in
environment files of 1,000 keys (the loader's limit: 10,000 keys are 10 environments) of one
account, each with a consumer that switches to the new key as soon as it is published
(:mod:`benchmarks.scale_world`). Every key is due at once (never rotated); the daemon
(``vault-rotator run``'s Daemon and scheduler, in this process) rotates them all with 1 s polls,
usage_lag and drain_period 0 s, max_concurrent N + 1.

Figures: wall time and rotations/s of the mass rotation; Vault reads and writes per rotation
(the start-up read of every record reported apart); provider requests per rotation by route;
list passes per poll; peak RSS; the daemon's CPU while idle for a minute at 1 s polls and at
the default 30 s. In the same run: the manual loop (the same clients, one key at a time:
create, write to Vault, verify, delete) and OpenBao's KV write rate (16 threads), each printed
as a ratio. Then the environment-wide emergency of every key, one request per environment,
all opened at once through the daemon's control API (``POST /v1/rotate/{env}``), while another
environment of the account falls due and ``GET /v1/status`` is polled every second: see
:mod:`benchmarks.scale_emergency` for what is measured and how, and
:mod:`benchmarks.emergency_figures` for its targets and which ETA samples count. Exits 1 when a
target is missed (see TARGETS and ``emergency_figures.TARGETS``), or when a figure could not be
measured.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import emergency_figures
from benchmarks import scale_world as w
from benchmarks.scale_emergency import EmergencyPhase
from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.memory import HeapTrimmer, limit_arenas, tune_gc
from vault_rotator.daemon.metrics import Metrics, route_template
from vault_rotator.daemon.service import Service
from vault_rotator.engine.state import Outcome, Rotation, Stall
from vault_rotator.logs import configure
from vault_rotator.policy import KeyPolicy, load_policies
from vault_rotator.ports.provider import Dialect, KeySpec, Permissions
from vault_rotator.provider.arouter import ARouterClient
from vault_rotator.secret import Secret
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer, bao_dev_server

SIZES = (1000, 10_000)
IDLE_S = 60.0
MANUAL_KEYS = 500
WRITE_RATE_WRITES = 4000
# Printed, not targets (issue 19): the scheduled mass rotation's rotations/s as a ratio to the
# manual loop's and to the write floor. Two cores shared by OpenBao, the daemon and the emulator
# are the limit (docs/scale.md); the manual loop makes a third of the requests per key.
TARGETS = {
    "writes_per_rotation": 9.0,  # per rotation that needed one create
    "mutations_per_rotation": 2.0,  # create and delete, per rotation that needed one create
    "writes_per_extra_attempt": 6.0,  # a create whose answer was lost: a new attempt, a sweep
    "idle_list_calls": 0,
    "peak_rss_mb_10k": 200.0,
    "idle_cpu_default": 0.01,
    "idle_cpu_1s": 0.02,
}


class Finished:
    """Counts finished rotations (an engine listener)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.last_at = 0.0

    def finished(self, _policy: KeyPolicy, outcome: Outcome, _rotation: Rotation) -> None:
        with self.lock:
            self.outcomes[outcome.outcome] += 1
            self.last_at = time.perf_counter()

    def stalled(self, policy: KeyPolicy, _rotation: Rotation, stall: Stall) -> None:
        print(f"  stalled: {policy.ref} {stall.reason}", file=sys.stderr)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def manual_loop(vault: VaultServer, url: str, count: int) -> float:
    """Rotations/s of the manual loop: the same clients, one key at a time."""
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    client = ARouterClient(url, Secret(w.MANAGEMENT_KEY), Dialect.C)
    perms = Permissions(allowed_providers=("openai",))
    tag = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    for index in range(count):
        created = client.create_key(KeySpec(f"manual-{tag}-{index}", perms))
        kv.write(f"manual-{tag}/{index}", {"api_key": created.value.reveal()}, cas=0)
        client.verify_key(created.value)
        client.delete_key(created.record.id)
    rate = count / (time.perf_counter() - started)
    client.close()
    conn.close()
    return rate


def write_rate(vault: VaultServer, writes: int, threads: int = 16) -> float:
    """OpenBao's KV v2 write rate (check-and-set writes of new paths, ``threads`` at once)."""
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    tag = uuid.uuid4().hex[:6]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: kv.write(f"rate-{tag}/{i}", {"v": i}, cas=0), range(writes)))
    rate = writes / (time.perf_counter() - started)
    conn.close()
    return rate


class Bench:
    """One size's run: the world, the daemon, and the figures."""

    def __init__(self, vault: VaultServer, emu: w.Emulator, keys: int, config: Path) -> None:
        self.vault, self.emu, self.keys, self.config = vault, emu, keys, config
        self.figures: dict[str, Any] = {"keys": keys}
        self.routes: Counter[str] = Counter()
        self.ticks = 0
        self.tick_times: list[float] = []
        self.tick_lock = threading.Lock()

    def run(self) -> dict[str, Any]:
        f = self.figures
        f["manual_per_s"] = manual_loop(self.vault, self.emu.url, MANUAL_KEYS)
        f["vault_writes_per_s"] = write_rate(self.vault, WRITE_RATE_WRITES)
        started = time.perf_counter()
        fleet = w.seed_fleet(self.vault, self.emu, self.keys, self.config, poll="1s")
        f["seed_s"] = time.perf_counter() - started
        with w.consumers(self.emu.url) as consumers:
            conn = VaultConnection(self.vault.addr, self.vault.token)
            runtime = w.SwitchingRuntime(conn, consumers.switch)
            runtime.on_provider_request = self._provider_request
            daemon = Daemon(load_policies(self.config), runtime, metrics=Metrics())
            daemon.after_tick = HeapTrimmer()  # as `vault-rotator run` does
            # The account lease (HA: a read and a write per account and half lease TTL,
            # whatever the key count) on a connection of its own: the per-rotation counts
            # are the keys' (tests/test_scale.py counts it the same way).
            leases = VaultConnection(self.vault.addr, self.vault.token)
            daemon.replicas.kv = leases.kv
            self._count_ticks(daemon)
            try:
                self._mass_rotation(daemon, conn)
                self._idle(daemon, conn, fleet)
                f["emergency"] = EmergencyPhase(
                    vault=self.vault,
                    emu=self.emu,
                    fleet=fleet,
                    daemon=daemon,
                    runtime=runtime,
                    routes=self.routes,
                    figures=f,
                ).run()
            finally:
                daemon.close()
                runtime.close()
                f["account_lease_writes"] = leases.writes()
                leases.close()
            f["consumers"] = consumers.finish()
        f["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return f

    def _provider_request(self, method: str, route: str, status: int | str) -> None:
        self.routes[f"{method} {route_template(route)} {status}"] += 1

    def _count_ticks(self, daemon: Daemon) -> None:
        real = daemon.tick

        def tick(*args: Any) -> Any:
            with self.tick_lock:
                self.ticks += 1
            started = time.perf_counter()
            try:
                return real(*args)
            finally:
                self.tick_times.append(time.perf_counter() - started)

        daemon.tick = tick  # type: ignore[method-assign]

    def _mass_rotation(self, daemon: Daemon, conn: VaultConnection) -> None:
        f = self.figures
        done = Finished()
        daemon.engine.listeners.append(done)
        ((account, keys),) = daemon.accounts().items()
        reads, cpu = conn.reads(), cpu_seconds()
        book = daemon.book(account, keys)
        started = time.perf_counter()
        daemon.refresher.refresh(book, 1.0)  # the start-up read of every record and secret
        f["startup_s"] = time.perf_counter() - started
        f["startup_reads"] = conn.reads() - reads
        reads, writes, lists = conn.reads(), conn.writes(), daemon.list_passes
        mutated = self.emu.mutation_counts()  # the manual loop's
        self.routes.clear()
        self.ticks = 0
        self.tick_times.clear()
        service = Service(daemon, StopFlag(), self.config)
        started, cpu = time.perf_counter(), cpu_seconds()
        service.schedule()
        service.scheduler.start()
        try:
            finished = w.wait_for(lambda: done.total >= self.keys, timeout=3600, step=0.2)
        finally:
            service.stop.set()
            service.shutdown()
        wall = (done.last_at or time.perf_counter()) - started
        f["rotated"] = dict(done.outcomes)
        f["finished"] = finished
        f["mass_wall_s"] = wall
        f["mass_cpu_s"] = cpu_seconds() - cpu
        f["rotations_per_s"] = done.total / wall if wall > 0 else 0.0
        f["vault_writes_per_rotation"] = (conn.writes() - writes) / max(1, done.total)
        f["vault_reads_per_rotation"] = (conn.reads() - reads) / max(1, done.total)
        f["polls"] = self.ticks
        f["poll_seconds"] = [round(t, 1) for t in self.tick_times]
        f["list_passes"] = daemon.list_passes - lists
        f["provider_per_rotation"] = {
            route: count / max(1, done.total) for route, count in sorted(self.routes.items())
        }
        mutations = self.emu.mutation_counts() - mutated
        f["mutations_per_rotation"] = sum(mutations.values()) / max(1, done.total)
        # A create whose answer was lost (a timeout, a dropped connection) is never retried
        # blindly: a new attempt gets a new name and the sweep deletes the lost key. Each such
        # attempt costs a create, a delete and a few writes of its own: counted apart.
        f["extra_attempts"] = mutations["create"] - done.total
        f["total_writes"] = conn.writes() - writes
        f["mutations"] = dict(mutations)

    def _idle(self, daemon: Daemon, conn: VaultConnection, fleet: w.Fleet) -> None:
        for poll, label in (("1s", "idle_1s"), ("30s", "idle_default")):
            self._idle_at(daemon, conn, fleet, poll, label)

    def _idle_at(
        self, daemon: Daemon, conn: VaultConnection, fleet: w.Fleet, poll: str, label: str
    ) -> None:
        """The daemon's CPU, Vault and provider calls over IDLE_S at ``poll``, all keys idle."""
        f = self.figures
        w.write_config(fleet, self.emu.url, poll=poll, keys=self.keys)
        service = Service(daemon, StopFlag(), self.config)
        assert service.reload()
        ((account, _keys),) = daemon.accounts().items()
        service.scheduler.start()
        try:  # the first tick after a reload reads every record again: not idle yet
            w.wait_for(lambda: (b := daemon.books.get(account)) is not None and b.loaded, 600)
            time.sleep(1.0)
            self.routes.clear()
            writes, reads, cpu, started = conn.writes(), conn.reads(), cpu_seconds(), time.time()
            time.sleep(IDLE_S)
            elapsed = time.time() - started
            f[f"{label}_cpu"] = (cpu_seconds() - cpu) / elapsed
            f[f"{label}_writes"] = conn.writes() - writes
            f[f"{label}_reads_per_s"] = (conn.reads() - reads) / elapsed
            lists = (n for route, n in self.routes.items() if route.startswith("GET /v1/keys "))
            f[f"{label}_list_calls"] = sum(lists)
            f[f"{label}_provider_calls"] = sum(self.routes.values())
        finally:
            service.stop.set()
            service.shutdown()


def run_size(keys: int) -> dict[str, Any]:
    limit_arenas()  # as `vault-rotator run` does at start
    tune_gc()
    configure("warning")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: ... running" per poll
    with bao_dev_server() as vault, w.emulator() as emu, tempfile.TemporaryDirectory() as tmp:
        return Bench(vault, emu, keys, Path(tmp)).run()


def check(results: list[dict[str, Any]]) -> list[str]:
    """The targets each size missed, as lines."""
    missed: list[str] = []
    for r in results:
        n = r["keys"]
        if not r.get("finished"):
            missed.append(f"{n}: not every rotation finished ({r.get('rotated')})")
        extra, rotations = r["extra_attempts"], sum(r["rotated"].values())
        allowed = TARGETS["writes_per_rotation"] * rotations
        allowed += TARGETS["writes_per_extra_attempt"] * extra
        if r["total_writes"] > allowed:
            missed.append(f"{n}: {r['vault_writes_per_rotation']:.3f} Vault writes per rotation")
        mutations = sum(r["mutations"].values())
        if mutations != TARGETS["mutations_per_rotation"] * (rotations + extra):
            missed.append(f"{n}: {r['mutations_per_rotation']:.3f} provider mutations per rotation")
        for label in ("idle_1s", "idle_default"):
            if r[f"{label}_list_calls"] != TARGETS["idle_list_calls"]:
                missed.append(f"{n}: {r[f'{label}_list_calls']} list calls while idle ({label})")
        if r["idle_default_cpu"] >= TARGETS["idle_cpu_default"]:
            missed.append(f"{n}: idle CPU {r['idle_default_cpu']:.2%} at the default poll")
        if r["idle_1s_cpu"] >= TARGETS["idle_cpu_1s"]:
            missed.append(f"{n}: idle CPU {r['idle_1s_cpu']:.2%} at 1 s polls")
        if n >= 10_000 and r["peak_rss_mb"] > TARGETS["peak_rss_mb_10k"]:
            missed.append(f"{n}: peak RSS {r['peak_rss_mb']:.0f} MB")
        missed += emergency_figures.check(r)
    return missed


def show(r: dict[str, Any]) -> None:
    n, files = r["keys"], (r["keys"] + w.KEYS_PER_FILE - 1) // w.KEYS_PER_FILE
    vs_manual = r["rotations_per_s"] / r["manual_per_s"]
    rate = r["vault_writes_per_rotation"] * r["rotations_per_s"]
    routes = ", ".join(f"{k}: {v:.2f}" for k, v in r["provider_per_rotation"].items())
    lines = [
        f"-- {n:,} keys ({files} environment files, one account)",
        f"seeded in {r['seed_s']:.0f} s; start-up read of every record: {r['startup_s']:.1f} s, "
        f"{r['startup_reads']} Vault reads",
        f"scheduled mass rotation: {r['mass_wall_s']:.1f} s wall, {r['rotations_per_s']:.1f} "
        f"rotations/s, outcomes {r['rotated']}, daemon CPU {r['mass_cpu_s']:.0f} s, "
        f"polls {r['poll_seconds']} s",
        f"manual loop (same clients): {r['manual_per_s']:.1f} rotations/s -> ratio {vs_manual:.2f}",
        f"OpenBao KV writes: {r['vault_writes_per_s']:.0f}/s measured; the mass rotation wrote "
        f"{rate:.0f}/s -> ratio {rate / r['vault_writes_per_s']:.2f}",
        f"Vault per rotation: {r['vault_writes_per_rotation']:.3f} writes, "
        f"{r['vault_reads_per_rotation']:.2f} reads",
        f"provider mutations per rotation: {r['mutations_per_rotation']:.3f} {r['mutations']} "
        f"(extra attempts after a lost create answer: {r['extra_attempts']})",
        f"provider requests per rotation by route: {routes}",
        f"polls: {r['polls']}, list passes: {r['list_passes']} "
        f"({r['list_passes'] / max(1, r['polls']):.2f} per poll)",
        f"peak RSS: {r['peak_rss_mb']:.0f} MB",
    ]
    for label, name in (("idle_1s", "1 s polls"), ("idle_default", "30 s polls (default)")):
        lines.append(
            f"idle {IDLE_S:.0f} s at {name}: CPU {r[f'{label}_cpu']:.2%}, Vault writes "
            f"{r[f'{label}_writes']}, reads {r[f'{label}_reads_per_s']:.1f}/s, provider calls "
            f"{r[f'{label}_provider_calls']} (list {r[f'{label}_list_calls']})"
        )
    lines += emergency_figures.lines(r)
    lines.append(f"consumers: {r['consumers']}")
    lines.append(
        f"account lease (HA, per account, not per key): {r['account_lease_writes']} Vault writes"
    )
    print(lines[0])
    for line in lines[1:]:
        print(f"   {line}")


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_KEYS", ",".join(map(str, SIZES))).split(",")]
    results = []
    for keys in sizes:  # each size in a process of its own: its own peak RSS
        command = [sys.executable, "-m", "benchmarks.bench_scale", str(keys)]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        show(results[-1])
    missed = check(results)
    for line in missed:
        print(f"   TARGET MISSED: {line}")
    print("targets: " + ("all met" if not missed else f"{len(missed)} missed"))
    return 1 if missed else 0


def _child() -> None:
    print(json.dumps(run_size(int(sys.argv[1]))))


if __name__ == "__main__":
    _child()
