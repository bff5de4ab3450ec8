"""Vault logins (token, AppRole, Kubernetes), token renewal and re-login, against real OpenBao.

The Kubernetes method is pointed at :class:`TokenReviewServer`, a loopback stand-in for the
cluster's TokenReview API. Clocks are injected: a FakeClock decides *when* the connection
renews, real OpenBao decides when a token expires (real waits stay at a few seconds).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from structlog.testing import capture_logs

from vault_rotator.errors import ConfigError, StorePermissionError, StoreUnavailableError
from vault_rotator.secret import Secret
from vault_rotator.store.auth import (
    DEFAULT_K8S_JWT_FILE,
    AppRoleAuth,
    KubernetesAuth,
    LoginResult,
    TokenAuth,
)
from vault_rotator.store.session import Step, TokenLease, next_step
from vault_rotator.store.vault import VaultConnection, connect_from_env
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.tokenreview import TokenReviewServer
from vault_rotator.testing.vault_server import (
    VaultServer,
    bao_binary,
    bao_dev_server,
    free_port,
    stop_process,
)

KV_POLICY = """
path "secret/data/auth-test/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/auth-test/*" { capabilities = ["read"] }
"""


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def admin(vault: VaultServer) -> Iterator[hvac.Client]:
    """A root client that sets up auth methods and policies."""
    client = hvac.Client(url=vault.addr, token=vault.token)
    client.sys.create_or_update_policy("auth-test-kv", KV_POLICY)
    yield client
    client.adapter.close()


@dataclass
class AppRole:
    """An AppRole mount and role with its credentials written to files."""

    mount: str
    role: str
    role_id_file: Path
    secret_id_file: Path

    def auth(self) -> AppRoleAuth:
        return AppRoleAuth(self.role_id_file, self.secret_id_file, mount=self.mount)


AppRoleFactory = Callable[..., AppRole]


@pytest.fixture
def make_approle(admin: hvac.Client, tmp_path: Path) -> Iterator[AppRoleFactory]:
    """Create AppRole mounts (policy auth-test-kv) whose role-id/secret-id sit in files."""
    mounts: list[str] = []

    def factory(**role_options: object) -> AppRole:
        mount, role = _unique("approle"), "rotator"
        admin.sys.enable_auth_method("approle", path=mount)
        mounts.append(mount)
        role_options.setdefault("token_policies", ["auth-test-kv"])
        admin.auth.approle.create_or_update_approle(role, mount_point=mount, **role_options)
        role_id = admin.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
        secret_id = admin.auth.approle.generate_secret_id(role, mount_point=mount)
        (tmp_path / f"{mount}.role-id").write_text(role_id + "\n")
        (tmp_path / f"{mount}.secret-id").write_text(secret_id["data"]["secret_id"])
        return AppRole(mount, role, tmp_path / f"{mount}.role-id", tmp_path / f"{mount}.secret-id")

    yield factory
    for mount in mounts:
        admin.sys.disable_auth_method(mount)


@pytest.fixture
def path() -> str:
    """A fresh secret path the auth-test-kv policy may write."""
    return f"auth-test/{uuid.uuid4().hex}"


def _accessor(conn: VaultConnection) -> str:
    lease = conn.session.lease
    assert lease is not None
    return lease.accessor


def test_approle_login_reads_and_writes(
    vault: VaultServer, admin: hvac.Client, make_approle: AppRoleFactory, path: str
) -> None:
    """An AppRole connection logs in lazily once and its token can write and read KV v2."""
    approle = make_approle(token_ttl="1h")
    conn = VaultConnection(vault.addr, auth=approle.auth())
    assert conn.session.logins == 0
    kv = conn.kv("secret")
    with capture_logs() as logs:
        assert kv.write(path, {"api_key": "lr_live_x"}, cas=0) == 1
    assert [e["method"] for e in logs if e["event"] == "vault login"] == ["approle"]
    lease = conn.session.lease
    assert lease is not None
    assert lease.token.reveal() not in repr(logs)
    got = kv.read(path)
    assert got is not None
    assert got.data == {"api_key": "lr_live_x"}
    assert conn.session.logins == 1
    accessor = _accessor(conn)
    looked = admin.auth.token.lookup_accessor(accessor)["data"]
    assert looked["path"] == f"auth/{approle.mount}/login"
    assert "auth-test-kv" in looked["policies"]
    conn.close()
    with pytest.raises(hvac.exceptions.InvalidRequest):  # closing revoked the login token
        admin.auth.token.lookup_accessor(accessor)


def test_closing_leaves_a_caller_supplied_token_alone(
    vault: VaultServer, admin: hvac.Client
) -> None:
    """A token given to the connection belongs to the caller: close does not revoke it."""
    token = admin.auth.token.create(ttl="5m")["auth"]
    conn = VaultConnection(vault.addr, token["client_token"])
    conn.check()
    conn.close()
    assert (
        admin.auth.token.lookup_accessor(token["accessor"])["data"]["accessor"] == token["accessor"]
    )


def test_renewal_keeps_a_short_token_alive_and_max_ttl_leads_to_login(
    vault: VaultServer, admin: hvac.Client, make_approle: AppRoleFactory, path: str
) -> None:
    """A 2s token is renewed in its last third, outlives 2s, and is replaced past its 4s max TTL."""
    approle = make_approle(token_ttl="2s", token_max_ttl="4s")
    clock = FakeClock(start=time.time())
    conn = VaultConnection(vault.addr, auth=approle.auth(), clock=clock)
    kv = conn.kv("secret")

    def wait(seconds: float) -> None:
        time.sleep(seconds)
        clock.advance(seconds)

    kv.write(path, {"v": 1}, cas=0)
    first = _accessor(conn)
    wait(1.4)  # 0.6s of 2s left: renew
    assert kv.current_version(path) == 1
    assert (conn.session.renewals, conn.session.logins) == (1, 1)
    wait(1.0)  # past the first 2s: only the renewal keeps the token alive
    assert kv.current_version(path) == 1
    assert (_accessor(conn), conn.session.logins) == (first, 1)
    assert admin.auth.token.lookup_accessor(first)["data"]["accessor"] == first
    wait(2.0)  # past the 4s max TTL: OpenBao revoked the token, the lease says expired
    assert kv.write(path, {"v": 2}, cas=1) == 2
    assert conn.session.logins == 2
    assert _accessor(conn) != first
    with pytest.raises(hvac.exceptions.VaultError):
        admin.auth.token.lookup_accessor(first)
    conn.close()


def test_failed_renewal_logs_in_again(
    vault: VaultServer, admin: hvac.Client, make_approle: AppRoleFactory, path: str
) -> None:
    """When renew-self is refused (token revoked), the connection logs in again and goes on."""
    approle = make_approle(token_ttl="1h")
    clock = FakeClock(start=time.time())
    conn = VaultConnection(vault.addr, auth=approle.auth(), clock=clock)
    conn.kv("secret").write(path, {"v": 1}, cas=0)
    admin.auth.token.revoke_accessor(_accessor(conn))
    clock.advance(45 * 60)  # 15 of 60 minutes left: due for renewal
    assert conn.renew_or_relogin() is Step.LOGIN
    assert (conn.session.renewals, conn.session.logins) == (0, 2)
    assert conn.kv("secret").current_version(path) == 1
    assert conn.renew_or_relogin() is Step.USE
    conn.close()


def test_revoked_token_triggers_login_and_the_operation_succeeds(
    vault: VaultServer, admin: hvac.Client, make_approle: AppRoleFactory, path: str
) -> None:
    """A 403 caused by a revoked token leads to one new login (with the rotated secret-id file)."""
    approle = make_approle(token_ttl="1h")
    conn = VaultConnection(vault.addr, auth=approle.auth())
    kv = conn.kv("secret")
    kv.write(path, {"v": 1}, cas=0)
    old_secret_id = approle.secret_id_file.read_text()
    rotated = admin.auth.approle.generate_secret_id(approle.role, mount_point=approle.mount)
    approle.secret_id_file.write_text(rotated["data"]["secret_id"])
    admin.auth.approle.destroy_secret_id(approle.role, old_secret_id, mount_point=approle.mount)
    admin.auth.token.revoke_accessor(_accessor(conn))
    assert kv.write(path, {"v": 2}, cas=1) == 2
    assert conn.session.logins == 2
    conn.close()


def test_missing_capability_is_refused_without_a_new_login(
    vault: VaultServer, make_approle: AppRoleFactory
) -> None:
    """A 403 on a path the policy does not cover is StorePermissionError, with no new login."""
    conn = VaultConnection(vault.addr, auth=make_approle(token_ttl="1h").auth())
    with pytest.raises(StorePermissionError, match=r"permission denied"):
        conn.kv("secret").write(f"elsewhere/{uuid.uuid4().hex}", {"v": 1}, cas=0)
    assert conn.session.logins == 1
    conn.close()


def test_wrong_secret_id_is_one_clear_line_without_the_secret(
    vault: VaultServer, make_approle: AppRoleFactory, path: str
) -> None:
    """A refused AppRole login names the endpoint in one line, never the role-id or secret-id."""
    approle = make_approle()
    wrong = "secret-id-" + uuid.uuid4().hex
    approle.secret_id_file.write_text(wrong)
    conn = VaultConnection(vault.addr, auth=approle.auth())
    with capture_logs() as logs, pytest.raises(StorePermissionError) as err:
        conn.kv("secret").read(path)
    message = str(err.value)
    assert f"AppRole login (auth/{approle.mount}/login)" in message
    assert "invalid role or secret ID" in message
    assert "\n" not in message
    for hidden in (wrong, approle.role_id_file.read_text().strip()):
        assert hidden not in message
        assert hidden not in repr(logs)
    conn.close()


def test_unreadable_credential_file_is_a_config_error_naming_it(
    vault: VaultServer, make_approle: AppRoleFactory, path: str
) -> None:
    """A missing or empty secret-id file is a ConfigError naming the file."""
    approle = make_approle()
    approle.secret_id_file.write_text("  \n")
    conn = VaultConnection(vault.addr, auth=approle.auth())
    with pytest.raises(ConfigError, match=f"secret-id file {approle.secret_id_file} is empty"):
        conn.kv("secret").read(path)
    approle.secret_id_file.unlink()
    with pytest.raises(ConfigError, match=f"{approle.secret_id_file}: No such file"):
        conn.kv("secret").read(path)
    conn.close()


def test_token_file_is_read_again_at_each_login(
    vault: VaultServer, admin: hvac.Client, tmp_path: Path, path: str
) -> None:
    """With a token file, a revoked token is replaced by whatever the file now holds."""
    first, second = (
        admin.auth.token.create(policies=["auth-test-kv"], ttl="10m")["auth"]["client_token"]
        for _ in range(2)
    )
    token_file = tmp_path / "token"
    token_file.write_text(first)
    conn = VaultConnection(vault.addr, auth=TokenAuth(token_file=token_file))
    conn.kv("secret").write(path, {"v": 1}, cas=0)
    lease = conn.session.lease
    assert lease is not None
    assert 0 < lease.ttl_s <= 600
    assert lease.renewable
    admin.auth.token.revoke(first)
    token_file.write_text(second)
    assert conn.kv("secret").write(path, {"v": 2}, cas=1) == 2
    assert conn.session.logins == 2
    conn.close()


def test_revoked_fixed_token_fails_once_without_looping(vault: VaultServer, path: str) -> None:
    """A revoked fixed token (nothing to log in with) is StorePermissionError after one retry."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    token = admin.auth.token.create(ttl="5m")["auth"]["client_token"]
    conn = VaultConnection(vault.addr, token)
    conn.check()
    admin.auth.token.revoke(token)
    with pytest.raises(StorePermissionError, match="permission denied") as err:
        conn.kv("secret").read(path)
    assert token not in str(err.value)
    assert conn.session.logins == 1  # the same token again is no login
    conn.close()
    admin.adapter.close()


