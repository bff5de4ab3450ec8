"""The dialect matrix: every dialect x empty or populated account x CLI or daemon.

Each case bootstraps a key on an account whose dialect is left to auto-detection, then rotates
it twice more, every rotation begun by a new "process" (a fresh runtime: its own Vault
connection and provider clients, so nothing learnt in memory carries over). The CLI path runs
``rotate`` (no ``--wait``) and then ``resume --wait`` as two separate invocations of the real
CLI entry point; the daemon path builds a new daemon for each rotation. Time is a fake clock
shared with the emulator, so minutes of usage lag and drain cost milliseconds.

Every case ends with exactly one live key named for the policy key, the one Vault serves, and
every other key of the account untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from world import MANAGEMENT_KEY, EmulatorFactory, calling_app, no_fault

from vault_rotator import cli
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.policy import load_policies
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

DAY = 86400.0
POLL = 30.0
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: auto
  management_key:
    path: {env}/management
  usage_lag: 60s
  poll_interval: 30s
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  max_age: 45d
  pickup_timeout: 1h
  drain_period: 10m
  drain_timeout: 2h
keys:
  - name: backend
    secret_path: {env}/backend
    allowed_providers: [openai]
    spending_limit: 20
"""
FOREIGN = (
    ("someone-elses-batch-job", {"allowed_providers": ["anthropic"], "spending_limit": 5.0}),
    ("ci-smoke", {"allowed_models": ["gpt-4o"]}),
    ("disabled-legacy", {"allowed_providers": ["openai"], "disabled": True}),
)


