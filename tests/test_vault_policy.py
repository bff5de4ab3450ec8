"""Generated Vault policies: exactly what the rotator and a consumer need, proven on OpenBao.

The deployment below has two environments: ``p<tag>`` (two keys, in ``secret/``) and ``s<tag>``
(one key, in a second KV v2 mount enabled for the test). Its ``vault-policy rotator`` output is
loaded into a real OpenBao, and a token holding only that policy (plus ``default``) runs a
rotation, ``status``, ``audit``, freezes, an abort and the daemon. Every refusal is a real 403
from OpenBao. Time is a fake clock shared with the emulators; apps call with whatever key Vault
serves on every sleep. No token or key value is ever printed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import structlog
from world import MANAGEMENT_KEY, no_fault

from vault_rotator import cli
from vault_rotator.commands import vault_policy_cmd
from vault_rotator.daemon import freeze
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.emulator import Emulator
from vault_rotator.engine import account_lease, reasons
from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.changes import changes_path, read_changes
from vault_rotator.engine.emergency import emergency_path
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.preflight import required_capabilities
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import ConfigError, StoreError, StorePermissionError
from vault_rotator.policy import (
    EnvironmentPolicy,
    KeyPolicy,
    ManagementKeyRef,
    PolicySet,
    ProviderPolicy,
    load_policies,
    vaultacl,
)
from vault_rotator.runtime import Runtime
from vault_rotator.store.memory import MemoryKv
from vault_rotator.store.vault import VaultConnection, VaultKv, connect_from_env
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer

EXAMPLES = str(Path(__file__).resolve().parent.parent / "config")
POLL = 30.0
ENVIRONMENT = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {management}
  usage_lag: 60s
  poll_interval: 30s
vault:
  kv_mount: {mount}
  state_prefix: {prefix}
require_spending_limit: false
defaults:
  schedule: "@monthly"
  max_age: 45d
  pickup_timeout: 1h
  drain_period: 10m
  drain_timeout: 2h
keys:
{keys}"""
KEY = """\
  - name: {name}
    secret_path: {path}
    allowed_providers: [openai]
    spending_limit: 20
"""


@dataclass(frozen=True)
class Key:
    """One configured key: where it lives and which emulator serves it."""

    env: str
    name: str
    mount: str
    path: str
    prefix: str
    emulator: Emulator

    @property
    def ref(self) -> str:
        return f"{self.env}/{self.name}"


@dataclass
class Deployment:
    """Two environments in two KV mounts, their emulators, apps calling, and the policies."""

    vault: VaultServer
    root: hvac.Client
    config: Path
    clock: FakeClock
    tag: str
    keys: dict[str, Key]
    rotator_token: str = field(repr=False)
    consumer_token: str = field(repr=False)
    statuses: list[int] = field(default_factory=list)
    conns: dict[str, VaultConnection] = field(default_factory=dict, repr=False)

    def kv(self, mount: str, token: str | None = None) -> VaultKv:
        """A mount as ``token`` (default: root), one connection per token."""
        token = token or self.vault.token
        if token not in self.conns:
            self.conns[token] = VaultConnection(self.vault.addr, token)
        return self.conns[token].kv(mount)

    def record(self, key: Key) -> StateRecord:
        return StateStore(self.kv(key.mount), key.prefix).read(key.env, key.name)[0]

    def served_id(self, key: Key) -> str:
        got = self.kv(key.mount).read(key.path)
        assert got is not None
        return str(got.data["key_id"])

    def call_all(self) -> None:
        """Each app calls once with the key Vault serves it now."""
        for key in self.keys.values():
            got = self.kv(key.mount).read(key.path)
            assert got is not None
            self.statuses.append(key.emulator.call(str(got.data["api_key"])))

    def limited_runtime(self) -> Runtime:
        """A CLI or daemon process's runtime, built from VAULT_ADDR/VAULT_TOKEN, on the clock."""
        return Runtime(connect_from_env(), clock=self.clock, sleep=self.clock.sleep)

    def cli(self, *argv: str) -> int:
        return cli.main([*argv, "--config", str(self.config)])