def test_revoked_fixed_token_is_one_error_line_however_often_it_is_refused(
    vault: VaultServer, path: str
) -> None:
    """A revoked fixed token fails every operation, but the log says so once, as an error saying
    what to do, and claims no login that did not happen (the chaos run saw 63 in 8 s)."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    token = admin.auth.token.create(ttl="5m")["auth"]["client_token"]
    conn = VaultConnection(vault.addr, token)
    conn.check()
    admin.auth.token.revoke(token)
    with capture_logs() as logs:
        for _ in range(5):
            with pytest.raises(StorePermissionError):
                conn.kv("secret").read(path)
        with pytest.raises(StorePermissionError):
            conn.check()
    assert [e for e in logs if e["event"] == "vault login"] == []
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["vault token refused"]
    assert "VAULT_TOKEN" in str(errors[0]["hint"])
    assert token not in str(logs)
    assert conn.session.logins == 1
    conn.close()
    admin.adapter.close()


def test_lookup_token_reports_a_caller_token(vault: VaultServer, admin: hvac.Client) -> None:
    """lookup_token gives a caller token's accessor, display name and policies."""
    created = admin.auth.token.create(
        policies=["auth-test-kv"], display_name="ops", ttl="5m", meta={"who": "alice"}
    )["auth"]
    conn = VaultConnection(vault.addr, vault.token)
    info = conn.lookup_token(created["client_token"])
    assert info.accessor == created["accessor"]
    assert info.display_name == "token-ops"
    assert info.policies == ("auth-test-kv", "default")
    accessor, _, _ = conn.lookup_token(Secret(created["client_token"]))
    assert accessor == created["accessor"]
    conn.close()


