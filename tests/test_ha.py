"""Three daemons behind one Vault: one ticks each account, a dead or paused one is replaced.

Real processes throughout: three ``vault-rotator run`` replicas on the rotator policy that
``vault-policy rotator`` prints, one OpenBao, the emulator, and per key a ``bao agent``
rendering the shipped template for the shipped consumer calling every 0.1 s.

1. A replica started alone with ``VAULT_ROTATOR_FAULT_SIGNAL=STOP`` takes the account lease,
   then pauses itself right after creating a new key (boundary ``create``, before saving it).
   Another replica takes the account and the key over; the paused one is continued and, per
   Vault's versions of the state record and the emulator's request log, gets no write accepted
   and sends no provider mutation; the successor finishes the rotation.
2. The replica ticking the account is SIGKILLed mid-rotation; another finishes it.
3. Over a window with no take-over, only one replica ticks and list passes do not exceed its
   ticks: provider load does not grow with the replica count.

Throughout: zero failed consumer requests, one live key per secret at the end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest

from vault_rotator.emulator import Emulator
from vault_rotator.engine.account_lease import lease_path
from vault_rotator.engine.reasons import Phase
from vault_rotator.engine.session import StateStore
from vault_rotator.policy import load_policies
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.chaos_setup import (
    SHIPPED_PATH,
    TEMPLATE,
    consumer,
    make_token,
    vault_policy,
)
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WAIT_S = float(os.environ.get("HA_WAIT_S", "90"))
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
  drain_period: 3s
  drain_timeout: 120s
keys:
  - {{name: k0, secret_path: {env}/k0, allowed_providers: [openai]}}
  - {{name: k1, secret_path: {env}/k1, allowed_providers: [openai]}}
"""
CALL = re.compile(r"^call \d+: HTTP (\d+) ", re.MULTILINE)


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    control: int
    metrics: int
    log: Path

    @property
    def state(self) -> str:
        """The process state letter from /proc (``T`` when stopped)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0]


@dataclass
class Cluster:
    vault: VaultServer
    emulator: Emulator
    work: Path
    env: str
    token: str
    kv: VaultKv
    store: StateStore
    lease: str
    replicas: list[Replica] = field(default_factory=list)

    def start(self, **extra: str) -> Replica:
        control, metrics = free_port(), free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VAULT_ROTATOR_FAULT")},
            "PYTHONPATH": str(REPO),
            "VAULT_ADDR": self.vault.addr,
            "VAULT_TOKEN": self.token,
            "VAULT_ROTATOR_LEASE_TTL": "5s",
            **extra,
        }
        log = self.work / f"replica-{len(self.replicas)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vault_rotator", "run", "--config",
                 str(self.work / "config"), "--listen", f"127.0.0.1:{control}",
                 "--metrics-listen", f"127.0.0.1:{metrics}"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        replica = Replica(proc, control, metrics, log)
        self.replicas.append(replica)
        return replica

    def leader_pid(self) -> int | None:
        """The pid in the account lease's holder (``host:pid:uuid``), while it is live."""
        got = self.kv.read(self.lease)
        if got is None or not got.data or got.data["expires_at"] < time.time():
            return None
        return int(str(got.data["holder"]).split(":")[1])

    def leader(self) -> Replica:
        pid = until(self.leader_pid, "an account lease holder")
        (replica,) = [r for r in self.replicas if r.proc.pid == pid]
        return replica

    def record(self, name: str) -> Any:
        return self.store.read(self.env, name)


