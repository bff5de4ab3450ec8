"""End to end as deployed: the daemon with split listeners and least-privilege Vault policies,
consumers fed by real ``bao agent``s through the shipped template, continuous traffic.

Two keys, each with its own agent + consumer pair: the agent renders the shipped
``deploy/agent/arouter-api-key.ctmpl`` (its path set to the key's, as the template says to do)
with a token holding only ``vault-policy consumer``; the consumer is the shipped
``deploy/compose/consumer.py``, re-reading the file before every call. The daemon runs with a
token holding only ``vault-policy rotator``, ``--listen`` for the control API and
``--metrics-listen`` for probes and metrics. Its schedule rotates both never-rotated keys.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import hvac
import pytest
from test_daemon_process import wait_for
from world import MANAGEMENT_KEY

from vault_rotator import cli
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.session import StateStore
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer, free_port

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = (REPO / "deploy" / "agent" / "arouter-api-key.ctmpl").read_text()
SHIPPED_PATH = "secret/data/arouter/dev/demo-app"
NAMES = ("api", "worker")
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  management_key:
    path: {env}-admin/management
  usage_lag: 1s
  poll_interval: 0.5s
vault:
  kv_mount: secret
  state_prefix: {env}-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 90s
  drain_period: 3s
  drain_timeout: 90s
keys:
  - name: api
    secret_path: {env}/api
    allowed_providers: [openai]
  - name: worker
    secret_path: {env}/worker
    allowed_providers: [openai]
"""


def _policy(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli.main(["vault-policy", *argv]) == 0
    return capsys.readouterr().out


def _token(admin: hvac.Client, name: str, rules: str) -> str:
    admin.sys.create_or_update_policy(name, rules)
    created = admin.auth.token.create(policies=[name], ttl="30m")
    return str(created["auth"]["client_token"])


@contextlib.contextmanager
def _consumer(key_file: Path, base_url: str) -> Iterator[list[str]]:
    """The shipped consumer, calling every 0.1 s; its output lines once stopped."""
    script = REPO / "deploy" / "compose" / "consumer.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--key-file", str(key_file), "--base-url", base_url,
         "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        yield lines
    finally:
        proc.send_signal(signal.SIGTERM)  # as a supervisor stops it (SIGINT may be ignored)
        out, _ = proc.communicate(timeout=15)
        lines.extend(out.splitlines())


@pytest.mark.slow
def test_scheduled_rotation_through_agents_with_split_listeners_and_least_privilege(
    vault: VaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both keys rotate on schedule with zero failed consumer calls; probes and metrics answer
    on their own listener, the control API on its own."""
    env = f"x{uuid.uuid4().hex[:8]}"
    emulator = Emulator(dialect="b", management_keys=[MANAGEMENT_KEY]).start()
    admin = hvac.Client(url=vault.addr, token=vault.token)
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{env}-admin/management", {"key": MANAGEMENT_KEY}, cas=0)
    old_ids = {}
    for name in NAMES:
        old_ids[name], value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        kv.write(f"{env}/{name}", {"api_key": value, "key_id": old_ids[name]}, cas=0)
    (tmp_path / "x.yaml").write_text(CONFIG.format(env=env, base_url=emulator.base_url))
    config = ["--config", str(tmp_path)]
    rotator = _token(admin, f"{env}-rotator", _policy(["rotator", *config], capsys))
    control, metrics = free_port(), free_port()
    daemon = None
    try:
        with contextlib.ExitStack() as stack:
            outputs = []
            for name in NAMES:
                consumer = _token(
                    admin, f"{env}-{name}", _policy(["consumer", f"{env}/{name}", *config], capsys)
                )
                template = TEMPLATE.replace(SHIPPED_PATH, f"secret/data/{env}/{name}")
                agent = stack.enter_context(
                    vault_agent(vault.addr, consumer, mount="secret", path=f"{env}/{name}",
                                template=template)
                )  # fmt: skip
                outputs.append(stack.enter_context(_consumer(agent.destination, emulator.base_url)))
            daemon = subprocess.Popen(
                [sys.executable, "-m", "vault_rotator", "run", *config,
                 "--listen", f"127.0.0.1:{control}", "--metrics-listen", f"127.0.0.1:{metrics}"],
                env={**os.environ, **vault.env(), "VAULT_TOKEN": rotator,
                     "VAULT_ROTATOR_LEASE_TTL": "6s"},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            store = StateStore(kv, f"{env}-rotator")

            def done() -> bool:
                return all(store.read(env, name)[0].outcomes for name in NAMES)

            wait_for(done, 120, "both scheduled rotations")
            time.sleep(1.0)  # the consumers go on calling with the new keys
            with httpx.Client(timeout=5) as http:
                side = f"http://127.0.0.1:{metrics}"
                assert http.get(f"{side}/healthz").status_code == 200
                assert http.get(f"{side}/readyz").status_code == 200
                assert "vault_rotator_rotations_total" in http.get(f"{side}/metrics").text
                assert http.get(f"{side}/v1/status").status_code == 404
                front = f"http://127.0.0.1:{control}"
                for path in ("/healthz", "/readyz", "/metrics"):
                    assert http.get(f"{front}{path}").status_code == 404
                assert http.get(f"{front}/v1/status").status_code == 401
        for name in NAMES:
            record = store.read(env, name)[0]
            assert [(o.outcome, o.trigger) for o in record.outcomes] == [
                (reasons.SUCCEEDED, "schedule")
            ]
            served = kv.read(f"{env}/{name}")
            assert served is not None
            assert old_ids[name] not in {k["id"] for k in emulator.live_keys()}
            assert served.data["key_id"] in {k["id"] for k in emulator.live_keys()}
        for lines in outputs:
            calls = [line for line in lines if line.startswith("call ")]
            assert len(calls) > 20
            assert all(" HTTP 200 " in line for line in calls), [c for c in calls if "200" not in c]
            assert len({re.sub(r".* with (fp:\w+).*", r"\1", c) for c in calls}) == 2
            assert "lr_live_" not in "\n".join(lines)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            _out, err = daemon.communicate(timeout=15)
            assert daemon.returncode == 0, err[-2000:]
            assert "Traceback" not in err
            assert "lr_live_" not in err
        emulator.stop()
        conn.close()