def test_lookup_token_refuses_an_invalid_token_without_disturbing_the_session(
    vault: VaultServer, admin: hvac.Client, make_approle: AppRoleFactory
) -> None:
    """An unknown caller token is StorePermissionError naming the endpoint, and no re-login."""
    approle = make_approle(token_policies=["default"])  # lookup-self needs nothing more
    conn = VaultConnection(vault.addr, auth=approle.auth())
    bogus = "s." + uuid.uuid4().hex[:24]
    with pytest.raises(
        StorePermissionError, match=r"caller's token \(auth/token/lookup-self\)"
    ) as err:
        conn.lookup_token(bogus)
    assert bogus not in str(err.value)
    revoked = admin.auth.token.create(ttl="5m")["auth"]["client_token"]
    admin.auth.token.revoke(revoked)
    with pytest.raises(StorePermissionError, match="unknown, expired or revoked"):
        conn.lookup_token(revoked)
    assert conn.session.logins == 0  # asked as the caller: our own session never logged in
    good = admin.auth.token.create(ttl="5m")["auth"]
    assert conn.lookup_token(good["client_token"]).accessor == good["accessor"]
    conn.close()


def test_capabilities_of_thousands_of_paths_fits_a_default_listener(
    vault: VaultServer, admin: hvac.Client, path: str
) -> None:
    """The control API asks a caller's capabilities on every key's control path at once:
    1,200 paths (a status of 1,000 keys and more) are answered, not refused as too many JSON
    strings (GET /v1/status answered 502 from 1,000 keys on); the same for the rotator's own."""
    caller = admin.auth.token.create(policies=["auth-test-kv"], ttl="5m")["auth"]["client_token"]
    conn = VaultConnection(vault.addr, vault.token)
    paths = [f"secret/data/{path}", *(f"secret/data/many/{i}" for i in range(1200))]
    caps = conn.capabilities_of(caller, paths)
    assert len(caps) == len(paths)
    assert caps[paths[0]] == frozenset({"create", "read", "update"})
    assert caps[paths[-1]] == frozenset({"deny"})
    assert len(conn.kv("secret").capabilities(paths)) == len(paths)
    conn.close()


