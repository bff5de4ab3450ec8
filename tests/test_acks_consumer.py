"""The shipped consumer side of acks, on a real OpenBao: ``deploy/agent/vault_rotator_ack.py``
(the agent's command and the app's helper) with a consumer-only token, and a real ``bao agent``
running it from the shipped templates."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import hvac
import pytest
from test_daemon_process import wait_for

from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.acks import Ack, AckPolicy
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.ack_agent import ACK_SCRIPT, acking_agent
from vault_rotator.testing.vault_server import VaultServer

REPO = Path(__file__).resolve().parent.parent
CONSUMER = REPO / "deploy" / "compose" / "consumer.py"


@contextlib.contextmanager
def consumer_process(key_file: Path, base_url: str, env: dict[str, str]) -> Iterator[list[str]]:
    """The shipped consumer calling every 0.1 s with ``env`` added; its lines once stopped."""
    proc = subprocess.Popen(
        [sys.executable, str(CONSUMER), "--key-file", str(key_file), "--base-url", base_url,
         "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env},
    )  # fmt: skip
    lines: list[str] = []
    try:
        yield lines
    finally:
        proc.send_signal(signal.SIGTERM)  # as a supervisor stops it (SIGINT may be ignored)
        out, _ = proc.communicate(timeout=15)
        lines.extend(out.splitlines())


def _helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vault_rotator_ack", ACK_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class World:
    """One key's secret, a consumer-only token in a file, and its ack folder."""

    def __init__(self, vault: VaultServer, tmp: Path) -> None:
        self.env = f"c{uuid.uuid4().hex[:8]}"
        self.admin = hvac.Client(url=vault.addr, token=vault.token)
        self.conn = VaultConnection(vault.addr, vault.token)
        self.kv: VaultKv = self.conn.kv("secret")
        self.acks = AckStore(self.kv, f"{self.env}-rotator")
        self.folder = self.acks.folder(self.env, "app")
        rules = f"""
path "secret/data/{self.env}/app" {{ capabilities = ["read"] }}
path "secret/data/{self.folder}/+" {{ capabilities = ["create", "update"] }}
"""
        self.admin.sys.create_or_update_policy(f"{self.env}-consumer", rules)
        created = self.admin.auth.token.create(policies=[f"{self.env}-consumer"], ttl="10m")
        self.token = str(created["auth"]["client_token"])
        self.token_file = tmp / "token"
        self.token_file.write_text(self.token)
        self.version_file = tmp / "api_key.version"
        self.addr = vault.addr

    def publish(self, value: str, key_id: str, version: int) -> None:
        self.kv.write(f"{self.env}/app", {"api_key": value, "key_id": key_id}, cas=version - 1)
        info = {"version": version, "key_id": key_id, "key_sha256": _sha(value)}
        self.version_file.write_text(json.dumps(info))

    def read(self) -> dict[str, Ack]:
        facts = self.acks.read(self.env, "app", AckPolicy())
        assert facts.problems == ()
        return {a.instance: a for a in facts.acks}

    def argv(self, *extra: str) -> list[str]:
        return [
            sys.executable, str(ACK_SCRIPT), "agent", "--version-file", str(self.version_file),
            "--ack-path", f"secret/data/{self.folder}", "--token-file", str(self.token_file),
            "--vault-addr", self.addr, *extra,
        ]  # fmt: skip


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def world(vault: VaultServer, tmp_path: Path) -> Iterator[World]:
    made = World(vault, tmp_path)
    yield made
    made.conn.close()


def test_the_agent_command_writes_an_agent_ack_with_the_consumer_token(world: World) -> None:
    """`vault_rotator_ack.py agent` acks the version file's version; the rotator reads it back."""
    world.publish("lr_live_" + "a" * 32, "key_a", 1)
    done = subprocess.run(
        world.argv("--instance", "web-1"), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "vault-rotator ack: web-1 has version 1 (key_a)"
    ack = world.read()["web-1"]
    assert (ack.kind, ack.version, ack.key_id) == ("agent", 1, "key_a")
    assert world.token not in done.stdout + done.stderr
    assert "lr_live_" not in done.stdout + done.stderr


def test_the_agent_command_fails_in_one_line_without_a_traceback(world: World) -> None:
    """No version file, a refused path, a bad instance name: exit 1 with one line each."""
    cases = [
        (world.argv("--instance", "web-1"), "cannot read the version file"),
        (world.argv("--instance", "Bad Name"), "is not [a-z0-9]"),
    ]
    world.publish("lr_live_" + "b" * 32, "key_b", 1)
    other = [*world.argv("--instance", "web-1")]
    other[other.index("--ack-path") + 1] = f"secret/data/{world.env}-rotator/acks/x/y"
    cases.append((other, "Vault answered 403"))
    world.version_file.unlink()
    for argv, said in cases[:1]:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert (done.returncode, len(done.stderr.splitlines())) == (1, 1), done.stderr
        assert said in done.stderr
    world.publish("lr_live_" + "b" * 32, "key_b", 2)
    for argv, said in cases[1:]:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert (done.returncode, len(done.stderr.splitlines())) == (1, 1), done.stderr
        assert said in done.stderr
        assert world.token not in done.stderr


def test_the_app_helper_acks_only_the_key_on_disk_once_per_version(world: World) -> None:
    """app(key): nothing for a key the version file does not name; an app ack per version and
    once more after the settle time, another once the heartbeat is due."""
    helper = _helper()
    value = "lr_live_" + "c" * 32
    world.publish(value, "key_c", 1)
    acker = helper.Acker(
        version_file=str(world.version_file), ack_path=f"secret/data/{world.folder}",
        token_file=str(world.token_file), addr=world.addr, instance="web-2", heartbeat=3600,
        settle=3600,
    )  # fmt: skip
    assert acker.app("lr_live_" + "x" * 32) is False
    assert world.read() == {}
    assert acker.app(value) is True
    assert acker.app(value) is False
    first = world.read()["web-2"]
    assert (first.kind, first.version) == ("app", 1)
    acker.settle = 0  # once more after the settle time (an agent ack may have overwritten it)
    assert acker.app(value) is True
    assert acker.app(value) is False
    acker.heartbeat = 0
    assert acker.app(value) is True
    newer = "lr_live_" + "d" * 32
    world.publish(newer, "key_d", 2)
    assert acker.app(value) is False  # the app still calls with the old key: no ack
    assert acker.app(newer) is True
    assert world.read()["web-2"].version == 2


@pytest.mark.slow
def test_a_real_agent_acks_each_new_version_it_renders(world: World) -> None:
    """bao agent with the shipped templates: an agent ack at start and after a new version."""
    world.kv.write(f"{world.env}/app", {"api_key": "lr_live_" + "e" * 32, "key_id": "key_e"}, cas=0)
    with acking_agent(
        world.addr, world.token, secret_api_path=f"secret/data/{world.env}/app",
        ack_path=f"secret/data/{world.folder}", instance="vm-1",
    ):  # fmt: skip
        wait_for(lambda: "vm-1" in world.read(), 15, "the first agent ack")
        assert world.read()["vm-1"].version == 1
        world.kv.write(
            f"{world.env}/app", {"api_key": "lr_live_" + "f" * 32, "key_id": "key_f"}, cas=1
        )
        wait_for(lambda: world.read()["vm-1"].version == 2, 15, "the agent ack of version 2")
    ack = world.read()["vm-1"]
    assert (ack.kind, ack.key_id) == ("agent", "key_f")
