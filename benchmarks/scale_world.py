"""The scale benchmark's world: a real OpenBao dev server, the emulator in its own process,
N managed keys in environment files of 1,000 keys (the loader's limit per file) of one account,
and simulated consumers.

Only the daemon runs in the benchmark's process (so its CPU and peak RSS are the daemon's):
the emulator (``vault-rotator emulator``) and the consumers (:mod:`benchmarks.consumer`) are
subprocesses, OpenBao is ``bao server -dev``. A consumer switches to a key the moment the
daemon publishes it: the daemon's KV store is wrapped so that a consumer-secret write also
writes the new value to the consumers' pipe (one line, no other work in the daemon). The same
wrapper tallies the daemon's Vault writes by a classifier of their paths (the benchmark counts an
emergency request's own writes apart from its keys').

For the emergency, a **side environment** of the same account (:func:`seed_side`): one key on
``every 1h`` whose consumer secret says it was last rotated so that it falls due at a chosen
moment, written into the policies only when asked (``side=``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from vault_rotator.ports.kv import KvStore, Versioned
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer

MANAGEMENT_KEY = "lr_mgmt_bench_0123456789abcdef"
KEYS_PER_FILE = 1000  # the loader's limit per file: 10,000 keys are 10 environments
SIDE_SCHEDULE, SIDE_INTERVAL_S = "every 1h", 3600.0  # the side environment's key (seed_side)
ENV_FILE = """\
environment: {env}
provider:
  type: arouter
  base_url: {url}
  dialect: c
  management_key: {{path: {prefix}/management}}
  usage_lag: {usage_lag}
  poll_interval: {poll}
  max_concurrent: {max_concurrent}
vault: {{kv_mount: secret, state_prefix: {prefix}/vault-rotator}}
require_spending_limit: false
defaults: {{pickup_timeout: 1h, drain_period: {drain}, drain_timeout: 2h}}
keys:
{keys}
"""


@dataclass
class Emulator:
    """The emulator subprocess and its base URL."""

    process: subprocess.Popen[str]
    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as answer:
            return json.loads(answer.read())

    def seed(self, name: str) -> tuple[str, str]:
        body = json.dumps({"name": name, "allowed_providers": ["openai"]}).encode()
        request = urllib.request.Request(f"{self.url}/_emulator/keys", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:
            got = json.loads(answer.read())
        return str(got["id"]), str(got["key"])

    def mutation_counts(self) -> Counter[str]:
        """Creates, updates and deletes received so far (the request counts by route: small,
        where the mutation log would be a large answer for the benchmark's process to hold)."""
        counts = self.get("/_emulator/requests")["data"]
        return Counter({route: counts.get(route, 0) for route in ("create", "update", "delete")})


@contextlib.contextmanager
def emulator() -> Iterator[Emulator]:
    """``vault-rotator emulator`` on a free port (dialect c), stopped on exit."""
    command = [sys.executable, "-m", "vault_rotator", "emulator", "--port", "0", "--dialect", "c"]
    command += ["--management-key", MANAGEMENT_KEY]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        yield Emulator(process, url)
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Consumers:
    """The consumers' process: one line per published value."""

    process: subprocess.Popen[str]
    pipe: IO[str]

    def switch(self, value: str) -> None:
        self.pipe.write(value + "\n")
        self.pipe.flush()

    def finish(self) -> str:
        self.pipe.close()
        assert self.process.stdout is not None
        out = self.process.stdout.read()
        self.process.wait(120)
        return out.strip()


@contextlib.contextmanager
def consumers(url: str) -> Iterator[Consumers]:
    command = [sys.executable, "-m", "benchmarks.consumer", url]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None
    try:
        yield Consumers(process, process.stdin)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


class WriteTally:
    """Vault writes (data, metadata, destroy) sent through :class:`SwitchingKv`, counted by
    ``classify(path)`` (settable; every path is ``"keys"`` until then)."""

    def __init__(self) -> None:
        self.classify: Callable[[str], str] = lambda _path: "keys"
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, path: str) -> None:
        kind = self.classify(path)
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


@dataclass
class StatusPoller:
    """The status poller's process (:mod:`benchmarks.status_poller`)."""

    process: subprocess.Popen[str]

    def finish(self, timeout: float = 300.0) -> list[dict[str, Any]]:
        """Stop polling (after the poll under way) and return every poll."""
        out, _ = self.process.communicate(input="", timeout=timeout)
        polls: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])["polls"]
        return polls