def test_capabilities_of_asks_as_the_caller_token(
    vault: VaultServer, admin: hvac.Client, path: str
) -> None:
    """capabilities_of reports the caller's own capabilities (not the root connection's)."""
    caller = admin.auth.token.create(policies=["auth-test-kv"], ttl="5m")["auth"]["client_token"]
    conn = VaultConnection(vault.addr, vault.token)
    paths = [f"secret/data/{path}", "secret/data/other", "sys/policies/acl/x"]
    caps = conn.capabilities_of(caller, paths)
    assert caps == {
        f"secret/data/{path}": frozenset({"create", "read", "update"}),
        "secret/data/other": frozenset({"deny"}),
        "sys/policies/acl/x": frozenset({"deny"}),
    }
    assert conn.capabilities_of(Secret(vault.token), paths[:1]) == {paths[0]: frozenset({"root"})}
    admin.auth.token.revoke(caller)
    with pytest.raises(StorePermissionError, match=r"sys/capabilities-self") as err:
        conn.capabilities_of(caller, paths)
    assert caller not in str(err.value)
    conn.close()


# Kubernetes ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_bao(vault: VaultServer) -> Iterator[VaultServer]:
    """A Vault on this host (it must reach the loopback TokenReview server): ours or a new one."""
    if vault.kind == "bao-dev":
        yield vault
    else:
        with bao_dev_server() as server:
            yield server