@dataclass
class Account:
    """One emulated provider account, one policy key on it, its consumer, a fake clock."""

    vault: VaultServer
    emulator: Emulator
    clock: FakeClock
    config: Path
    env: str = field(default_factory=lambda: f"m{uuid.uuid4().hex[:8]}")
    foreign: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    conns: list[VaultConnection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = VaultConnection(self.vault.addr, self.vault.token)
        self.kv: VaultKv = self.conn.kv("secret")
        self.kv.write(f"{self.env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        body = CONFIG.format(env=self.env, base_url=self.emulator.base_url)
        (self.config / f"{self.env}.yaml").write_text(body)
        self.clock.on_sleep(self.consume)

    @property
    def ref(self) -> str:
        return f"{self.env}/backend"

    def populate(self) -> None:
        """Keys someone else created, one of them used, before vault-rotator arrives."""
        for name, options in FOREIGN:
            _id, value = self.emulator.seed_key(name, **options)
            if not options.get("disabled"):
                self.emulator.call(value)
        self.foreign = self._foreign_now()

    def _foreign_now(self) -> dict[str, dict[str, Any]]:
        ours = f"{self.env}-backend-"
        return {
            k["id"]: {f: k.get(f) for f in ("name", "disabled", "deleted")}
            for k in self.emulator.all_keys()
            if not str(k["name"]).startswith(ours)
        }

    def consume(self) -> None:
        """The app calls once with whatever key Vault serves now (nothing before bootstrap)."""
        got = self.kv.read(f"{self.env}/backend")
        if got is not None:
            self.statuses.append(self.emulator.call(str(got.data["api_key"])))

    def runtime(self) -> Runtime:
        """A new process's runtime: its own Vault connection and provider clients."""
        conn = VaultConnection(self.vault.addr, self.vault.token)
        self.conns.append(conn)
        return Runtime(conn, clock=self.clock, sleep=self.clock.sleep)

    def record(self) -> StateRecord:
        return StateStore(self.kv, f"{self.env}/vault-rotator").read(self.env, "backend")[0]

    def served(self) -> dict[str, Any]:
        got = self.kv.read(f"{self.env}/backend")
        assert got is not None
        return dict(got.data)

    def ours_live(self) -> set[str]:
        ours = f"{self.env}-backend-"
        return {
            k["id"]
            for k in self.emulator.all_keys()
            if not k["deleted"] and str(k["name"]).startswith(ours)
        }

    def close(self) -> None:
        for conn in (self.conn, *self.conns):
            conn.close()


@pytest.fixture
def account_for(
    vault: VaultServer, make_emulator: EmulatorFactory, tmp_path: Path
) -> Iterator[Callable[[str], Account]]:
    """Build an Account for a dialect (the emulator shares the account's fake clock)."""
    built: list[Account] = []

    def build(dialect: str) -> Account:
        clock = FakeClock()
        emulator = make_emulator(dialect=dialect, clock=clock)
        account = Account(vault, emulator, clock, tmp_path)
        built.append(account)
        return account

    yield build
    for account in built:
        account.close()


def rotate_by_cli(account: Account, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rotate`` (returns once published), then ``resume --wait``, as two invocations."""
    monkeypatch.setattr(Runtime, "from_env", classmethod(lambda _cls: account.runtime()))
    config = ["--config", str(account.config)]
    assert cli.main(["rotate", account.ref, *config]) == 0
    assert account.record().phase in (reasons.PUBLISHED, reasons.IDLE)
    account.clock.sleep(POLL)
    assert cli.main(["resume", account.ref, "--wait", *config]) == 0


def rotate_by_daemon(account: Account, *, max_ticks: int = 80) -> None:
    """A new daemon ticks (the app calling between ticks) until the due rotation finished."""
    daemon = Daemon(
        load_policies(account.config), account.runtime(), metrics=Metrics(), fault=no_fault
    )
    before = len(account.record().outcomes)
    ((acct, keys),) = daemon.accounts().items()
    for _ in range(max_ticks):
        report = daemon.tick(acct, keys)
        assert report.errors == []
        if len(account.record().outcomes) > before:
            return
        account.clock.sleep(POLL)
    pytest.fail(f"the daemon did not finish the rotation in {max_ticks} ticks")


@pytest.mark.parametrize("populated", [False, True], ids=["empty", "populated"])
@pytest.mark.parametrize("via", ["cli", "daemon"])
def test_bootstrap_then_two_rotations_each_from_a_fresh_process(
    account_for: Callable[[str], Account],
    dialect: str,
    populated: bool,
    via: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bootstrap plus two rotations, each from a new process, end with one live key of ours."""
    account: Account = account_for(dialect)
    if populated:
        account.populate()
    served_ids: list[str] = []
    for _ in range(3):
        if via == "cli":
            rotate_by_cli(account, monkeypatch)
        else:
            rotate_by_daemon(account)
        record = account.record()
        assert record.phase == reasons.IDLE
        assert record.outcomes[-1].outcome == reasons.SUCCEEDED, record.outcomes[-1]
        served_ids.append(str(account.served()["key_id"]))
        assert account.ours_live() == {served_ids[-1]}
        account.clock.advance(46 * DAY)  # the next one is due (max_age 45d)
    assert len(set(served_ids)) == 3
    assert account._foreign_now() == account.foreign
    assert account.statuses
    assert set(account.statuses) == {200}
    assert record.dialect == dialect  # known once the server showed it, and saved


def test_a_wrongly_saved_dialect_is_corrected_by_the_server(
    account_for: Callable[[str], Account], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record saved with "a" on a B account (as 0.1.0 did) rotates and is saved as "b"."""
    account: Account = account_for("b")
    rotate_by_cli(account, monkeypatch)
    store = StateStore(account.kv, f"{account.env}/vault-rotator")
    record, version = store.read(account.env, "backend")
    wrong = record.evolve(dialect="a").to_dict()
    account.kv.write(store.state_path(account.env, "backend"), wrong, cas=version)
    account.clock.advance(46 * DAY)
    rotate_by_cli(account, monkeypatch)
    record = account.record()
    assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED] * 2
    assert record.dialect == "b"
    assert account.ours_live() == {account.served()["key_id"]}


REAL_CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  management_key:
    path: {env}/management
  usage_lag: 1s
  poll_interval: 0.5s
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  pickup_timeout: 60s
  drain_period: 2s
  drain_timeout: 60s
keys:
  - name: backend
    secret_path: {env}/backend
    allowed_providers: [openai]
    spending_limit: 20
"""


@pytest.mark.slow
def test_real_processes_rotate_an_account_that_started_empty(
    vault: VaultServer, tmp_path: Path
) -> None:
    """Real CLI processes, real time, dialect B starting empty: bootstrap, then a rotation."""
    env = f"r{uuid.uuid4().hex[:8]}"
    emulator = Emulator(dialect="b", management_keys=[MANAGEMENT_KEY]).start()
    conn = VaultConnection(vault.addr, vault.token)
    try:
        kv = conn.kv("secret")
        kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        (tmp_path / "real.yaml").write_text(REAL_CONFIG.format(env=env, base_url=emulator.base_url))
        environment = {**os.environ, **vault.env(), "VAULT_ROTATOR_LEASE_TTL": "6s"}
        with calling_app(kv, emulator, f"{env}/backend") as statuses:
            for _ in range(2):
                for verb in (["rotate"], ["resume", "--wait"]):
                    done = subprocess.run(
                        [sys.executable, "-m", "vault_rotator", verb[0], f"{env}/backend",
                         *verb[1:], "--config", str(tmp_path)],
                        env=environment, capture_output=True, text=True, timeout=90, check=False,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stderr[-2000:]
                    assert "lr_live_" not in done.stdout + done.stderr
        record = StateStore(kv, f"{env}/vault-rotator").read(env, "backend")[0]
        assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED] * 2
        assert record.dialect == "b"
        served = kv.read(f"{env}/backend")
        assert served is not None
        assert {k["id"] for k in emulator.live_keys()} == {served.data["key_id"]}
        assert set(statuses) - {0} == {200}  # 0: nothing served yet, before the bootstrap
    finally:
        emulator.stop()
        conn.close()


def test_dry_run_during_a_rotation_in_flight_says_so_and_plans_nothing(
    account_for: Callable[[str], Account],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`rotate --dry-run` (even --emergency) while a rotation is in flight describes that one,
    instead of planning a fresh rotation from the just-published key."""
    account: Account = account_for("c")
    monkeypatch.setattr(Runtime, "from_env", classmethod(lambda _cls: account.runtime()))
    config = ["--config", str(account.config)]
    assert cli.main(["rotate", account.ref, *config]) == 0
    rotation = account.record().rotation
    assert rotation is not None
    rotation_id = rotation.id
    keys_before = len(account.emulator.all_keys())
    capsys.readouterr()
    assert cli.main(["rotate", account.ref, "--dry-run", "--emergency", *config]) == 0
    out = capsys.readouterr().out
    assert f"rotation {rotation_id} is in flight" in out
    assert "--emergency would upgrade it" in out
    assert "plan for" not in out
    assert len(account.emulator.all_keys()) == keys_before