CLEARED = (
    "VAULT_NAMESPACE",
    "VAULT_AUTH_METHOD",
    "VAULT_TOKEN_FILE",
    "VAULT_ROTATOR_CONFIG",
    "VAULT_ROTATOR_DAEMON",
    "VAULT_ROTATOR_LEASE_TTL",
    "VAULT_ROTATOR_LOG_LEVEL",
    "VAULT_ROTATOR_LOG_FORMAT",
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No rotator settings from the caller's shell; structlog (bound to a captured stderr by
    in-process CLI runs) reset afterwards."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    yield
    structlog.reset_defaults()


def _enable_kv2(root: hvac.Client, mount: str) -> None:
    root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})


def _write_soon(kv: VaultKv, path: str, data: dict[str, str]) -> None:
    """Write version 1, waiting out a freshly enabled KV v2 mount's first moments."""
    deadline = time.monotonic() + 10
    while True:
        try:
            kv.write(path, data, cas=0)
            return
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _token(root: hvac.Client, *policies: str, default: bool = True) -> str:
    created = root.auth.token.create(
        policies=list(policies), no_default_policy=not default, ttl="1h"
    )
    return str(created["auth"]["client_token"])


def _generate(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(["vault-policy", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def deployment(
    vault: VaultServer,
    make_emulator: Callable[..., Emulator],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Deployment]:
    """The deployment, its policies loaded, VAULT_TOKEN set to the rotator-only token."""
    tag = uuid.uuid4().hex[:8]
    root = hvac.Client(url=vault.addr, token=vault.token)
    mount = f"k{tag}"
    _enable_kv2(root, mount)
    clock = FakeClock()
    emu_p = make_emulator(dialect="c", clock=clock)
    emu_s = make_emulator(dialect="c", clock=clock)
    p, s = f"p{tag}", f"s{tag}"
    keys = {
        "backend": Key(p, "backend", "secret", f"{tag}/p/backend", f"{tag}/vault-rotator", emu_p),
        "worker": Key(p, "worker", "secret", f"{tag}/p/worker", f"{tag}/vault-rotator", emu_p),
        "web": Key(s, "web", mount, "arouter/web", "vault-rotator", emu_s),
    }
    management = {p: ("secret", f"{tag}/p/management"), s: (mount, "arouter/management")}
    conn = VaultConnection(vault.addr, vault.token)
    for env, (kv_mount, path) in management.items():
        _write_soon(conn.kv(kv_mount), path, {"key": MANAGEMENT_KEY})
        body = "".join(KEY.format(name=k.name, path=k.path) for k in keys.values() if k.env == env)
        emulator = emu_p if env == p else emu_s
        (tmp_path / f"{env}.yaml").write_text(
            ENVIRONMENT.format(
                env=env,
                base_url=emulator.base_url,
                management=path,
                mount=kv_mount,
                prefix=next(k.prefix for k in keys.values() if k.env == env),
                keys=body,
            )
        )
    for key in keys.values():
        key_id, value = key.emulator.seed_key(f"{key.name}-original", allowed_providers=["openai"])
        conn.kv(key.mount).write(key.path, {"api_key": value, "key_id": key_id}, cas=0)
    # What the limited tokens must never reach: another consumer's secret next to ours.
    conn.kv("secret").write(f"{tag}/p/other", {"api_key": "lr_live_not_configured"}, cas=0)

    policies = load_policies(tmp_path)
    rotator_hcl = vault_policy_cmd.rotator_policy(policies)
    consumer_hcl = vault_policy_cmd.consumer_policy(policies.key(p, "backend"), policies)
    root.sys.create_or_update_policy(f"rotator-{tag}", rotator_hcl)
    root.sys.create_or_update_policy(f"consumer-{tag}", consumer_hcl)
    rotator_token = _token(root, f"rotator-{tag}")
    consumer_token = _token(root, f"consumer-{tag}")
    monkeypatch.setenv("VAULT_ADDR", vault.addr)
    monkeypatch.setenv("VAULT_TOKEN", rotator_token)
    dep = Deployment(vault, root, tmp_path, clock, tag, keys, rotator_token, consumer_token)
    monkeypatch.setattr(Runtime, "from_env", classmethod(lambda _cls: dep.limited_runtime()))
    clock.on_sleep(dep.call_all)
    yield dep
    for c in (conn, *dep.conns.values()):
        c.close()
    root.sys.disable_secrets_engine(mount)
    root.sys.delete_policy(f"rotator-{tag}")
    root.sys.delete_policy(f"consumer-{tag}")


def assert_forbidden(action: Callable[[], object], what: str = "") -> None:
    """``action`` is refused by Vault with a real 403 (not a 401, a 404 or a client check)."""
    __tracebackhide__ = True
    with pytest.raises(StorePermissionError) as caught:
        action()
    assert isinstance(caught.value.__cause__, hvac.exceptions.Forbidden), f"{what}: {caught.value}"


# -- the rotator policy at work ------------------------------------------------------------


def test_a_full_rotation_status_and_audit_run_on_the_rotator_policy_alone(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """With only the generated rotator policy, `rotate --wait`, `status` and `audit` succeed."""
    backend = deployment.keys["backend"]
    old_id = deployment.served_id(backend)
    assert deployment.cli("rotate", backend.ref, "--wait") == 0, capsys.readouterr().err
    record = deployment.record(backend)
    assert record.phase == reasons.IDLE
    assert record.outcomes[-1].outcome == reasons.SUCCEEDED
    assert deployment.served_id(backend) != old_id
    assert set(deployment.statuses) == {200}
    # the operator's passes announced the change to daemons (written under the same policy)
    changes = read_changes(deployment.kv("secret", deployment.rotator_token), backend.prefix)
    assert changes.recent
    assert {ref for ref, _ in changes.recent} == {backend.ref}

    capsys.readouterr()
    assert deployment.cli("status", "--json") == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)["keys"]
    assert sorted(row["key"] for row in rows) == sorted(k.ref for k in deployment.keys.values())

    code = deployment.cli("audit", "--json")
    out, err = capsys.readouterr()
    assert code in (0, 1), err  # 1 = findings (e.g. never-used keys), not a failure
    assert len(json.loads(out)["accounts"]) == 2
    assert "denied" not in err


def test_freeze_and_unfreeze_run_on_the_rotator_policy_alone(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """Freezes of an environment and of a key in another mount are written and lifted."""
    p, web = deployment.keys["backend"].env, deployment.keys["web"]
    for verb, target in [("freeze", p), ("freeze", web.ref), ("unfreeze", p)]:
        assert deployment.cli(verb, target) == 0, capsys.readouterr().err
    frozen_p = freeze.frozen(deployment.kv("secret"), deployment.keys["backend"].prefix)
    frozen_s = freeze.frozen(deployment.kv(web.mount), web.prefix)
    assert (frozen_p.envs, frozen_s.keys) == (frozenset(), frozenset({web.ref}))
    assert deployment.cli("unfreeze", web.ref) == 0


def test_an_abort_after_publish_runs_on_the_rotator_policy_alone(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rotation published without --wait is aborted back to the old key, new key deleted."""
    worker = deployment.keys["worker"]
    old_id = deployment.served_id(worker)
    assert deployment.cli("rotate", worker.ref) == 0, capsys.readouterr().err
    assert deployment.served_id(worker) != old_id
    deployment.clock.sleep(POLL)
    assert deployment.cli("abort", worker.ref, "--wait") == 0, capsys.readouterr().err
    record = deployment.record(worker)
    assert record.outcomes[-1].outcome == reasons.ABORTED
    assert deployment.served_id(worker) == old_id
    live = {k["id"] for k in worker.emulator.live_keys()}
    assert old_id in live
    assert len(live) == 2  # the old worker key and backend's, never the aborted one


def test_an_environment_wide_emergency_runs_on_the_rotator_policy_alone(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rotate --env ENV --emergency --yes --wait` saves its request, rotates both keys of the
    environment and shows the request in `status`, with only the generated rotator policy."""
    backend, worker = deployment.keys["backend"], deployment.keys["worker"]
    old = {deployment.served_id(backend), deployment.served_id(worker)}
    code = deployment.cli("rotate", "--env", backend.env, "--emergency", "--yes", "--wait")
    assert code == 0, capsys.readouterr().err
    request = EmergencyStore(deployment.kv("secret"), backend.prefix).read(backend.env)
    assert request is not None
    assert request.complete
    for key in (backend, worker):
        outcomes = [o.outcome for o in deployment.record(key).outcomes]
        assert outcomes == [reasons.SUCCEEDED_EMERGENCY]
    assert old.isdisjoint(k["id"] for k in backend.emulator.live_keys())
    assert set(deployment.statuses) == {200}
    capsys.readouterr()
    assert deployment.cli("status", "--json") == 0
    (shown,) = json.loads(capsys.readouterr().out)["emergencies"]
    assert (shown["id"], shown["counts"]) == (request.id, {"done": 2})


def test_the_daemon_rotates_a_key_in_a_second_mount_on_the_rotator_policy_alone(
    deployment: Deployment,
) -> None:
    """Daemon ticks with the limited token: no errors, and the second mount's key rotates."""
    daemon = Daemon(
        load_policies(deployment.config),
        deployment.limited_runtime(),
        metrics=Metrics(),
        fault=no_fault,
    )
    by_env = {keys[0].env: (account, keys) for account, keys in daemon.accounts().items()}
    web = deployment.keys["web"]
    try:
        account, keys = by_env[deployment.keys["backend"].env]
        assert daemon.tick(account, keys).errors == []  # starts the due rotations of p<tag>
        account, keys = by_env[web.env]
        for _ in range(80):
            assert daemon.tick(account, keys).errors == []
            if deployment.record(web).outcomes:
                break
            deployment.clock.sleep(POLL)
    finally:
        daemon.runtime.close()
    assert [o.outcome for o in deployment.record(web).outcomes] == [reasons.SUCCEEDED]
    assert set(deployment.statuses) == {200}


def test_the_rotator_policy_stands_alone_without_vaults_default_policy(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token created without `default` still passes preflight and the readiness check."""
    token = _token(deployment.root, f"rotator-{deployment.tag}", default=False)
    monkeypatch.setenv("VAULT_TOKEN", token)
    ref = deployment.keys["web"].ref
    assert deployment.cli("rotate", ref, "--dry-run") == 0, capsys.readouterr().err
    conn = VaultConnection(deployment.vault.addr, token)
    conn.check()  # sys/health and auth/token/lookup-self, as /readyz does
    conn.close()


# -- what the rotator policy refuses -------------------------------------------------------


def refusals(dep: Deployment) -> dict[str, Callable[[], object]]:
    tag, p = dep.tag, dep.keys["backend"].env
    kv = dep.kv("secret", dep.rotator_token)
    kv_s = dep.kv(dep.keys["web"].mount, dep.rotator_token)
    mk = f"{tag}/p/management"
    return {
        "write the management key": lambda: kv.write(mk, {"key": "x"}, cas=1),
        "destroy the management key": lambda: kv.destroy(mk),
        "read the management key's metadata": lambda: kv.current_version(mk),
        "write the second mount's management key": lambda: kv_s.write(
            "arouter/management", {"key": "x"}, cas=1
        ),
        "read another consumer's secret": lambda: kv.read(f"{tag}/p/other"),
        "write another consumer's secret": lambda: kv.write(f"{tag}/p/other", {"a": "b"}, cas=1),
        "read another key's state": lambda: kv.read(f"{tag}/vault-rotator/state/{p}/other"),
        "write another key's state": lambda: kv.write(
            f"{tag}/vault-rotator/state/{p}/other", {"a": "b"}, cas=1
        ),
        "read another key's pending": lambda: kv.read(f"{tag}/vault-rotator/pending/{p}/other"),
        "destroy another key's pending": lambda: kv.destroy(
            f"{tag}/vault-rotator/pending/{p}/other"
        ),
        "list the consumer secrets' folder": lambda: kv.list(f"{tag}/p"),
        "list every environment's pending": lambda: kv.list(f"{tag}/vault-rotator/pending"),
        "write another environment's emergency request": lambda: kv.write(
            f"{tag}/vault-rotator/emergency/other", {"a": "b"}, cas=0
        ),
        "write another environment's emergency shard": lambda: kv.write(
            f"{tag}/vault-rotator/emergency/other/r1/0", {"a": "b"}, cas=0
        ),
        "write deeper than an emergency request's shards": lambda: kv.write(
            f"{tag}/vault-rotator/emergency/{p}/r1/0/x", {"a": "b"}, cas=0
        ),
        "read outside the configured paths in the second mount": lambda: kv_s.read("arouter/x"),
    }


def test_the_rotator_policy_refuses_all_but_the_configured_paths(deployment: Deployment) -> None:
    """Management keys, other consumers' secrets and other keys' records are each a 403."""
    # Records of a key not in the config, under our prefix. Planted here only: status, audit
    # and the daemon read every record under the prefix and stop at these (see the docs).
    tag, p, root_kv = deployment.tag, deployment.keys["backend"].env, deployment.kv("secret")
    root_kv.write(f"{tag}/vault-rotator/state/{p}/other", {"x": "1"}, cas=0)
    root_kv.write(f"{tag}/vault-rotator/pending/{p}/other", {"x": "1"}, cas=0)
    for what, action in refusals(deployment).items():
        try:
            assert_forbidden(action, what)
        except pytest.fail.Exception as exc:  # "DID NOT RAISE" alone would not say which
            pytest.fail(f"{what}: {exc}")
    kv = deployment.kv("secret", deployment.rotator_token)
    assert kv.read(f"{deployment.tag}/p/management") is not None  # read-only, not refused


def test_records_the_policy_may_not_read_are_skipped_not_fatal(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """A leftover in-flight record of a removed key, and another deployment's folder, under our
    prefix: status, audit and a daemon tick skip them with a warning instead of failing."""
    tag, p, root_kv = deployment.tag, deployment.keys["backend"].env, deployment.kv("secret")
    store = StateStore(root_kv, f"{tag}/vault-rotator")
    leftover = StateRecord.new(p, "removed").evolve(phase=reasons.PUBLISHED).to_dict()
    root_kv.write(store.state_path(p, "removed"), leftover, cas=0)
    root_kv.write(store.state_path("someone-else", "app"), leftover, cas=0)
    assert deployment.cli("status", "--json") == 0
    assert deployment.cli("audit", "--json") in (0, 1)  # findings, not a failure
    err = capsys.readouterr().err
    assert "state record not readable; skipped" in err
    assert "state folder not readable; skipped" in err
    assert "Traceback" not in err
    runtime = deployment.limited_runtime()
    daemon = Daemon(load_policies(deployment.config), runtime, metrics=Metrics(), fault=no_fault)
    for account, keys in daemon.accounts().items():
        assert daemon.tick(account, keys).errors == []


# -- the consumer policy -------------------------------------------------------------------


def test_the_consumer_policy_reads_its_own_secret_and_nothing_else(deployment: Deployment) -> None:
    """The consumer token reads its secret; everything else, its own writes included, is 403."""
    dep, backend = deployment, deployment.keys["backend"]
    kv = dep.kv("secret", dep.consumer_token)
    got = kv.read(backend.path)
    assert got is not None
    assert got.data["key_id"] == dep.served_id(backend)
    prefix, env = backend.prefix, backend.env
    for action in [
        lambda: kv.read(dep.keys["worker"].path),
        lambda: kv.read(f"{dep.tag}/p/management"),
        lambda: kv.read(f"{prefix}/state/{env}/backend"),
        lambda: kv.read(f"{prefix}/pending/{env}/backend"),
        lambda: kv.write(backend.path, {"api_key": "x"}, cas=got.version),
        lambda: kv.current_version(backend.path),
        lambda: dep.kv(dep.keys["web"].mount, dep.consumer_token).read(dep.keys["web"].path),
    ]:
        assert_forbidden(action)


def _ack(instance: str, version: int = 1) -> dict[str, object]:
    return {
        "version": version,
        "key_id": "key_x",
        "at": "2026-01-01T00:00:00Z",
        "kind": "agent",
        "instance": instance,
    }


def test_the_consumer_writes_its_own_acks_but_cannot_read_list_or_reach_others(
    deployment: Deployment,
) -> None:
    """A consumer token creates and updates its key's ack records; reading or listing them,
    deleting them, a nested path, and another key's acks (same or other mount) are each 403.
    The rotator token reads, lists and removes them, and cannot write one."""
    dep, backend, worker = deployment, deployment.keys["backend"], deployment.keys["worker"]
    kv = dep.kv("secret", dep.consumer_token)
    folder = AckStore(kv, backend.prefix).folder(backend.env, backend.name)
    kv.write(f"{folder}/web-1", _ack("web-1"), cas=0)
    kv.write(f"{folder}/web-1", _ack("web-1", 2), cas=1)  # update: the next version
    other = AckStore(kv, worker.prefix).folder(worker.env, worker.name)
    web = dep.keys["web"]
    kv_s = dep.kv(web.mount, dep.consumer_token)
    for what, action in {
        "read its own ack": lambda: kv.read(f"{folder}/web-1"),
        "list its acks": lambda: kv.list(folder),
        "read its ack's metadata": lambda: kv.current_version(f"{folder}/web-1"),
        "destroy its ack": lambda: kv.destroy(f"{folder}/web-1"),
        "write below an instance": lambda: kv.write(f"{folder}/web-1/x", _ack("x"), cas=0),
        "write the folder's parent": lambda: kv.write(f"{folder}-x/web-1", _ack("web-1"), cas=0),
        "write another key's ack": lambda: kv.write(f"{other}/web-1", _ack("web-1"), cas=0),
        "write an ack in another mount": lambda: kv_s.write(
            f"{web.prefix}/acks/{web.env}/{web.name}/web-1", _ack("web-1"), cas=0
        ),
    }.items():
        try:
            assert_forbidden(action, what)
        except pytest.fail.Exception as exc:
            pytest.fail(f"{what}: {exc}")
    rotator = dep.kv("secret", dep.rotator_token)
    assert rotator.list(folder) == ["web-1"]
    got = rotator.read(f"{folder}/web-1")
    assert got is not None
    assert got.data["version"] == 2
    assert_forbidden(lambda: rotator.write(f"{folder}/web-2", _ack("web-2"), cas=0), "forge")
    rotator.destroy(f"{folder}/web-1")
    assert rotator.list(folder) == []


def test_a_vault_agent_renders_the_key_with_the_consumer_policy_alone(
    deployment: Deployment,
) -> None:
    """A real `bao agent` holding only the consumer policy renders its key to a file."""
    backend = deployment.keys["backend"]
    served = deployment.kv("secret").read(backend.path)
    assert served is not None
    with vault_agent(
        deployment.vault.addr, deployment.consumer_token, mount="secret", path=backend.path
    ) as agent:
        rendered = agent.read_key() or ""
    same = _digest(rendered) == _digest(str(served.data["api_key"]))
    assert same  # compared by digest: a key value never reaches the test output


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- the generated text, without Vault -----------------------------------------------------


def _granted(rules: dict[str, set[str]], path: str) -> set[str]:
    """What the rules grant on ``path``: its exact rule, else a ``+`` rule for its last segment."""
    parent, _, _ = path.rstrip("/").rpartition("/")
    return rules.get(path) or rules.get(f"{parent}/+", set())


def test_every_capability_the_preflight_asks_for_is_granted() -> None:
    """The engine's own preflight list is covered by the rotator policy, key by key (a key
    requiring acks included)."""
    policies = load_policies(Path(EXAMPLES))
    rules = {rule.path: set(rule.capabilities) for rule in vaultacl.rotator_rules(policies)}
    checked = 0
    for policy in [*policies, policies.lookup("production/backend").model_copy(
        update={"require_acks": 2}
    )]:  # fmt: skip
        store = StateStore(MemoryKv(), policy.vault.state_prefix)
        for path, caps in required_capabilities(policy, store):
            assert caps & _granted(rules, path), (policy.ref, path)
            checked += "/acks/" in path
    assert checked == 2


def test_the_layout_agrees_with_the_state_store_and_the_freezes() -> None:
    """State, pending, freeze, emergency and change-signal paths are the ones the code uses."""
    store = StateStore(MemoryKv(), "some/prefix")
    assert vaultacl.state_path("some/prefix", "e", "n") == store.state_path("e", "n")
    assert vaultacl.pending_path("some/prefix", "e", "n") == store.pending_path("e", "n")
    assert vaultacl.frozen_path("some/prefix") == freeze.frozen_path("some/prefix")
    assert vaultacl.acks_folder("some/prefix", "e", "n") == AckStore(
        MemoryKv(), "some/prefix"
    ).folder("e", "n")
    assert vaultacl.emergency_path("some/prefix", "e") == emergency_path("some/prefix", "e")
    assert vaultacl.changes_path("some/prefix") == changes_path("some/prefix")
    lease_id = "0123456789abcdef"
    assert vaultacl.account_lease_path("some/prefix", lease_id) == account_lease.lease_path(
        "some/prefix", lease_id
    )


def test_the_rotator_may_write_each_account_lease_under_each_of_its_state_prefixes() -> None:
    """Every (state prefix, account) pair of the policies has its lease path granted."""
    policies = load_policies(Path(EXAMPLES))
    rules = {rule.path: set(rule.capabilities) for rule in vaultacl.rotator_rules(policies)}
    for policy in policies:
        lease = account_lease.lease_path(policy.vault.state_prefix, policy.account.lease_id)
        assert rules[f"{policy.vault.kv_mount}/data/{lease}"] == {"create", "read", "update"}


def _ack_glob(path: str, prefix: str = "vault-rotator") -> bool:
    """``<mount>/(data|metadata)/<prefix>/acks/<env>/<name>/+``: the one glob we write."""
    parts = path.split("/")
    return (
        len(parts) == 2 + len(prefix.split("/")) + 4
        and parts[1] in ("data", "metadata")
        and "/".join(parts[2:-4]) == prefix
        and parts[-4] == "acks"
        and parts[-1] == "+"
    )


def test_rules_are_exact_and_management_keys_read_only() -> None:
    """No glob but a key's own ack folder's one segment, one rule per path, and each management
    key path is read and nothing."""
    policies = load_policies(Path(EXAMPLES))
    rules = vaultacl.rotator_rules(policies)
    paths = [rule.path for rule in rules]
    assert len(paths) == len(set(paths))
    globbed = [path for path in paths if any(c in path for c in "*+{}")]
    assert globbed
    shards = [p for p in globbed if re.fullmatch(r"[a-z0-9/_-]+/emergency/[a-z0-9-]+/\+/\+", p)]
    assert len(shards) == len(policies.environments)
    acks = [path for path in globbed if path not in shards]
    assert all(_ack_glob(path) for path in acks), acks
    assert {r.capabilities for r in rules if r.path in acks} == {("read",), ("delete",)}
    assert {r.capabilities for r in rules if r.path in shards} == {("create", "read", "update")}
    for environment in policies.environments.values():
        mk = f"{environment.vault.kv_mount}/data/{environment.provider.management_key.path}"
        assert next(r.capabilities for r in rules if r.path == mk) == ("read",)
        assert not any(r.path.startswith(mk) and r.path != mk for r in rules)


def test_the_output_is_stable_and_commented(capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs print the same HCL, each rule under a comment naming the key it serves."""
    first = _generate(capsys, "rotator", "--config", EXAMPLES)
    assert first == _generate(capsys, "rotator", "--config", EXAMPLES)
    assert "# production/backend: consumer secret\n" in first
    assert 'path "secret/data/arouter/production/backend" {\n' in first
    consumer = _generate(capsys, "consumer", "production/backend", "--config", EXAMPLES)
    assert consumer.count('\npath "') == 2
    assert 'path "secret/data/arouter/production/backend" {\n  capabilities = ["read"]' in consumer
    acks = 'path "secret/data/vault-rotator/acks/production/backend/+" {\n'
    assert acks + '  capabilities = ["create", "update"]' in consumer


def test_a_management_key_shared_by_two_environments_is_one_read_only_rule(
    tmp_path: Path,
) -> None:
    """Two environments on one management key path get one rule naming both."""
    for env in ("one", "two"):
        body = KEY.format(name="app", path=f"apps/{env}/app")
        (tmp_path / f"{env}.yaml").write_text(
            ENVIRONMENT.format(
                env=env,
                base_url="https://api.example.test",
                management="arouter/management",
                mount="secret",
                prefix="vault-rotator",
                keys=body,
            )
        )
    rules = vaultacl.rotator_rules(load_policies(tmp_path))
    shared = [r for r in rules if r.path == "secret/data/arouter/management"]
    assert [(r.capabilities, len(r.why)) for r in shared] == [(("read",), 2)]


def test_a_management_key_the_rotator_would_write_is_refused() -> None:
    """Even past validation, a management key where freezes live is refused, not made writable."""
    provider = ProviderPolicy(
        base_url="https://api.example.test",
        management_key=ManagementKeyRef(path="vault-rotator/control/frozen"),
    )
    key = KeyPolicy(env="one", name="app", secret_path="apps/one/app", provider=provider)
    environment = EnvironmentPolicy(
        environment="one",
        source=Path("one.yaml"),
        provider=provider,
        require_spending_limit=False,
        keys=(key,),
    )
    with pytest.raises(ConfigError, match="is a management key and also one: freezes"):
        vaultacl.rotator_rules(PolicySet({"one": environment}))


def _exit_code(argv: list[str]) -> int:
    """``cli.main``'s exit code, argparse's own exits included."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["consumer", "no-slash-here", "--config", "/nonexistent"], "ENV/NAME"),
        (["consumer", "--config", EXAMPLES], "ENV/NAME"),
        (["rotator", "production/backend", "--config", EXAMPLES], "takes no ENV/NAME"),
        (["consumer", "production/nope", "--config", EXAMPLES], "nope"),
        (["consumer", "nowhere/backend", "--config", EXAMPLES], "nowhere"),
        (["rotator", "--config", "/nonexistent"], "/nonexistent"),
        (["operator", "--config", EXAMPLES], "invalid choice"),
    ],
    ids=[
        "malformed-ref",
        "no-ref",
        "ref-for-rotator",
        "unknown-key",
        "unknown-env",
        "no-config",
        "unknown-kind",
    ],
)
def test_usage_and_config_errors_exit_2_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    """Bad arguments or config exit 2 with one line naming the problem, and print no HCL."""
    code = _exit_code(["vault-policy", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert said in err