@dataclass
class K8s:
    """A kubernetes auth mount configured against a TokenReviewServer."""

    server: TokenReviewServer
    vault: VaultServer
    mount: str
    reviewer: str
    role: str = "rotator"


@pytest.fixture(scope="module")
def k8s(local_bao: VaultServer) -> Iterator[K8s]:
    """Kubernetes auth at a fresh mount; role `rotator` binds apps/vault-rotator."""
    admin = hvac.Client(url=local_bao.addr, token=local_bao.token)
    mount = _unique("kubernetes")
    reviewer = "reviewer-" + uuid.uuid4().hex
    with TokenReviewServer(reviewer_token=reviewer) as server:
        admin.sys.enable_auth_method("kubernetes", path=mount)
        admin.write(
            f"auth/{mount}/config",
            kubernetes_host=server.url,
            kubernetes_ca_cert=server.ca_cert,
            token_reviewer_jwt=reviewer,
            disable_local_ca_jwt=True,
        )
        admin.sys.create_or_update_policy("auth-test-kv", KV_POLICY)
        admin.write(
            f"auth/{mount}/role/rotator",
            bound_service_account_names=["vault-rotator"],
            bound_service_account_namespaces=["apps"],
            token_policies=["auth-test-kv"],
            token_ttl="10m",
        )
        yield K8s(server, local_bao, mount, reviewer)
        admin.sys.disable_auth_method(mount)
    admin.adapter.close()


def test_kubernetes_login_goes_through_the_token_review(
    k8s: K8s, tmp_path: Path, path: str
) -> None:
    """A service-account JWT logs in via TokenReview over TLS, and the token can read and write."""
    jwt = k8s.server.issue("apps", "vault-rotator")
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    reviews_before = len(k8s.server.reviews)
    conn = VaultConnection(
        k8s.vault.addr, auth=KubernetesAuth(k8s.role, jwt_file=jwt_file, mount=k8s.mount)
    )
    with capture_logs() as logs:
        conn.kv("secret").write(path, {"v": 1}, cas=0)
    assert conn.kv("secret").current_version(path) == 1
    reviewed = k8s.server.reviews[reviews_before:]
    assert [(a.namespace, a.name) if a else None for a in reviewed] == [("apps", "vault-rotator")]
    assert jwt not in repr(logs)
    conn.close()


def test_kubernetes_login_is_refused_when_the_review_says_unauthenticated(
    k8s: K8s, tmp_path: Path, path: str
) -> None:
    """A JWT the TokenReview no longer authenticates is a one-line refusal without the JWT."""
    jwt = k8s.server.issue("apps", "vault-rotator")
    k8s.server.revoke(jwt)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    conn = VaultConnection(
        k8s.vault.addr, auth=KubernetesAuth(k8s.role, jwt_file=jwt_file, mount=k8s.mount)
    )
    with pytest.raises(StorePermissionError) as err:
        conn.kv("secret").read(path)
    assert str(err.value) == (
        f"Vault refused the Kubernetes login (auth/{k8s.mount}/login): permission denied"
    )
    assert k8s.server.reviews[-1] is None
    conn.close()


def test_kubernetes_login_is_refused_for_an_unbound_namespace(
    k8s: K8s, tmp_path: Path, path: str
) -> None:
    """A service account outside the role's namespaces is refused before any TokenReview."""
    jwt_file = tmp_path / "token"
    jwt_file.write_text(k8s.server.issue("other", "vault-rotator"))
    reviews_before = len(k8s.server.reviews)
    conn = VaultConnection(
        k8s.vault.addr, auth=KubernetesAuth(k8s.role, jwt_file=jwt_file, mount=k8s.mount)
    )
    with pytest.raises(StorePermissionError, match="namespace not authorized"):
        conn.check()
    assert len(k8s.server.reviews) == reviews_before
    conn.close()


