"""Acks end to end: the daemon as a subprocess, real ``bao agent`` + consumer pairs built from
the shipped files, ``require_acks: 2``, least-privilege tokens.

Two keys, two instances each (``web-1``, ``web-2``). Every agent renders the shipped key and
version templates with a consumer-only token and runs the shipped ``vault_rotator_ack.py`` after
each render (``agent`` acks); every consumer is the shipped ``consumer.py``, acknowledging the
key it called with (``app`` acks). On ``good`` both instances switch: the rotation completes.
On ``stuck``, ``web-2``'s agent re-reads the secret only hourly, so it never acknowledges the new
version: the rotation stalls ``acks-missing`` naming it, both keys alive. No consumer call fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import hvac
import pytest
from test_acks_consumer import consumer_process
from test_daemon_process import wait_for
from world import MANAGEMENT_KEY

from vault_rotator import cli
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.session import StateStore
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.ack_agent import acking_agent
from vault_rotator.testing.chaos_figures import consumer_calls
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
  pickup_timeout: 25s
  drain_period: 3s
  drain_timeout: 90s
  require_acks: 2
keys:
  - {{name: good, secret_path: {env}/good, allowed_providers: [openai]}}
  - {{name: stuck, secret_path: {env}/stuck, allowed_providers: [openai]}}
"""
INSTANCES = ("web-1", "web-2")


def _policy(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli.main(["vault-policy", *argv]) == 0
    return capsys.readouterr().out


def _token(admin: hvac.Client, name: str, rules: str) -> str:
    admin.sys.create_or_update_policy(name, rules)
    return str(admin.auth.token.create(policies=[name], ttl="30m")["auth"]["client_token"])


@pytest.mark.slow
def test_require_acks_completes_with_both_instances_and_stalls_naming_the_silent_one(
    vault: VaultServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """good: succeeded after both instances app-acked the new version; stuck: stalled
    acks-missing naming web-2, old and new key alive; zero failed calls; status shows acks."""
    env = f"a{uuid.uuid4().hex[:8]}"
    emulator = Emulator(dialect="b", management_keys=[MANAGEMENT_KEY]).start()
    admin = hvac.Client(url=vault.addr, token=vault.token)
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{env}-admin/management", {"key": MANAGEMENT_KEY}, cas=0)
    old_ids = {}
    for name in ("good", "stuck"):
        old_ids[name], value = emulator.seed_key(f"{name}-0", allowed_providers=["openai"])
        kv.write(f"{env}/{name}", {"api_key": value, "key_id": old_ids[name]}, cas=0)
    (tmp_path / "a.yaml").write_text(CONFIG.format(env=env, base_url=emulator.base_url))
    config = ["--config", str(tmp_path)]
    rotator = _token(admin, f"{env}-rotator", _policy(["rotator", *config], capsys))
    store, acks = StateStore(kv, f"{env}-rotator"), AckStore(kv, f"{env}-rotator")
    outputs: list[list[str]] = []
    daemon = None
    try:
        with contextlib.ExitStack() as stack:
            for name in ("good", "stuck"):
                rules = _policy(["consumer", f"{env}/{name}", *config], capsys)
                token = _token(admin, f"{env}-{name}", rules)
                for instance in INSTANCES:
                    agent = stack.enter_context(
                        acking_agent(
                            vault.addr, token, secret_api_path=f"secret/data/{env}/{name}",
                            ack_path=f"secret/data/{acks.folder(env, name)}", instance=instance,
                            render_interval="1h" if (name, instance) == ("stuck", "web-2")
                            else "1s",
                        )
                    )  # fmt: skip
                    outputs.append(
                        stack.enter_context(
                            consumer_process(agent.destination, emulator.base_url, agent.app_env())
                        )
                    )
            wait_for(
                lambda: all(len(acks.kv.list(acks.folder(env, n))) == 2 for n in ("good", "stuck")),
                20,
                "every instance's first ack",
            )
            daemon = subprocess.Popen(
                [sys.executable, "-m", "vault_rotator", "--log-level", "debug", "run", *config,
                 "--listen", f"127.0.0.1:{free_port()}"],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **vault.env(),
                               "VAULT_TOKEN": rotator, "VAULT_ROTATOR_LEASE_TTL": "6s"},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip

            def settled() -> bool:
                good = store.read(env, "good")[0]
                stuck = store.read(env, "stuck")[0].rotation
                return bool(good.outcomes) and stuck is not None and stuck.stalled is not None

            wait_for(settled, 90, "good to finish and stuck to stall")
            time.sleep(1.0)  # the consumers go on calling
            capsys.readouterr()
            for name, value in {**vault.env(), "VAULT_TOKEN": rotator}.items():
                monkeypatch.setenv(name, value)
            assert cli.main(["status", "--json", *config]) == 1  # a key is stalled
            rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)["keys"]}
        good = store.read(env, "good")[0]
        assert [o.outcome for o in good.outcomes] == [reasons.SUCCEEDED]
        live = {k["id"] for k in emulator.live_keys()}
        assert old_ids["good"] not in live
        stuck = store.read(env, "stuck")[0].rotation
        assert stuck is not None
        assert stuck.stalled is not None
        assert stuck.stalled.reason == reasons.ACKS_MISSING
        assert stuck.stalled.detail.endswith("not acknowledged: web-2")
        assert {old_ids["stuck"], stuck.new_key_id} <= live  # both keys alive
        good_acks = {a["instance"]: a for a in rows[f"{env}/good"]["acks"]["instances"]}
        assert sorted(good_acks) == list(INSTANCES)
        assert all(a["kind"] == "app" and a["current"] for a in good_acks.values())
        stuck_row = rows[f"{env}/stuck"]
        assert stuck_row["state"] == f"stalled:{reasons.ACKS_MISSING}"
        versions = {a["instance"]: a["version"] for a in stuck_row["acks"]["instances"]}
        assert versions == {"web-1": 2, "web-2": 1}
        assert stuck_row["acks"]["acknowledged"] == 1
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            _out, err = daemon.communicate(timeout=20)
            assert daemon.returncode == 0, err[-2000:]
            assert "Traceback" not in err
            assert "lr_live_" not in err
        emulator.stop()
        conn.close()
    for lines in outputs:
        ok, failed = consumer_calls(lines)
        assert ok > 20
        assert failed == 0
        assert "lr_live_" not in "\n".join(lines)
