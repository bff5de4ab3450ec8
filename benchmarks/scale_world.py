"""The scale benchmark's world: a real OpenBao dev server, the emulator in its own process,
N managed keys across several environment files of one account, and simulated consumers.

Only the daemon runs in the benchmark's process (so its CPU and peak RSS are the daemon's):
the emulator (``vault-rotator emulator``) and the consumers (:mod:`benchmarks.consumer`) are
subprocesses, OpenBao is ``bao server -dev``. A consumer switches to a key the moment the
daemon publishes it: the daemon's KV store is wrapped so that a consumer-secret write also
writes the new value to the consumers' pipe (one line, no other work in the daemon).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vault_rotator.ports.kv import KvStore, Versioned
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer

MANAGEMENT_KEY = "lr_mgmt_bench_0123456789abcdef"
KEYS_PER_FILE = 250  # several environment files (the loader allows 1,000 keys per file)
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


class SwitchingKv:
    """A KV mount that tells the consumers of each consumer-secret write (a publish)."""

    def __init__(self, kv: KvStore, on_publish: Any) -> None:
        self._kv = kv
        self._on_publish = on_publish

    @property
    def mount(self) -> str:
        return self._kv.mount

    def read(self, path: str, version: int | None = None) -> Versioned | None:
        return self._kv.read(path, version)

    def current_version(self, path: str) -> int:
        return self._kv.current_version(path)

    def write(self, path: str, data: Mapping[str, Any], *, cas: int) -> int:
        version = self._kv.write(path, data, cas=cas)
        value = data.get("api_key")
        if isinstance(value, str) and "rotation_id" in data:
            self._on_publish(value)
        return version

    def set_custom_metadata(self, path: str, metadata: Mapping[str, str]) -> None:
        self._kv.set_custom_metadata(path, metadata)

    def destroy(self, path: str) -> None:
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
        self._switching: dict[str, SwitchingKv] = {}

    def kv(self, mount: str) -> KvStore:
        if mount not in self._switching:
            self._switching[mount] = SwitchingKv(self.conn.kv(mount), self._on_publish)
        return self._switching[mount]


@dataclass
class Fleet:
    """N keys of one account across several environment files."""

    prefix: str
    config: Path
    refs: list[str] = field(default_factory=list)


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


def write_config(fleet: Fleet, url: str, *, poll: str, keys: int) -> None:
    """(Re)write the policy files with ``poll`` as every environment's poll_interval."""
    by_env: dict[str, list[str]] = {}
    for ref in fleet.refs:
        env, name = ref.split("/")
        by_env.setdefault(env, []).append(name)
    for env, names in by_env.items():
        lines = "\n".join(
            f"  - {{name: {n}, secret_path: {fleet.prefix}/{env}/{n}, allowed_providers: [openai]}}"
            for n in names
        )
        body = ENV_FILE.format(
            env=env,
            url=url,
            prefix=fleet.prefix,
            usage_lag="0s",
            drain="0s",
            poll=poll,
            max_concurrent=keys,
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