def test_token_review_server_answers_like_an_api_server(k8s: K8s, tmp_path: Path) -> None:
    """The responder wants the reviewer bearer, and authenticates only the JWTs it issued."""
    assert k8s.server.ca_cert is not None
    ca = tmp_path / "ca.pem"
    ca.write_text(k8s.server.ca_cert)
    url = f"{k8s.server.url}/apis/authentication.k8s.io/v1/tokenreviews"
    jwt = k8s.server.issue("apps", "vault-rotator", uid="uid-1")

    def review(token: str, bearer: str) -> requests.Response:
        body: dict[str, Any] = {
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["vault"]},
        }
        headers = {"Authorization": f"Bearer {bearer}"}
        return requests.post(url, json=body, headers=headers, verify=str(ca), timeout=5)

    with review(jwt, "not-the-reviewer") as refused:
        assert refused.status_code == 401
    reviewer = k8s.reviewer
    with review(jwt, reviewer) as known, review("other." + jwt, reviewer) as unknown:
        assert known.json()["status"] == {
            "authenticated": True,
            "user": {
                "username": "system:serviceaccount:apps:vault-rotator",
                "uid": "uid-1",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:apps",
                    "system:authenticated",
                ],
            },
            "audiences": ["vault"],
        }
        assert unknown.json()["status"]["authenticated"] is False


# connect_from_env ------------------------------------------------------------------------


def test_connect_from_env_picks_each_method(
    vault: VaultServer, make_approle: AppRoleFactory, k8s: K8s, tmp_path: Path
) -> None:
    """VAULT_AUTH_METHOD selects token (VAULT_TOKEN or VAULT_TOKEN_FILE), approle or kubernetes."""
    token_file = tmp_path / "vault-token"
    token_file.write_text(vault.token)
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(k8s.server.issue("apps", "vault-rotator"))
    approle = make_approle()
    addr = {"VAULT_ADDR": vault.addr}
    envs: list[tuple[dict[str, str], str]] = [
        ({**addr, "VAULT_TOKEN": vault.token}, "token"),
        ({**addr, "VAULT_TOKEN_FILE": str(token_file)}, "token"),
        (
            {
                **addr,
                "VAULT_AUTH_METHOD": "approle",
                "VAULT_ROLE_ID_FILE": str(approle.role_id_file),
                "VAULT_SECRET_ID_FILE": str(approle.secret_id_file),
                "VAULT_AUTH_MOUNT": approle.mount,
            },
            "approle",
        ),
        (
            {
                "VAULT_ADDR": k8s.vault.addr,
                "VAULT_AUTH_METHOD": "Kubernetes",
                "VAULT_K8S_ROLE": k8s.role,
                "VAULT_K8S_JWT_FILE": str(jwt_file),
                "VAULT_AUTH_MOUNT": k8s.mount,
            },
            "kubernetes",
        ),
    ]
    for env, method in envs:
        conn = connect_from_env(env)
        assert conn.session.auth.method == method
        conn.check()
        assert conn.session.logins == 1
        conn.close()


def test_connect_from_env_defaults_the_kubernetes_mount_and_jwt_file() -> None:
    """Without VAULT_AUTH_MOUNT and VAULT_K8S_JWT_FILE the in-pod defaults apply."""
    conn = connect_from_env(
        {
            "VAULT_ADDR": "http://127.0.0.1:1",
            "VAULT_AUTH_METHOD": "kubernetes",
            "VAULT_K8S_ROLE": "r",
        }
    )
    assert conn.session.auth == KubernetesAuth("r", DEFAULT_K8S_JWT_FILE, "kubernetes")
    conn.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "VAULT_TOKEN"),
        ({"VAULT_TOKEN": "x", "VAULT_TOKEN_FILE": "/f"}, "VAULT_TOKEN_FILE"),
        ({"VAULT_AUTH_METHOD": "approle"}, "VAULT_ROLE_ID_FILE"),
        ({"VAULT_AUTH_METHOD": "approle", "VAULT_ROLE_ID_FILE": "/r"}, "VAULT_SECRET_ID_FILE"),
        ({"VAULT_AUTH_METHOD": "kubernetes"}, "VAULT_K8S_ROLE"),
        ({"VAULT_AUTH_METHOD": "ldap"}, "VAULT_AUTH_METHOD"),
        ({"VAULT_TOKEN": "x", "VAULT_SKIP_VERIFY": "maybe"}, "VAULT_SKIP_VERIFY"),
        ({"VAULT_TOKEN": "x", "VAULT_CACERT": "/no/such/ca.pem"}, "VAULT_CACERT"),
    ],
)
def test_connect_from_env_names_the_missing_variable(env: dict[str, str], named: str) -> None:
    """Each missing or bad setting is a ConfigError naming its variable."""
    with pytest.raises(ConfigError, match=named):
        connect_from_env({"VAULT_ADDR": "http://127.0.0.1:1", **env})


