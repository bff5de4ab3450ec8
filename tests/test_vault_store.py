"""The Vault adapter's own behaviour against a real Vault API (OpenBao's dev server here):
tokens, a sealed or unreachable server, 404s that are not KV v2's, namespaces, proxies.

What every KvStore must do is in the contract suite, ``tests/test_kv_contract.py``, which runs
on this adapter and on the in-memory one.
"""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import hvac
import pytest

from vault_rotator import cli
from vault_rotator.errors import (
    ConfigError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.store.vault import VaultConnection, connect_from_env
from vault_rotator.testing.vault_server import VaultServer, bao_dev_server


@pytest.fixture
def path() -> str:
    """A fresh secret path per test."""
    return f"contract/{uuid.uuid4().hex}"


def test_a_denied_call_does_not_show_the_token(vault: VaultServer, path: str) -> None:
    """A permission error for a limited token names the operation and path, never the token."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    name = f"ro-{uuid.uuid4().hex[:8]}"
    admin.sys.create_or_update_policy(
        name, f'path "secret/data/{path}" {{ capabilities = ["read"] }}'
    )
    limited = admin.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"]
    conn = VaultConnection(vault.addr, limited)
    with pytest.raises(StorePermissionError, match="permission denied") as err:
        conn.kv("secret").write(path, {"v": 1}, cas=0)
    assert limited not in str(err.value)
    conn.close()


def test_revoked_token_is_a_clear_permission_error(vault: VaultServer, path: str) -> None:
    """A revoked token gets a one-line StorePermissionError that does not contain the token."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    token = admin.auth.token.create(ttl="5m")["auth"]["client_token"]
    admin.auth.token.revoke(token)
    conn = VaultConnection(vault.addr, token)
    with pytest.raises(StorePermissionError) as err:
        conn.kv("secret").read(path)
    assert token not in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(StorePermissionError):
        conn.check()
    conn.close()


def test_sealed_and_unreachable_vault_are_unavailable_errors() -> None:
    """A sealed server and a stopped server both raise StoreUnavailableError naming the path."""
    with bao_dev_server() as server:
        conn = VaultConnection(server.addr, server.token)
        conn.kv("secret").write("x", {"v": 1}, cas=0)
        hvac.Client(url=server.addr, token=server.token).sys.seal()
        with pytest.raises(StoreUnavailableError, match="sealed"):
            conn.kv("secret").read("x")
        with pytest.raises(StoreUnavailableError, match="sealed"):
            conn.check()
        conn.close()
    conn = VaultConnection(server.addr, server.token, timeout=2)
    with pytest.raises(StoreUnavailableError, match=r"unreachable \(read on secret/x\)"):
        conn.kv("secret").read("x")
    conn.close()


def test_connect_from_env_requires_addr_and_token(vault: VaultServer) -> None:
    """connect_from_env reads the VAULT_* names and refuses a missing token with a clear error."""
    with pytest.raises(ConfigError, match="VAULT_TOKEN"):
        connect_from_env({"VAULT_ADDR": vault.addr})
    with pytest.raises(ConfigError, match="VAULT_ADDR"):
        connect_from_env({"VAULT_TOKEN": "x"})
    conn = connect_from_env({"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token})
    conn.check()
    conn.close()


@pytest.mark.parametrize(
    ("mount", "namespace", "needle"),
    [("no-such-mount", None, "no handler for route"), ("secret", "../../x", "namespace")],
)
def test_a_404_that_is_not_kv_saying_nothing_here_is_an_error(
    vault: VaultServer, mount: str, namespace: str | None, needle: str
) -> None:
    """A wrong mount or namespace answers 404 too: read, metadata and list must not say empty."""
    conn = VaultConnection(vault.addr, vault.token, namespace=namespace)
    kv = conn.kv(mount)
    try:
        for call in (
            lambda: kv.read("a/b"),
            lambda: kv.current_version("a/b"),
            lambda: kv.list("a"),
        ):
            with pytest.raises(StoreError, match="not as a KV v2 mount does") as info:
                call()
            assert needle in str(info.value)
            assert "VAULT_NAMESPACE" in str(info.value)
    finally:
        conn.close()


def test_a_proxy_answering_404_to_everything_is_not_an_empty_vault() -> None:
    """An HTML 404 from something in front of Vault is an error naming the path, not "no data"."""

    class NotVault(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>404 Not Found</html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotVault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn = VaultConnection(f"http://127.0.0.1:{server.server_port}", "hvs.not-a-real-token-xyz")
    try:
        with pytest.raises(StoreError, match=r"404 for secret/a/b, not as a KV v2 mount") as info:
            conn.kv("secret").read("a/b")
        assert "not-a-real-token" not in str(info.value)
    finally:
        conn.close()
        server.shutdown()
        server.server_close()


def test_status_with_a_wrong_namespace_fails_in_one_line(
    vault: VaultServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` under a namespace that does not exist exits 1 naming it, not "never-rotated"."""
    for name, value in {**vault.env(), "VAULT_NAMESPACE": "../../x"}.items():
        monkeypatch.setenv(name, value)
    config = str(Path(__file__).resolve().parent.parent / "config")
    assert cli.main(["status", "--config", config]) == 1
    out, err = capsys.readouterr()
    assert "never-rotated" not in out
    (line,) = [x for x in err.splitlines() if x.startswith("vault-rotator:")]
    assert "namespace not found" in line
    assert "Traceback" not in err


def test_a_record_nested_past_the_parsers_depth_is_a_one_line_store_error(
    vault: VaultServer,
) -> None:
    """Anyone with write access may store JSON a thousand levels deep: reading it is a
    StoreError naming the path, not a RecursionError out of the JSON parser."""
    path = f"deep-{uuid.uuid4().hex[:8]}/record"
    body = '{"data": {"v": ' + "[" * 1000 + "1" + "]" * 1000 + "}}"
    answer = httpx.post(
        f"{vault.addr}/v1/secret/data/{path}",
        headers={"X-Vault-Token": vault.token},
        content=body,
        timeout=10,
    )
    assert answer.status_code == 200
    kv = VaultConnection(vault.addr, vault.token).kv("secret")
    with pytest.raises(StoreError, match="nested too deep") as caught:
        kv.read(path)
    assert "\n" not in str(caught.value)
    assert path in str(caught.value)
