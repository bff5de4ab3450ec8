"""End to end: the demo through a real Vault Agent, and a real `rotate` process killed mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from world import LiveEnv

from vault_rotator.commands.demo_cmd import run_demo
from vault_rotator.engine import reasons
from vault_rotator.policy import load_policies
from vault_rotator.testing.vault_server import VaultServer

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_rotates_through_vault_agent_with_zero_failures() -> None:
    """The README's demo: an app fed by bao agent switches keys with no failed call, and the
    app's ack of the new version is printed as it arrives (the agent's ack of the same
    instance shares its record, so on a loaded machine the app's may overwrite it unseen)."""
    policy = load_policies(REPO / "config").key("dev", "demo-app")
    lines: list[str] = []
    result = run_demo(policy, say=lines.append)
    assert result.progress.outcome is not None
    assert result.progress.outcome.outcome == reasons.SUCCEEDED
    assert not result.old_key_live
    assert result.new_key_id is not None
    assert result.app_statuses[200] > 0
    assert sum(n for status, n in result.app_statuses.items() if status != 200) == 0
    assert result.calls_by_key[result.old_key_id][200] > 0  # the app used the old key first
    assert result.calls_by_key[result.new_key_id][200] > 0  # ... and then the new one
    assert result.secret_versions == (1, 2)
    text = "\n".join(lines)
    assert "[ack]      demo-app-1: app ack of secret v2" in text
    assert "lr_live_" not in text
    assert "lr_mgmt_" not in text


def _cli(vault: VaultServer, config: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, **vault.env(), "VAULT_ROTATOR_LEASE_TTL": "6s", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "vault_rotator", *args, "--config", str(config)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkilled_rotate_is_finished_by_a_second_process(
    vault: VaultServer, live_env: LiveEnv
) -> None:
    """A `rotate --wait` SIGKILLed while it holds the lease (right after deleting the old key)
    is finished by another process once the lease expires. (A kill right after publishing
    leaves no lease: "published" is saved with the lease given back.)"""
    tag, config = live_env.env, live_env.config
    first = _cli(vault, config, "rotate", f"{tag}/app", "--wait", VAULT_ROTATOR_FAULT_AT="delete")
    _out, err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, err
    store = live_env.store
    record, _ = store.read(tag, "app")
    assert record.phase == reasons.PUBLISHED
    assert record.lease is not None  # a killed process releases nothing
    began = time.monotonic()
    second = _cli(vault, config, "rotate", f"{tag}/app", "--wait")
    out, err = second.communicate(timeout=90)
    assert second.returncode == 0, err
    assert "succeeded" in out
    assert time.monotonic() - began >= 3  # it had to wait for the dead process's lease
    record, _ = store.read(tag, "app")
    assert record.phase == reasons.IDLE
    assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED]
    emulator = live_env.emulator
    assert {k["id"] for k in emulator.live_keys()} == {record.current_key_id}
    assert live_env.old_id not in {k["id"] for k in emulator.live_keys()}
    assert all(status == 200 for status in live_env.statuses)
    assert "lr_live_" not in out + err


@pytest.mark.slow
def test_rotate_cli_dry_run_and_status(vault: VaultServer, live_env: LiveEnv) -> None:
    """--dry-run changes nothing; rotate publishes and says how to go on; status shows it."""
    tag, config = live_env.env, live_env.config
    dry = _cli(vault, config, "rotate", f"{tag}/app", "--dry-run")
    out, err = dry.communicate(timeout=30)
    assert dry.returncode == 0, err
    assert f"plan for {tag}/app" in out
    assert len(live_env.emulator.all_keys()) == 1
    run = _cli(vault, config, "rotate", f"{tag}/app")
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert f"vault-rotator rotate {tag}/app --wait" in out
    status = _cli(vault, config, "status", "--json")
    out, err = status.communicate(timeout=30)
    assert status.returncode == 0, err
    rows = {row["key"]: row for row in json.loads(out)["keys"]}
    assert rows[f"{tag}/app"]["state"] in ("awaiting-pickup", "draining")
    bad = _cli(vault, config, "rotate", "no-slash")
    _out, err = bad.communicate(timeout=30)
    assert bad.returncode == 2
    assert "ENV/NAME" in err
