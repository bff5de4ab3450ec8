"""Contract test of the Vault adapter against a real Vault API (OpenBao's dev server here)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hvac
import pytest

from vault_rotator import cli
from vault_rotator.errors import (
    CasConflictError,
    ConfigError,
    StoreError,
    StorePermissionError,
    StoreUnavailableError,
)
from vault_rotator.store.vault import VaultConnection, VaultKv, connect_from_env
from vault_rotator.testing.vault_server import VaultServer, bao_dev_server


@pytest.fixture
def kv(vault: VaultServer) -> Iterator[VaultKv]:
    """The dev server's KV v2 mount `secret/`."""
    conn = VaultConnection(vault.addr, vault.token)
    yield conn.kv("secret")
    conn.close()


@pytest.fixture
def path() -> str:
    """A fresh secret path per test."""
    return f"contract/{uuid.uuid4().hex}"


def test_write_then_read_returns_data_and_version(kv: VaultKv, path: str) -> None:
    """A first write with cas=0 creates version 1 whose data reads back unchanged."""
    assert kv.read(path) is None
    assert kv.current_version(path) == 0
    assert kv.write(path, {"api_key": "v1", "n": 1}, cas=0) == 1
    got = kv.read(path)
    assert got is not None
    assert got.version == 1
    assert dict(got.data) == {"api_key": "v1", "n": 1}
    assert not got.deleted


def test_versions_accumulate_and_old_versions_stay_readable(kv: VaultKv, path: str) -> None:
    """Each CAS write adds a version; an older version can still be read by number."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    assert kv.write(path, {"v": 3}, cas=2) == 3
    assert kv.current_version(path) == 3
    old = kv.read(path, version=2)
    assert old is not None
    assert old.data == {"v": 2}
    assert kv.read(path, version=9) is None


def test_cas_conflict_is_its_own_error_and_writes_nothing(kv: VaultKv, path: str) -> None:
    """A write against a stale version raises CasConflictError and leaves the secret as it was."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    with pytest.raises(CasConflictError, match="check-and-set"):
        kv.write(path, {"v": "stale"}, cas=1)
    with pytest.raises(CasConflictError):
        kv.write(path, {"v": "create"}, cas=0)
    got = kv.read(path)
    assert got is not None
    assert got.version == 2
    assert got.data == {"v": 2}


def test_custom_metadata_round_trips(kv: VaultKv, path: str) -> None:
    """Custom metadata set on a path shows on the next read."""
    kv.write(path, {"v": 1}, cas=0)
    kv.set_custom_metadata(path, {"rotation_id": "01abc", "managed-by": "vault-rotator"})
    got = kv.read(path)
    assert got is not None
    assert got.custom_metadata == {"rotation_id": "01abc", "managed-by": "vault-rotator"}


def test_destroy_removes_every_version_and_metadata(kv: VaultKv, path: str) -> None:
    """Destroying a path removes all versions: nothing reads back, the version count restarts."""
    kv.write(path, {"v": 1}, cas=0)
    kv.write(path, {"v": 2}, cas=1)
    kv.destroy(path)
    assert kv.read(path) is None
    assert kv.read(path, version=1) is None
    assert kv.current_version(path) == 0
    assert kv.write(path, {"v": "again"}, cas=0) == 1
    kv.destroy(path)
    kv.destroy(path)  # destroying an absent path is not an error


def test_list_shows_children(kv: VaultKv, path: str) -> None:
    """Listing a folder shows the secrets written below it and an absent folder lists empty."""
    kv.write(f"{path}/a", {"v": 1}, cas=0)
    kv.write(f"{path}/sub/b", {"v": 1}, cas=0)
    assert sorted(kv.list(path)) == ["a", "sub/"]
    assert kv.list(f"{path}/nothing-here") == []


def test_soft_deleted_current_version_reads_as_deleted(
    vault: VaultServer, kv: VaultKv, path: str
) -> None:
    """A soft-deleted latest version reads back flagged deleted with no data, not as an error."""
    kv.write(path, {"v": 1}, cas=0)
    client = hvac.Client(url=vault.addr, token=vault.token)
    client.secrets.kv.v2.delete_latest_version_of_secret(path=path, mount_point="secret")
    got = kv.read(path)
    assert got is not None
    assert got.deleted
    assert got.data == {}
    assert kv.current_version(path) == 1


def test_capabilities_reports_root_and_limited_tokens(vault: VaultServer, path: str) -> None:
    """capabilities-self reports a limited token's real capabilities per path."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    name = f"ro-{uuid.uuid4().hex[:8]}"
    admin.sys.create_or_update_policy(
        name, f'path "secret/data/{path}" {{ capabilities = ["read"] }}'
    )
    limited = admin.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"]
    conn = VaultConnection(vault.addr, limited)
    caps = conn.kv("secret").capabilities([f"secret/data/{path}", "secret/data/elsewhere"])
    assert caps[f"secret/data/{path}"] == frozenset({"read"})
    assert caps["secret/data/elsewhere"] == frozenset({"deny"})
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
