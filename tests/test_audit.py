"""`vault-rotator audit`: findings over a real Vault and the emulator, and safe deletion."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import hvac
import pytest
import structlog
from world import EmulatorFactory, make_policy

from vault_rotator.commands import audit_cmd
from vault_rotator.emulator import Emulator
from vault_rotator.engine import audit as rules
from vault_rotator.engine.state import ProviderWrite, Rotation, StateRecord
from vault_rotator.errors import ConfigError, EngineError
from vault_rotator.logs import configure
from vault_rotator.policy import Account
from vault_rotator.ports.provider import KeyRecord, Permissions
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

MANAGEMENT_KEY = "lr_mgmt_test_0123456789abcdef"
NOW = 1_800_000_000.0
DAY = 86_400.0
OLD = NOW - 90 * DAY

POLICY_YAML = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: {dialect}
  management_key:
    path: {tag}/management
vault:
  kv_mount: secret
  state_prefix: {tag}/vault-rotator
require_spending_limit: false
keys:
"""
KEY_YAML = "  - name: {name}\n    secret_path: {tag}/{name}\n"


@dataclass
class Setup:
    """A config dir, the emulator on a fake clock, and Vault, for one audit test."""

    env: str
    tag: str
    emulator: Emulator
    kv: VaultKv
    config: Path
    clock: FakeClock

    def key(
        self, name: str, *, cap: float | None = 10.0, created: float = NOW, used: bool = True
    ) -> tuple[str, str]:
        """Seed a key at the provider; ``used`` makes one billable call with it now."""
        key_id, value = self.emulator.seed_key(
            name, allowed_providers=["openai"], spending_limit=cap, created_at=created
        )
        if used:
            assert self.emulator.call(value, "chat") == 200
        return key_id, value

    def serve(self, name: str, key: tuple[str, str]) -> None:
        """Write a policy's consumer secret holding ``key`` (id and value)."""
        self.kv.write(f"{self.tag}/{name}", {"api_key": key[1], "key_id": key[0]}, cas=0)

    def state(self, name: str, record: StateRecord) -> None:
        """Write a state record for ``{env}/{name}``."""
        path = f"{self.tag}/vault-rotator/state/{self.env}/{name}"
        self.kv.write(path, record.to_dict(), cas=0)

    def live(self) -> set[str]:
        return {k["id"] for k in self.emulator.live_keys()}


MakeSetup = Callable[[str, tuple[str, ...]], Setup]


@pytest.fixture
def make_setup(
    vault: VaultServer,
    make_emulator: EmulatorFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MakeSetup]:
    """Build a Setup for a dialect and policy key names; VAULT_ADDR/VAULT_TOKEN point at Vault."""
    for name, value in vault.env().items():
        monkeypatch.setenv(name, value)
    conn = VaultConnection(vault.addr, vault.token)

    def build(dialect: str, names: tuple[str, ...]) -> Setup:
        tag = f"au-{uuid.uuid4().hex[:8]}"
        clock = FakeClock(NOW)
        emulator = make_emulator(dialect=dialect, clock=clock)
        kv = conn.kv("secret")
        kv.write(f"{tag}/management", {"key": MANAGEMENT_KEY}, cas=0)
        text = POLICY_YAML.format(env=tag, base_url=emulator.base_url, dialect=dialect, tag=tag)
        text += "".join(KEY_YAML.format(name=name, tag=tag) for name in names)
        config = tmp_path / tag
        config.mkdir()
        (config / f"{tag}.yaml").write_text(text)
        return Setup(tag, tag, emulator, kv, config, clock)

    yield build
    structlog.reset_defaults()  # before capsys's stream, which the logs were bound to, is gone
    conn.close()