@contextlib.contextmanager
def status_poller(url: str, token: str) -> Iterator[StatusPoller]:
    """``GET URL/v1/status`` every second from a process of its own, ``token`` as bearer."""
    command = [sys.executable, "-m", "benchmarks.status_poller", url]
    env = {**os.environ, "VAULT_TOKEN": token}
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        yield StatusPoller(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


class SwitchingKv:
    """A KV mount that tells the consumers of each consumer-secret write (a publish), and
    tallies every write by path."""

    def __init__(self, kv: KvStore, on_publish: Any, tally: WriteTally) -> None:
        self._kv = kv
        self._on_publish = on_publish
        self._tally = tally

    @property
    def mount(self) -> str:
        return self._kv.mount

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        return self._kv.read(path, version)

    def current_version(self, path: str) -> int:
        return self._kv.current_version(path)

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        self._tally.add(path)
        version = self._kv.write(path, data, cas=cas)
        value = data.get("api_key")
        if isinstance(value, str) and "rotation_id" in data:
            self._on_publish(value)
        return version

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        self._tally.add(path)
        self._kv.set_custom_metadata(path, metadata)

    def destroy(self, path: str) -> None:
        self._tally.add(path)
        self._kv.destroy(path)

    def list(self, prefix: str) -> Sequence[str]:
        return self._kv.list(prefix)

    def capabilities(self, paths: Sequence[str]) -> dict[str, frozenset[str]]:
        return self._kv.capabilities(paths)


class SwitchingRuntime(Runtime):
    """The runtime the daemon runs on, its KV mounts wrapped in :class:`SwitchingKv`."""

    def __init__(self, conn: VaultConnection, on_publish: Any) -> None:
        super().__init__(conn)
        self._on_publish = on_publish
        self.tally = WriteTally()
        self._switching: dict[str, SwitchingKv] = {}

    def kv(self, mount: str) -> KvStore:
        if mount not in self._switching:
            kv = self.conn.kv(mount)
            self._switching[mount] = SwitchingKv(kv, self._on_publish, self.tally)
        return self._switching[mount]


@dataclass
class Fleet:
    """N keys of one account in environment files of ``KEYS_PER_FILE`` keys."""

    prefix: str
    config: Path
    refs: list[str] = field(default_factory=list)

    @property
    def envs(self) -> list[str]:
        return sorted({ref.split("/")[0] for ref in self.refs})

    @property
    def state_prefix(self) -> str:
        return f"{self.prefix}/vault-rotator"

    @property
    def side_env(self) -> str:
        return f"{self.prefix}-side"

    @property
    def side_ref(self) -> str:
        return f"{self.side_env}/s0"


def seed_fleet(
    vault: VaultServer, emu: Emulator, keys: int, config: Path, *, poll: str, threads: int = 16
) -> Fleet:
    """Seed ``keys`` old keys at the emulator and their consumer secrets in Vault, and write
    the policy files (``KEYS_PER_FILE`` keys each)."""
    prefix = f"b{uuid.uuid4().hex[:6]}"
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{prefix}/management", {"key": MANAGEMENT_KEY}, cas=0)
    envs = [f"{prefix}-e{i}" for i in range((keys + KEYS_PER_FILE - 1) // KEYS_PER_FILE)]

    def one(index: int) -> str:
        env, name = envs[index // KEYS_PER_FILE], f"k{index}"
        key_id, value = emu.seed(f"{env}-{name}-original")
        kv.write(f"{prefix}/{env}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
        return f"{env}/{name}"

    with ThreadPoolExecutor(threads) as pool:
        refs = list(pool.map(one, range(keys)))
    conn.close()
    fleet = Fleet(prefix, config, refs)
    write_config(fleet, emu.url, poll=poll, keys=keys)
    return fleet


def seed_side(vault: VaultServer, emu: Emulator, fleet: Fleet, *, due_at: float) -> None:
    """The side environment's one key: an old key at the emulator and its consumer secret,
    last rotated (``rotated_at``) one ``SIDE_SCHEDULE`` interval before ``due_at`` (epoch
    seconds), so that the daemon's schedule makes it due then and not before."""
    env, name = fleet.side_ref.split("/")
    key_id, value = emu.seed(f"{env}-{name}-original")
    rotated_at = datetime.fromtimestamp(due_at - SIDE_INTERVAL_S, UTC).isoformat()
    conn = VaultConnection(vault.addr, vault.token)
    data = {"api_key": value, "key_id": key_id, "rotated_at": rotated_at}
    conn.kv("secret").write(f"{fleet.prefix}/{env}/{name}", data, cas=0)
    conn.close()


def write_config(fleet: Fleet, url: str, *, poll: str, keys: int, side: bool = False) -> None:
    """(Re)write the policy files with ``poll`` as every environment's poll_interval; with
    ``side``, the side environment's file too (else none). ``max_concurrent`` leaves room for
    every key of the account in flight at once, the side key included."""
    by_env: dict[str, list[str]] = {}
    for ref in fleet.refs + ([fleet.side_ref] if side else []):
        env, name = ref.split("/")
        by_env.setdefault(env, []).append(name)
    (fleet.config / f"{fleet.side_env}.yaml").unlink(missing_ok=True)
    for env, names in by_env.items():
        extra = f", schedule: {SIDE_SCHEDULE}" if env == fleet.side_env else ""
        lines = "\n".join(
            f"  - {{name: {n}, secret_path: {fleet.prefix}/{env}/{n}, "
            f"allowed_providers: [openai]{extra}}}"
            for n in names
        )
        body = ENV_FILE.format(
            env=env,
            url=url,
            prefix=fleet.prefix,
            usage_lag="0s",
            drain="0s",
            poll=poll,
            max_concurrent=keys + 1,
            keys=lines,
        )
        (fleet.config / f"{env}.yaml").write_text(body)


def wait_for(condition: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())
