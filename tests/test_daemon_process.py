"""The daemon as a real process: resume, health, metrics, control API, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import hvac
import pytest
from prometheus_client.parser import text_string_to_metric_families
from world import MANAGEMENT_KEY, LiveEnv

from vault_rotator.engine import reasons
from vault_rotator.testing.vault_server import VaultServer, free_port


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cli(vault: VaultServer, *args: str, token: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **vault.env(), "VAULT_ROTATOR_LEASE_TTL": "6s"}
    if token is not None:
        env["VAULT_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "vault_rotator", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def token_with(vault: VaultServer, name: str, rules: str) -> str:
    admin = hvac.Client(url=vault.addr, token=vault.token)
    admin.sys.create_or_update_policy(name, rules)
    return str(admin.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"])


@pytest.mark.slow
def test_daemon_process_resumes_serves_and_stops_cleanly(
    vault: VaultServer, live_env: LiveEnv
) -> None:
    """Resume on start, health, metrics, 401/403/202/400 control, no traceback, SIGTERM < 10 s."""
    env, config, store = live_env.env, str(live_env.config), live_env.store
    started = cli(vault, "rotate", f"{env}/app", "--config", config)
    _out, err = started.communicate(timeout=60)
    assert started.returncode == 0, err
    assert store.read(env, "app")[0].phase == reasons.PUBLISHED  # left in flight

    port = free_port()
    daemon = cli(vault, "run", "--config", config, "--listen", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as http:
            wait_for(lambda: _get(http, "/healthz") == 200, 20, "healthz")
            wait_for(lambda: _get(http, "/readyz") == 200, 20, "readyz")
            wait_for(lambda: store.read(env, "app")[0].rotation is None, 40, "the resumed rotation")
            record = store.read(env, "app")[0]
            assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED]
            assert live_env.old_id not in {k["id"] for k in live_env.emulator.live_keys()}

            families = {
                f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)
            }
            samples = families["vault_rotator_rotations"].samples
            assert any(
                s.labels.get("outcome") == "succeeded"
                and s.labels.get("key") == "app"
                and s.value == 1
                for s in samples
            )
            assert "vault_rotator_provider_requests" in families

            route = f"/v1/rotate/{env}/app"
            assert http.post(route).status_code == 401
            assert (
                http.post(
                    route, headers={"Authorization": "Bearer s.bogus0000000000000000000"}
                ).status_code
                == 401
            )
            control = f"secret/data/{env}/vault-rotator/control/{env}/app"
            reader = token_with(
                vault, f"{env}-read", f'path "{control}" {{ capabilities = ["read"] }}'
            )
            denied = http.post(route, headers={"Authorization": f"Bearer {reader}"})
            assert denied.status_code == 403
            operator = token_with(
                vault, f"{env}-op", f'path "{control}" {{ capabilities = ["read", "update"] }}'
            )
            status = http.get("/v1/status", headers={"Authorization": f"Bearer {operator}"})
            assert [row["key"] for row in status.json()["keys"]] == [f"{env}/app"]
            accepted = http.post(route, headers={"Authorization": f"Bearer {operator}"})
            assert accepted.status_code in (200, 202), accepted.text
            assert accepted.json()["rotation_id"]
            assert reader not in accepted.text
            assert operator not in accepted.text
            as_operator = {"Authorization": f"Bearer {operator}"}
            nested = http.post(route, content=b"[" * 30_000, headers=as_operator)
            assert nested.status_code == 400
            assert "JSON" in nested.json()["error"]
            ghost = http.post(
                f"/v1/rotate/{env}/ghost", headers={"Authorization": f"Bearer {reader}"}
            )
            assert ghost.status_code == denied.status_code
            assert ghost.text.replace("ghost", "app") == denied.text
        remote = cli(vault, "status", "--json", "--daemon", base, token=operator)
        out, err = remote.communicate(timeout=30)
        assert remote.returncode in (0, 1), err  # 1 only if the new rotation stalled
        assert f"{env}/app" in out
        refused = cli(
            vault, "abort", f"{env}/app", "--config", config, "--daemon", base, token=reader
        )
        out, err = refused.communicate(timeout=30)
        assert refused.returncode == 1
        assert "lacks update" in out
        began = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=15)
        assert daemon.returncode == 0, err
        assert time.monotonic() - began < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    record = store.read(env, "app")[0]
    assert record.lease is None  # released, not left to expire
    assert all(status == 200 for status in live_env.statuses)
    for secret in ("lr_live_", MANAGEMENT_KEY, vault.token):
        assert secret not in out + err
    assert "Traceback" not in err


def _get(http: httpx.Client, path: str) -> int:
    try:
        return http.get(path).status_code
    except httpx.HTTPError:
        return 0