def run_audit(setup: Setup, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the verb in process on the setup's fake clock; return (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser()
    audit_cmd.add_arguments(parser)
    args = parser.parse_args([*argv, "--config", str(setup.config)])
    capsys.readouterr()  # drop what the setup printed
    configure("debug", json=True)  # as the CLI does: logs on stderr, stdout is the output
    code = audit_cmd.run(args, clock=setup.clock)
    out, err = capsys.readouterr()
    assert "lr_live_" not in out + err
    assert "lr_mgmt_" not in out + err
    return code, out, err


def findings_of(out: str) -> set[tuple[str, str]]:
    return {(f["key_id"], f["kind"]) for f in json.loads(out)["findings"]}


def in_flight(env: str, name: str, *, old: str, new: str | None = None) -> StateRecord:
    """A published rotation holding ``old`` (and ``new``)."""
    rotation = Rotation(
        id="0abcdefghj",
        attempt=1,
        date="2027-01-15",
        policy={},
        permissions=Permissions(allowed_providers=("openai",)),
        started_at=NOW - DAY,
        start_version=1,
        old_key_id=old,
        new_key_id=new,
    )
    return StateRecord.new(env, name).evolve(phase="published", rotation=rotation)


# -- against a real Vault and the emulator -------------------------------------------------


def test_audit_finds_each_planted_problem(
    make_setup: MakeSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unmanaged, a stray, an old unused, an uncapped and a twice-served key are all found."""
    s = make_setup("c", ("app", "web", "batch"))
    shared = s.key("app-key")
    s.serve("app", shared)
    s.serve("web", shared)
    uncapped = s.key("batch-key", cap=None)
    s.serve("batch", uncapped)
    stranger = s.key("someones-key")[0]
    forgotten = s.key("forgotten", created=OLD, used=False)[0]
    stray = s.key(f"{s.env}-app-2027-01-15-0abcdefghj.1")[0]

    code, out, _ = run_audit(s, capsys, "--json")

    assert code == 1
    assert findings_of(out) == {
        (shared[0], "served-twice"),
        (uncapped[0], "no-spending-cap"),
        (stranger, "unmanaged"),
        (forgotten, "unmanaged"),
        (forgotten, "unused"),
        (stray, "unmanaged"),
    }
    by_kind = {(f["key_id"], f["kind"]): f for f in json.loads(out)["findings"]}
    assert "stray" in by_kind[(stray, "unmanaged")]["detail"]
    assert "stray" not in by_kind[(stranger, "unmanaged")]["detail"]
    assert "never used" in by_kind[(forgotten, "unused")]["detail"]
    twice = by_kind[(shared[0], "served-twice")]
    assert f"{s.tag}/app" in twice["detail"]
    assert f"{s.tag}/web" in twice["detail"]
    assert twice["base_url"] == s.emulator.base_url
    code, table, _ = run_audit(s, capsys)
    assert code == 1
    assert "6 findings" in table
    assert forgotten in table


def test_clean_setup_reports_nothing(
    make_setup: MakeSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Capped, used keys each served by one policy give no findings and exit 0."""
    s = make_setup("c", ("app", "web"))
    s.serve("app", s.key("app-key"))
    s.serve("web", s.key("web-key"))

    code, out, _ = run_audit(s, capsys)
    assert code == 0
    assert out.startswith("no findings (2 keys in 1 account,")
    code, out, _ = run_audit(s, capsys, "--json")
    assert code == 0
    assert json.loads(out)["findings"] == []


def delete_world(make_setup: MakeSetup) -> tuple[Setup, dict[str, str]]:
    """Old unused keys: one unmanaged, one served, one held by a rotation, one by an orphan."""
    s = make_setup("c", ("app", "web"))
    ids = {
        "unmanaged": s.key("forgotten", created=OLD, used=False)[0],
        "recent": s.key("someones-key")[0],  # unmanaged but in use: never deleted
    }
    served = s.key("app-key", created=OLD, used=False)
    s.serve("app", served)
    ids["served"] = served[0]
    ids["held"] = s.key("web-old", created=OLD, used=False)[0]
    web_new = s.key("web-new")
    s.serve("web", web_new)
    s.state("web", in_flight(s.env, "web", old=ids["held"], new=web_new[0]))
    ids["orphan"] = s.key("gone-old", created=OLD, used=False)[0]
    s.state("gone", in_flight(s.env, "gone", old=ids["orphan"]))
    return s, ids


def test_delete_unused_without_yes_deletes_nothing(
    make_setup: MakeSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """--delete-unused alone prints the one unused+unmanaged key and deletes nothing."""
    s, ids = delete_world(make_setup)
    before = s.live()

    code, out, _ = run_audit(s, capsys, "--delete-unused")

    assert code == 1
    assert s.live() == before
    assert "would delete 1 key:" in out
    assert f"{ids['unmanaged']} (forgotten)" in out
    assert "nothing deleted; add --yes" in out
    plan = out.split("would delete", 1)[1]
    assert all(ids[k] not in plan for k in ("served", "held", "orphan", "recent"))


def test_delete_unused_with_yes_deletes_only_unused_unmanaged(
    make_setup: MakeSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """--yes deletes the unused unmanaged key, logged by id; served and held keys stay live."""
    s, ids = delete_world(make_setup)

    code, out, err = run_audit(s, capsys, "--delete-unused", "--yes", "--json")

    doc = json.loads(out)
    assert [k["key_id"] for k in doc["deletion"]["deleted"]] == [ids["unmanaged"]]
    assert ids["unmanaged"] not in s.live()
    assert {ids[k] for k in ("served", "held", "orphan", "recent")} <= s.live()
    assert (ids["served"], "unused") in findings_of(out)  # reported, not deleted
    assert code == 1  # the served key's finding remains
    logs = [json.loads(line) for line in err.splitlines()]
    deleted = [e for e in logs if e["event"] == "unused unmanaged key deleted"]
    assert [e["key_id"] for e in deleted] == [ids["unmanaged"]]


def token_denied(vault: VaultServer, path: str) -> str:
    """A Vault token that may do everything under secret/ except touch ``path``."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    name = f"audit-deny-{uuid.uuid4().hex[:8]}"
    admin.sys.create_or_update_policy(
        name, f'path "secret/*" {{ capabilities = ["create", "read", "update", "delete", '
        f'"list"] }}\npath "{path}" {{ capabilities = ["deny"] }}'
    )  # fmt: skip
    return str(admin.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"])


def test_delete_unused_refuses_while_a_state_record_is_unreadable(
    make_setup: MakeSetup,
    capsys: pytest.CaptureFixture[str],
    vault: VaultServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record this token may not read may hold the candidate: nothing is deleted."""
    s, ids = delete_world(make_setup)
    hidden = f"secret/data/{s.env}/vault-rotator/state/{s.env}/gone"
    monkeypatch.setenv("VAULT_TOKEN", token_denied(vault, hidden))
    before = s.live()

    with pytest.raises(EngineError, match=r"refusing --delete-unused: 1 state record\(s\)"):
        run_audit(s, capsys, "--delete-unused", "--yes", "--json")

    assert s.live() == before
    assert ids["orphan"] in s.live()  # held only by the record it could not read


def test_delete_unused_refuses_while_a_state_folder_is_unreadable(
    make_setup: MakeSetup,
    capsys: pytest.CaptureFixture[str],
    vault: VaultServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole folder of records this token may not list may hold the candidate too."""
    s, _ids = delete_world(make_setup)
    other = f"{s.env}-other"
    s.kv.write(
        f"{s.env}/vault-rotator/state/{other}/x", in_flight(other, "x", old="k").to_dict(), cas=0
    )
    folder = f"secret/metadata/{s.env}/vault-rotator/state/{other}/"
    monkeypatch.setenv("VAULT_TOKEN", token_denied(vault, folder))
    before = s.live()

    with pytest.raises(EngineError, match=r"not readable with this token \(e\.g\. .*/state/"):
        run_audit(s, capsys, "--delete-unused", "--yes", "--json")

    assert s.live() == before


def test_dialect_a_judges_use_by_usage_and_says_so(
    make_setup: MakeSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dialect A: an old key with billable use is not unused; one without is, as weaker evidence."""
    s = make_setup("a", ("app",))
    s.serve("app", s.key("app-key", created=OLD))
    idle = s.key("idle", created=OLD, used=False)[0]

    code, out, _ = run_audit(s, capsys, "--json")

    assert code == 1
    assert findings_of(out) == {(idle, "unmanaged"), (idle, "unused")}
    detail = next(f["detail"] for f in json.loads(out)["findings"] if f["kind"] == "unused")
    assert "weaker" in detail


def test_usage_errors_are_config_errors(
    make_setup: MakeSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """--yes without --delete-unused, and --unused-days below 1, are refused before any I/O."""
    s = make_setup("c", ("app",))
    with pytest.raises(ConfigError, match="--yes goes with --delete-unused"):
        run_audit(s, capsys, "--yes")
    with pytest.raises(ConfigError, match="at least 1"):
        run_audit(s, capsys, "--unused-days", "0")
    assert s.emulator.request_counts().get("list", 0) == 0


# -- pure rules ----------------------------------------------------------------------------

ACCOUNT = Account(base_url="https://api.example", kv_mount="secret", management_key_path="m")


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@pytest.mark.parametrize(
    ("dialect", "record", "unused"),
    [
        ("c", KeyRecord("k", "n", created_at=at(OLD), last_used_at=at(NOW - 31 * DAY)), True),
        ("b", KeyRecord("k", "n", created_at=at(OLD), last_used_at=at(NOW - 29 * DAY)), False),
        ("c", KeyRecord("k", "n", created_at=at(OLD)), True),
        ("b", KeyRecord("k", "n", created_at=at(NOW - 29 * DAY)), False),
        ("c", KeyRecord("k", "n"), False),
        ("a", KeyRecord("k", "n", created_at=at(OLD), usage_cost=0.0), True),
        ("a", KeyRecord("k", "n", created_at=at(OLD), usage_cost=0.01), False),
        ("a", KeyRecord("k", "n", created_at=at(OLD), last_used_at=at(NOW)), False),
    ],
)
def test_unused_evidence_per_dialect(dialect: str, record: KeyRecord, unused: bool) -> None:
    """last_used_at decides when reported; else never-used age (B, C) or zero usage (A)."""
    assert (rules.unused_evidence(record, dialect, NOW, 30) is not None) is unused


def test_same_value_at_two_paths_is_served_twice_by_fingerprint() -> None:
    """Two secrets with the same value but different key_id fields are one served-twice finding."""
    policy_a = make_policy("x", "https://api.example", name="a", secret_path="x/a")
    policy_b = make_policy("x", "https://api.example", name="b", secret_path="x/b")
    value = "lr_live_" + "q" * 40
    served = [
        rules.served_by(policy_a, {"api_key": value, "key_id": "k1"}),
        rules.served_by(policy_b, {"api_key": value, "key_id": "k2"}),
    ]
    findings = rules.served_twice([s for s in served if s is not None], {})
    assert len(findings) == 1
    assert findings[0].kind == rules.SERVED_TWICE
    assert "same value fp:" in findings[0].detail
    assert value not in findings[0].detail


def test_unknown_served_key_and_api_key_management_refuse_deletion() -> None:
    """A secret without key_id, or an lr_live_ management key, blocks deletion in the account."""
    policy = make_policy("x", "https://api.example", adopt_key_id=None)
    old = KeyRecord("k-old", "forgotten", created_at=at(OLD))
    listing = rules.Listing(policy.account, "c", (old,))
    unknown = rules.served_by(policy, {"api_key": "lr_live_" + "z" * 40})
    assert unknown is not None
    report = rules.audit([listing], [unknown], rules.Held(), now=NOW, unused_days=30)
    assert report.candidates == ()
    assert rules.SERVED_UNKNOWN in {f.kind for f in report.findings}
    api_shaped = rules.Listing(policy.account, "c", (old,), management_is_api_key=True)
    report = rules.audit([api_shaped], [], rules.Held(), now=NOW, unused_days=30)
    assert report.candidates == ()
    assert "lr_live_" in report.refused[policy.account]
    report = rules.audit([listing], [], rules.Held(), now=NOW, unused_days=30)
    assert [c.key_id for c in report.candidates] == ["k-old"]


def test_held_by_names_every_attempt_and_the_pending_create() -> None:
    """A rotation in flight holds its ids, every attempt's key name and a recorded create."""
    policy = make_policy("x", "https://api.example")
    record = in_flight("test", policy.name, old="k-old", new="k-new").with_rotation(
        attempt=2, policy=policy.to_dict()
    )
    record = record.evolve(provider_write=ProviderWrite("create", "some-name", 1, NOW))
    held = rules.held_by(record, None)
    assert held.ids == {"k-old", "k-new"}
    assert held.names == {
        f"test-{policy.name}-2027-01-15-0abcdefghj.1",
        f"test-{policy.name}-2027-01-15-0abcdefghj.2",
        "some-name",
    }
    pattern = rules.NamePattern.of(policy)
    assert all(pattern.regex.fullmatch(n) for n in held.names - {"some-name"})
    assert not pattern.regex.fullmatch(f"test-{policy.name}-original")


def test_an_unreadable_key_is_reported_as_such_not_judged() -> None:
    """A key listed with fields that do not parse: no unused or no-cap finding, never deleted."""
    policy = make_policy("x", "https://api.example")
    odd = KeyRecord("k-odd", "someone\u0007elses key", created_at=None, problem="name: bad")
    listing = rules.Listing(policy.account, "c", (odd,))
    report = rules.audit([listing], [], rules.Held(), now=NOW, unused_days=30)
    assert {f.kind for f in report.findings} == {rules.UNMANAGED, rules.UNREADABLE}
    assert report.candidates == ()
    text = audit_cmd.table(report.findings)
    assert "\u0007" not in text
    assert "someone\\x07elses key" in text