def until(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if (value := check()) is not None and value is not False:
                return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ready(replica: Replica) -> bool:
    return httpx.get(f"http://127.0.0.1:{replica.metrics}/readyz", timeout=5).status_code == 200


def ticks(replica: Replica) -> float:
    text = httpx.get(f"http://127.0.0.1:{replica.metrics}/metrics", timeout=5).text
    found = re.findall(r"^vault_rotator_ticks_total\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    return sum(float(v) for v in found)


@pytest.fixture
def cluster(vault: VaultServer, tmp_path: Path) -> Iterator[Cluster]:
    env = f"ha{uuid.uuid4().hex[:6]}"
    management = "lr_mgmt_" + secrets.token_hex(16)
    emulator = Emulator(dialect="b", management_keys=[management]).start()
    kv = VaultConnection(vault.addr, vault.token).kv("secret")
    admin = hvac.Client(url=vault.addr, token=vault.token)
    kv.write(f"{env}-admin/management", {"key": management}, cas=0)
    for name in ("k0", "k1"):
        key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        rotated_at = datetime.now(UTC).isoformat()  # not due: rotations start when we say
        data = {"api_key": value, "key_id": key_id, "rotated_at": rotated_at}
        kv.write(f"{env}/{name}", data, cas=0)
        state = f"{env}-rotator/state/{env}/{name}"  # every version kept, for the fence check
        admin.secrets.kv.v2.update_metadata(state, max_versions=1000, mount_point="secret")
    config = tmp_path / "config"
    config.mkdir()
    (config / "ha.yaml").write_text(CONFIG.format(env=env, base_url=emulator.base_url))
    (account,) = load_policies(config).accounts()
    token = make_token(admin, f"{env}-rotator", vault_policy(["rotator", "--config", str(config)]))
    world = Cluster(
        vault, emulator, tmp_path, env, token, kv, StateStore(kv, f"{env}-rotator"),
        lease_path(f"{env}-rotator", account.lease_id),
    )  # fmt: skip
    template = TEMPLATE.read_text()
    try:
        with contextlib.ExitStack() as traffic:
            for name in ("k0", "k1"):
                rules = vault_policy(["consumer", f"{env}/{name}", "--config", str(config)])
                agent = traffic.enter_context(
                    vault_agent(vault.addr, make_token(admin, f"{env}-{name}", rules),
                                mount="secret", path=f"{env}/{name}",
                                template=template.replace(SHIPPED_PATH,
                                                          f"secret/data/{env}/{name}"))
                )  # fmt: skip
                out = tmp_path / f"consumer-{name}.out"
                traffic.enter_context(consumer(agent.destination, emulator.base_url, out))
            yield world
    finally:
        for replica in world.replicas:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGCONT)
                replica.proc.kill()
            replica.proc.wait(timeout=10)
        emulator.stop()


def _finished(world: Cluster, name: str, rotation_id: str) -> bool:
    record = world.record(name)[0]
    outcomes = {o.rotation_id: o.outcome for o in record.outcomes}
    return record.phase == Phase.IDLE and str(outcomes.get(rotation_id, "")).startswith("succeeded")


def _rotate(world: Cluster, replica: Replica, name: str, timeout: float = 30.0) -> None:
    with contextlib.suppress(httpx.TimeoutException):
        answer = httpx.post(
            f"http://127.0.0.1:{replica.control}/v1/rotate/{world.env}/{name}",
            headers={"Authorization": f"Bearer {world.vault.token}"},
            timeout=timeout,
        )
        assert answer.status_code in (200, 202), answer.text


def _holder_pids(world: Cluster, name: str, after: int) -> set[int]:
    """The pids of the lease holders in every version of the key's state record after ``after``."""
    path = world.store.state_path(world.env, name)
    pids = set()
    for version in range(after + 1, world.kv.current_version(path) + 1):
        got = world.kv.read(path, version)
        lease = got.data.get("lease") if got is not None else None
        if lease:
            pids.add(int(str(lease["holder"]).split(":")[1]))
    return pids


def test_three_replicas_one_acts_a_paused_one_is_fenced_a_killed_one_replaced(
    cluster: Cluster,
) -> None:
    """The module docstring's three scenarios on one cluster, zero failed consumer calls."""
    world = cluster
    paused = world.start(VAULT_ROTATOR_FAULT_AT="create", VAULT_ROTATOR_FAULT_SIGNAL="STOP")
    until(lambda: world.leader_pid() == paused.proc.pid, "the first replica to lead")
    others = [world.start(), world.start()]
    for replica in world.replicas:
        until(functools.partial(ready, replica), "every replica ready (followers too)")

    # 1. paused right after creating k1's new key, taken over, continued: fenced
    _rotate(world, paused, "k1", timeout=3.0)
    until(lambda: paused.state == "T", "the first replica to pause at create")
    record = world.record("k1")[0]
    assert record.rotation is not None
    rotation_id = record.rotation.id
    until(lambda: world.leader_pid() in {r.proc.pid for r in others}, "a new account holder")
    until(lambda: world.record("k1")[0].fence > record.fence, "a successor to take k1 over")
    taken_at = world.record("k1")[1]
    until(lambda: _finished(world, "k1", rotation_id), "the successor to finish k1")
    paths = [world.store.state_path(world.env, "k1"), world.store.pending_path(world.env, "k1"),
             f"{world.env}/k1"]  # fmt: skip
    versions = [world.kv.current_version(path) for path in paths]
    mutations = len(world.emulator.mutation_log())
    paused.proc.send_signal(signal.SIGCONT)  # its paused pass resumes right after the create
    until(lambda: paused.state != "T" and ready(paused), "the paused replica to run again")
    until(lambda: "lease lost" in paused.log.read_text(), "the resumed pass to find its lease lost")
    time.sleep(2.0)  # a few of its polls: as a follower it must do nothing
    assert [world.kv.current_version(path) for path in paths] == versions
    assert len(world.emulator.mutation_log()) == mutations  # not one provider mutation
    assert paused.proc.pid not in _holder_pids(world, "k1", taken_at)
    assert paused.proc.pid in _holder_pids(world, "k1", 0)  # it did hold it before the pause
    log = world.emulator.mutation_log()
    creates = Counter(m["name"] for m in log if m["route"] == "create")
    deletes = Counter(m["key_id"] for m in log if m["route"] == "delete")
    assert max(creates.values()) == 1, creates  # no key name created twice
    assert max(deletes.values()) == 1, deletes  # no key deleted twice

    # 2. the replica ticking the account SIGKILLed mid-rotation of k0: another finishes it
    _rotate(world, world.replicas[1], "k0")
    until(lambda: world.record("k0")[0].phase == Phase.PUBLISHED, "k0 published")
    rotation_id = world.record("k0")[0].rotation.id
    acting = world.leader()
    acting.proc.kill()
    acting.proc.wait(timeout=10)
    until(lambda: _finished(world, "k0", rotation_id), "k0's rotation to finish elsewhere")
    assert world.leader_pid() not in (None, acting.proc.pid)

    # 3. one replica ticks; list passes follow its ticks, not the replica count
    _rotate(world, world.leader(), "k0")
    until(lambda: world.record("k0")[0].phase == Phase.PUBLISHED, "k0 published again")
    leader = world.leader()
    alive = [r for r in world.replicas if r.proc.poll() is None]
    before = {r.proc.pid: ticks(r) for r in alive}
    lists = world.emulator.request_counts()["list"]
    time.sleep(3.0)
    assert world.leader() is leader  # the lease does not flap while its holder is healthy
    grown = {r.proc.pid: ticks(r) - before[r.proc.pid] for r in alive}
    assert [pid for pid, n in grown.items() if n] == [leader.proc.pid], grown
    assert grown[leader.proc.pid] >= 2
    assert world.emulator.request_counts()["list"] - lists <= grown[leader.proc.pid] + 2

    # every consumer call succeeded; one live key per secret, the one Vault serves
    for name in ("k0", "k1"):
        statuses = CALL.findall((world.work / f"consumer-{name}.out").read_text())
        assert len(statuses) > 50
        assert set(statuses) == {"200"}, Counter(statuses)
    served = {str(world.kv.read(f"{world.env}/{n}").data["key_id"]) for n in ("k0", "k1")}  # type: ignore[union-attr]
    until(lambda: {k["id"] for k in world.emulator.live_keys()} == served, "one live key each")
