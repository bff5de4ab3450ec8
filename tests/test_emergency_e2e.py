"""End to end: `rotate --env ENV --emergency --yes` over two dozen keys of a frozen environment,
real OpenBao, the emulator, real `bao agent`s feeding the shipped consumer on three keys; the
CLI SIGKILLed mid-request and run again. Then `--revoke-old-now`, and a daemon subprocess
SIGKILLed in the middle of a request made through its control API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from world import MANAGEMENT_KEY

from vault_rotator import cli
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.emergency import Step
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.chaos_figures import consumer_calls
from vault_rotator.testing.chaos_setup import consumer
from vault_rotator.testing.chaos_world import Outputs, webhook_receiver
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer, free_port

REPO = Path(__file__).resolve().parent.parent
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
  pickup_timeout: {pickup_timeout}
  drain_period: 1h
  drain_timeout: 2h
  disable_before_delete: 0s
keys:
{keys}
"""


@dataclass
class Fleet:
    """One environment of keys in a real OpenBao, served by the emulator."""

    vault: VaultServer
    emulator: Emulator
    config: Path
    env: str
    names: list[str]
    kv: VaultKv
    old: dict[str, str] = field(default_factory=dict)  # name -> the key id served at the start

    def record(self, name: str) -> StateRecord:
        return StateStore(self.kv, f"{self.env}-rotator").read(self.env, name)[0]

    def served(self, name: str) -> str | None:
        got = self.kv.read(f"{self.env}/{name}")
        assert got is not None
        key_id = got.data.get("key_id")
        return key_id if isinstance(key_id, str) else None

    def versions(self, name: str) -> int:
        return self.kv.current_version(f"{self.env}/{name}")

    def live(self) -> set[str]:
        return {key["id"] for key in self.emulator.live_keys()}

    def creates(self, name: str) -> int:
        prefix = f"{self.env}-{name}-"
        return sum(
            1
            for m in self.emulator.mutation_log()
            if m["route"] == "create" and str(m["name"]).startswith(prefix)
        )

    def rotations_created(self, name: str) -> set[str]:
        """The rotation ids the key's creates were named for (``<id>.<attempt>``: a create
        whose answer a kill lost is followed by the same rotation's next attempt)."""
        prefix = f"{self.env}-{name}-"
        return {
            str(m["name"]).rsplit("-", 1)[1].split(".")[0]
            for m in self.emulator.mutation_log()
            if m["route"] == "create" and str(m["name"]).startswith(prefix)
        }

    def named_live(self, name: str) -> set[str]:
        """The live keys of the account named for this key (new keys; seeded ones too)."""
        prefix = f"{self.env}-{name}-"
        return {k["id"] for k in self.emulator.live_keys() if str(k["name"]).startswith(prefix)}

    def cli(self, *args: str, **env: str) -> subprocess.Popen[str]:
        environment = {
            **os.environ,
            **self.vault.env(),
            "PYTHONPATH": str(REPO),
            "VAULT_ROTATOR_LEASE_TTL": "5s",
            **env,
        }
        return subprocess.Popen(
            [sys.executable, "-m", "vault_rotator", *args, "--config", str(self.config)],
            cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip


@contextlib.contextmanager
def fleet_of(
    vault: VaultServer, tmp_path: Path, count: int, *, pickup_timeout: str, unknown: tuple[str, ...]
) -> Iterator[Fleet]:
    """``count`` keys k0..; those in ``unknown`` served without a key_id (old key unknown)."""
    env = f"e{uuid.uuid4().hex[:8]}"
    emulator = Emulator(dialect="b", management_keys=[MANAGEMENT_KEY]).start()
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{env}-admin/management", {"key": MANAGEMENT_KEY}, cas=0)
    names = [f"k{i}" for i in range(count)]
    fleet = Fleet(vault, emulator, tmp_path, env, names, kv)
    for name in names:
        key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        data = {"api_key": value} if name in unknown else {"api_key": value, "key_id": key_id}
        kv.write(f"{env}/{name}", data, cas=0)
        fleet.old[name] = key_id
    lines = [
        f"  - {{name: {n}, secret_path: {env}/{n}, allowed_providers: [openai]}}" for n in names
    ]
    (tmp_path / "fleet.yaml").write_text(
        CONFIG.format(env=env, base_url=emulator.base_url, keys="\n".join(lines),
                      pickup_timeout=pickup_timeout)
    )  # fmt: skip
    try:
        yield fleet
    finally:
        emulator.stop()
        conn.close()


@contextlib.contextmanager
def traffic(fleet: Fleet, names: list[str], work: Path) -> Iterator[dict[str, Path]]:
    """A real `bao agent` rendering each key's secret, and the shipped consumer calling with it
    every 0.1 s; yields each consumer's output file."""
    outputs = {}
    with contextlib.ExitStack() as stack:
        for name in names:
            agent = stack.enter_context(
                vault_agent(fleet.vault.addr, fleet.vault.token, mount="secret",
                            path=f"{fleet.env}/{name}")
            )  # fmt: skip
            outputs[name] = work / f"consumer-{name}.out"
            stack.enter_context(consumer(agent.destination, fleet.emulator.base_url, outputs[name]))
        yield outputs


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "lr_live_" not in out + err
    return code, out


@pytest.mark.slow
def test_an_environment_wide_emergency_survives_a_kill_and_rotates_each_key_once(
    vault: VaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """24 keys of a frozen environment, traffic on three (one already rotating normally, its
    new key published before the request), one whose old key is unknown: the CLI is SIGKILLed
    when the first key finishes (half the keys started, no progress saved yet); the rerun
    finishes the request. Keys with traffic switch with no failed call and lose their old key
    (the one published before the request is upgraded, then rotated afresh by the request:
    its new key may have leaked too); keys without traffic stall with both keys alive; the
    unknown one is skipped; no other key is rotated twice."""
    work = tmp_path / "work"
    work.mkdir()
    with fleet_of(vault, tmp_path, 24, pickup_timeout="12s", unknown=("k23",)) as fleet:
        env, busy = fleet.env, ["k0", "k1", "k2"]
        for name, value in vault.env().items():
            monkeypatch.setenv(name, value)
        config = ["--config", str(fleet.config)]
        with traffic(fleet, busy, work) as outputs:
            assert _main(capsys, "freeze", env, *config)[0] == 0
            assert _main(capsys, "rotate", f"{env}/k2", *config)[0] == 0  # published, normal
            upgraded = fleet.record("k2").rotation
            assert upgraded is not None
            assert upgraded.mode == reasons.NORMAL
            first = fleet.cli(
                "rotate", "--env", env, "--emergency", "--yes", "--wait",
                VAULT_ROTATOR_FAULT_AT="done",
            )  # fmt: skip
            out1, err1 = first.communicate(timeout=90)
            assert first.returncode == -signal.SIGKILL, err1
            store = EmergencyStore(fleet.kv, f"{env}-rotator")
            request = store.read(env)
            assert request is not None
            assert not request.complete
            assert f"{env}: emergency {request.id} saved: 24 keys" in out1
            assert "frozen keys included" in out1
            rerun = fleet.cli("rotate", "--env", env, "--emergency", "--yes", "--wait")
            out2, err2 = rerun.communicate(timeout=90)
        assert rerun.returncode == 1, err2  # 1: keys stalled (no traffic) and one skipped
        assert f"emergency {request.id} resumed" in out2
        assert "lr_live_" not in out1 + err1 + out2 + err2

        # the consumers: calls all along, not one failed
        for name in busy:
            ok, failed = consumer_calls(outputs[name].read_text().splitlines())
            assert (ok > 20, failed) == (True, 0), name

        final = store.read(env)
        assert final is not None
        assert final.settled
        assert not final.complete
        steps = {name: entry.step for name, entry in final.keys.items()}
        live = fleet.live()
        for name in fleet.names:
            record = fleet.record(name)
            if name in busy:  # switched, old key deleted, one emergency rotation
                assert steps[name] == Step.DONE, name
                rotations = 2 if name == "k2" else 1  # k2: the prior one, then the request's
                assert [o.outcome for o in record.outcomes] == [
                    reasons.SUCCEEDED_EMERGENCY
                ] * rotations
                if name == "k2":
                    assert record.outcomes[0].rotation_id == upgraded.id
                    assert final.keys[name].prior == upgraded.id
                    assert record.outcomes[1].trigger == f"emergency:{request.id}"
                assert fleet.old[name] not in live
                assert fleet.served(name) in live
            elif name == "k23":  # old key unknown: skipped, untouched
                assert steps[name] == Step.SKIPPED
                assert "old key unknown" in final.keys[name].detail
                assert record.rotation is None
                assert fleet.old[name] in live
            else:  # no traffic: stalled with both keys alive
                assert steps[name] == Step.STALLED, name
                assert record.rotation is not None
                assert record.rotation.stalled is not None
                assert record.rotation.stalled.reason == reasons.PICKUP_TIMEOUT
                assert {fleet.old[name], fleet.served(name)} <= live
            # never rotated twice: one rotation and one published version per key; a create
            # the kill cut short (many are outstanding at once) is the same rotation's next
            # attempt, and its key, if it was made, is swept: no orphan
            rotated = 0 if name == "k23" else 2 if name == "k2" else 1
            assert len(fleet.rotations_created(name)) == rotated, name
            assert fleet.versions(name) == 1 + rotated, name
            assert fleet.named_live(name) <= {fleet.old[name], fleet.served(name)}, name
        assert "stalled (20)" in out2
        assert "skipped (1)" in out2
        assert f"{env}/k23" in out2
        assert "outcomes: succeeded-emergency 3" in out2  # k2's prior one is not the request's

        # the runbook's way out for a stalled key without consumers: revoke its leaked key now
        assert _main(capsys, "rotate", f"{env}/k3", "--emergency", "--revoke-old-now", "--wait",
                     *config)[0] == 0  # fmt: skip
        assert fleet.old["k3"] not in fleet.live()
        code, out = _main(capsys, "status", "--json", *config)
        assert code == 1  # keys stalled
        (doc,) = json.loads(out)["emergencies"]
        assert doc["counts"] == {"stalled": 19, "done": 4, "skipped": 1}
        assert doc["outcomes"] == {"succeeded-emergency": 3, "succeeded-revoked-old-now": 1}


@pytest.mark.slow
def test_revoke_old_now_deletes_every_old_key_at_publish_and_reports_them(
    vault: VaultServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run changes nothing; without --wait the CLI returns once every key is published;
    the rerun with --wait ends the request: every old key deleted though no consumer switched,
    each key reported as revoked before pickup was seen."""
    with fleet_of(vault, tmp_path, 6, pickup_timeout="1h", unknown=()) as fleet:
        env = fleet.env
        for name, value in vault.env().items():
            monkeypatch.setenv(name, value)
        base = ["rotate", "--env", env, "--emergency", "--yes", "--revoke-old-now"]
        config = ["--config", str(fleet.config)]
        code, out = _main(capsys, *base, "--dry-run", *config)
        assert code == 0
        assert f"plan for an emergency of {env}: 6 keys; nothing is changed" in out
        assert f"{env}/k0: start an emergency rotation" in out
        assert EmergencyStore(fleet.kv, f"{env}-rotator").read(env) is None
        assert len(fleet.emulator.all_keys()) == 6
        code, out = _main(capsys, *base, *config)
        assert code == 0
        assert "every key is published or beyond; continue with" in out
        code, out = _main(capsys, *base, "--wait", *config)
        assert code == 0, out
        request = EmergencyStore(fleet.kv, f"{env}-rotator").read(env)
        assert request is not None
        assert request.complete
        assert request.revoke_old_now
        assert "revoked (6): old key deleted at publish" in out
        live = fleet.live()
        for name in fleet.names:
            assert [o.outcome for o in fleet.record(name).outcomes] == [reasons.SUCCEEDED_REVOKED]
            assert fleet.old[name] not in live
            assert fleet.served(name) in live
            assert (fleet.creates(name), fleet.versions(name)) == (1, 2)


def _daemon(fleet: Fleet, port: int, webhook: str, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        **fleet.vault.env(),
        "PYTHONPATH": str(REPO),
        "VAULT_ROTATOR_LEASE_TTL": "5s",
        "VAULT_ROTATOR_WEBHOOK_URL": webhook,
        "VAULT_ROTATOR_WEBHOOK_EVENTS": "stalled,failed,needs-attention,succeeded",
    }
    environment.pop("VAULT_ROTATOR_FAULT_AT", None)
    environment.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "vault_rotator", "run", "--config", str(fleet.config),
         "--listen", f"127.0.0.1:{port}"],
        cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _healthy(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("the daemon did not come up")


@pytest.mark.slow
def test_a_daemon_killed_mid_request_is_replaced_and_the_next_one_finishes_it(
    vault: VaultServer, tmp_path: Path
) -> None:
    """POST /v1/rotate/{env} with revoke_old_now to a daemon subprocess SIGKILLed at its first
    publish; a new daemon finishes the request: each key rotated once, each old key deleted,
    and one webhook for the whole request."""
    outputs = Outputs()
    with (
        fleet_of(vault, tmp_path, 6, pickup_timeout="1h", unknown=()) as fleet,
        webhook_receiver(outputs) as hook,
    ):
        port = free_port()
        first = _daemon(fleet, port, hook, VAULT_ROTATOR_FAULT_AT="published")
        _healthy(port, first)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/rotate/{fleet.env}",
            json={"emergency": True, "revoke_old_now": True},
            headers={"Authorization": f"Bearer {vault.token}"},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
        request_id = answer.json()["request_id"]
        _out, err = first.communicate(timeout=60)
        assert first.returncode == -signal.SIGKILL, err[-2000:]
        store = EmergencyStore(fleet.kv, f"{fleet.env}-rotator")
        port = free_port()
        second = _daemon(fleet, port, hook)
        try:
            deadline = time.monotonic() + 60
            while not ((got := store.read(fleet.env)) and got.notified_at):
                assert time.monotonic() < deadline, got
                assert second.poll() is None
                time.sleep(0.2)
            time.sleep(1.0)  # the webhook's delivery
        finally:
            second.send_signal(signal.SIGTERM)
            _out, err = second.communicate(timeout=20)
        assert second.returncode == 0, err[-2000:]
    assert (got.id, got.complete) == (request_id, True)
    live = fleet.live()
    for name in fleet.names:
        assert [o.outcome for o in fleet.record(name).outcomes] == [reasons.SUCCEEDED_REVOKED]
        assert fleet.old[name] not in live
        assert (fleet.creates(name), fleet.versions(name)) == (1, 2), name
    messages = [json.loads(text)["vault_rotator"] for text in outputs.texts]
    assert [(m["event"], m["request_id"], m["keys"]) for m in messages] == [
        ("succeeded", request_id, 6)
    ]
    assert "lr_live_" not in err + "".join(outputs.texts)


@pytest.mark.slow
def test_a_kill_while_many_creates_are_outstanding_loses_no_key_and_leaves_no_orphan(
    vault: VaultServer, tmp_path: Path
) -> None:
    """Creates answered slowly, so the CLI's round has many outstanding at once: it is
    SIGKILLed the moment the first answer comes back (that value, and every other create's,
    unsaved); the rerun finishes every key with one published rotation each, every served key
    live, every old key deleted, and every key a lost answer made swept (no orphan)."""
    with fleet_of(vault, tmp_path, 12, pickup_timeout="1h", unknown=()) as fleet:
        env = fleet.env
        fleet.emulator.set_fault("create", latency=0.3, count=12)
        ttl = {"VAULT_ROTATOR_LEASE_TTL": "10s"}  # a client attempt may take 0.3 s
        first = fleet.cli(
            "rotate", "--env", env, "--emergency", "--yes", "--revoke-old-now", "--wait",
            VAULT_ROTATOR_FAULT_AT="create", **ttl,
        )  # fmt: skip
        out1, err1 = first.communicate(timeout=90)
        assert first.returncode == -signal.SIGKILL, err1
        # creates of several keys were sent before the first answer came back (the kill):
        # each is logged once its 0.3 s have passed
        time.sleep(1.0)
        creates = [m for m in fleet.emulator.mutation_log() if m["route"] == "create"]
        keys = {str(m["name"]).split("-")[1] for m in creates}
        assert len(keys) > 1, keys
        rerun = fleet.cli("rotate", "--env", env, "--emergency", "--yes", "--revoke-old-now",
                          "--wait", **ttl)  # fmt: skip
        out2, err2 = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, out2 + err2
        assert "lr_live_" not in out1 + err1 + out2 + err2
        live = fleet.live()
        for name in fleet.names:
            served = fleet.served(name)
            assert served in live, name  # no lost key
            assert fleet.old[name] not in live, name
            assert fleet.versions(name) == 2, name  # one published rotation
            assert len(fleet.rotations_created(name)) == 1, name
            assert fleet.named_live(name) == {served}, name  # lost answers swept: no orphan