@contextlib.contextmanager
def _bao_tls_server() -> Iterator[tuple[str, str, Path]]:
    """`bao server -dev -dev-tls`: its https address, root token and generated CA file."""
    token = "root-" + uuid.uuid4().hex
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vault-rotator-tls-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(HOME=home, BAO_DEV_ROOT_TOKEN_ID=token)
        command = [bao_binary(), "server", "-dev", "-dev-no-store-token", "-dev-tls"]
        command += [f"-dev-tls-cert-dir={home}", f"-dev-listen-address=127.0.0.1:{port}"]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        addr, ca = f"https://127.0.0.1:{port}", Path(home) / "vault-ca.pem"
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError, requests.RequestException):
                    if ca.is_file():
                        requests.get(f"{addr}/v1/sys/health", verify=str(ca), timeout=2).close()
                        break
                assert time.monotonic() < deadline, "bao -dev-tls did not start"
                time.sleep(0.05)
            yield addr, token, ca
        finally:
            stop_process(proc)


def test_tls_settings_verify_the_server_certificate() -> None:
    """VAULT_CACERT verifies a TLS Vault, no CA fails as unavailable, VAULT_SKIP_VERIFY skips."""
    with _bao_tls_server() as (addr, token, ca):
        base = {"VAULT_ADDR": addr, "VAULT_TOKEN": token}
        conn = connect_from_env({**base, "VAULT_CACERT": str(ca)})
        conn.check()
        conn.close()
        conn = connect_from_env(base)
        with pytest.raises(StoreUnavailableError, match="SSLError"):
            conn.check()
        conn.close()
        conn = connect_from_env({**base, "VAULT_CACERT": str(ca), "VAULT_SKIP_VERIFY": "true"})
        with pytest.warns(Warning, match="Unverified HTTPS"):
            conn.check()
        conn.close()


# The renewal schedule, as pure decisions ---------------------------------------------------


def _lease(ttl: float, *, renewable: bool = True, at: float = 1000.0) -> TokenLease:
    return TokenLease.start(LoginResult(Secret("s.example-token"), ttl, renewable), at)


@pytest.mark.parametrize(
    ("lease", "now", "step"),
    [
        (None, 0.0, Step.LOGIN),
        (_lease(0), 10**9, Step.USE),  # a root token never expires
        (_lease(90), 1059.9, Step.USE),  # more than a third left
        (_lease(90), 1060.0, Step.RENEW),
        (_lease(90, renewable=False), 1060.0, Step.LOGIN),
        (_lease(90), 1090.0, Step.LOGIN),  # expired: renewing is pointless
    ],
)
def test_next_step_follows_the_third_of_ttl_rule(
    lease: TokenLease | None, now: float, step: Step
) -> None:
    """Renew in the last third of the TTL, log in when expired or not renewable."""
    assert next_step(lease, now) is step


def test_a_renewal_capped_by_max_ttl_ends_renewals() -> None:
    """A renewal granting less than the TTL marks the lease non-renewable: next time, log in."""
    lease = _lease(90).renewed(90, 1060.0)
    assert lease.renewable
    assert lease.refresh_at == 1120.0
    capped = lease.renewed(30, 1120.0)
    assert not capped.renewable
    assert next_step(capped, 1139.0) is Step.USE
    assert next_step(capped, 1140.0) is Step.LOGIN
