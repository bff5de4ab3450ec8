"""One namespace per deployment (issue 20, items 3 and 9): a policy file may not put a secret, a
management key or its own state inside another file's ``<state_prefix>/`` in the same KV mount,
nor write a secret path with the mount's ``data/`` in it; and ``vault-policy consumer`` grants
nothing under any configured state prefix but the key's own ack folder, even when the validator
is bypassed.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import structlog

from vault_rotator import cli
from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.service import Service
from vault_rotator.errors import ConfigError
from vault_rotator.policy import (
    EnvironmentPolicy,
    KeyPolicy,
    ManagementKeyRef,
    PolicyError,
    PolicySet,
    ProviderPolicy,
    VaultPolicy,
    load_policies,
    vaultacl,
)

# Line numbers matter: the vault block is lines 7-9, the key's secret_path line 13.
FILE = """\
environment: {env}
provider:
  type: arouter
  base_url: https://api.example.test
  management_key:
    path: {management}
vault:
  kv_mount: {mount}
  state_prefix: {prefix}
require_spending_limit: false
keys:
  - name: app
    secret_path: {secret}
"""
PREFIX_LINE, SECRET_LINE, MANAGEMENT_LINE = 9, 13, 6


def write(directory: Path, name: str, **fields: str) -> Path:
    """A policy file from FILE; unset fields get harmless values of their own."""
    env = fields.get("env", name)
    values = {
        "env": env,
        "management": f"mgmt/{env}",
        "mount": "secret",
        "prefix": "vault-rotator",
        "secret": f"apps/{env}/app",
    } | fields
    path = directory / f"{name}.yaml"
    path.write_text(FILE.format(**values), encoding="utf-8")
    return path


def problems(directory: Path) -> list[str]:
    """The problems load_policies raises, as FILE:LINE: message strings."""
    with pytest.raises(PolicyError) as info:
        load_policies(directory)
    return [str(problem) for problem in info.value.problems]


# ---------------------------------------------------------------- the validator, across files


def test_files_sharing_one_mount_and_state_prefix_stay_allowed(tmp_path: Path) -> None:
    """Two environments keeping state under one prefix of one mount load without a problem."""
    write(tmp_path, "prod-x")
    write(tmp_path, "prod-y")
    policies = load_policies(tmp_path)
    assert sorted(policies.environments) == ["prod-x", "prod-y"]
    assert policies.warnings == []


def test_a_nested_prefix_in_another_mount_is_allowed(tmp_path: Path) -> None:
    """Another KV mount is another namespace: the same prefix text there collides with nothing."""
    write(tmp_path, "prod-x")
    write(tmp_path, "prod-y", mount="other", prefix="vault-rotator/y")
    write(
        tmp_path,
        "prod-z",
        mount="other",
        prefix="vault-rotator/y",
        secret="vault-rotator/state/prod-x/app",
    )
    assert sorted(load_policies(tmp_path).environments) == ["prod-x", "prod-y", "prod-z"]


@pytest.mark.parametrize("first", [True, False], ids=["outer-first", "inner-first"])
def test_a_state_prefix_nested_inside_another_files_is_refused(tmp_path: Path, first: bool) -> None:
    """The inner prefix is reported at its own line, naming the outer one, in either order."""
    outer = write(tmp_path, "a" if first else "b", env="prod-x")
    inner = write(tmp_path, "b" if first else "a", env="prod-y", prefix="vault-rotator/y")
    assert problems(tmp_path) == [
        f"{inner}:{PREFIX_LINE}: vault.state_prefix 'vault-rotator/y' is inside the "
        f"state_prefix 'vault-rotator' of {outer}:{PREFIX_LINE} (kv_mount 'secret'), where "
        "vault-rotator keeps that file's state; give each deployment its own prefix, or share "
        "one prefix exactly"
    ]


@pytest.mark.parametrize(
    "secret",
    [
        "vault-rotator/state/prod-x/app",
        "vault-rotator/acks/prod-x/app/web-1",
        "vault-rotator/pending/prod-x/app",
        "vault-rotator/emergency/prod-x",
        "vault-rotator",
    ],
)
def test_a_secret_path_inside_another_files_state_prefix_is_refused(
    tmp_path: Path, secret: str
) -> None:
    """Issue 20 item 3: prod-y's secret in prod-x's state (another prefix) is refused."""
    outer = write(tmp_path, "a", env="prod-x")
    inner = write(tmp_path, "b", env="prod-y", prefix="other-rot", secret=secret)
    assert problems(tmp_path) == [
        f"{inner}:{SECRET_LINE}: keys[0].secret_path {secret!r} is inside the state_prefix "
        f"'vault-rotator' of {outer}:{PREFIX_LINE} (kv_mount 'secret'), where vault-rotator "
        "keeps that file's state"
    ]


def test_a_secret_path_inside_a_later_files_state_prefix_is_refused_too(tmp_path: Path) -> None:
    """The secret path is the one reported, whichever file comes first."""
    inner = write(tmp_path, "a", env="prod-y", secret="other-rot/acks/prod-x/app/web-1")
    outer = write(tmp_path, "b", env="prod-x", prefix="other-rot")
    assert problems(tmp_path) == [
        f"{inner}:{SECRET_LINE}: keys[0].secret_path 'other-rot/acks/prod-x/app/web-1' is inside "
        f"the state_prefix 'other-rot' of {outer}:{PREFIX_LINE} (kv_mount 'secret'), where "
        "vault-rotator keeps that file's state"
    ]


def test_a_management_key_inside_another_files_state_prefix_is_refused(tmp_path: Path) -> None:
    """A management key under another file's state prefix is refused at its path's line."""
    outer = write(tmp_path, "a", env="prod-x")
    inner = write(tmp_path, "b", env="prod-y", prefix="other-rot", management="vault-rotator/mk")
    assert problems(tmp_path) == [
        f"{inner}:{MANAGEMENT_LINE}: provider.management_key.path 'vault-rotator/mk' is inside "
        f"the state_prefix 'vault-rotator' of {outer}:{PREFIX_LINE} (kv_mount 'secret'), where "
        "vault-rotator keeps that file's state"
    ]


def test_a_collision_inside_one_file_is_still_refused_once(tmp_path: Path) -> None:
    """The in-file rule keeps its message; the cross-file rule does not repeat it."""
    inner = write(tmp_path, "a", env="prod-x", secret="vault-rotator/state/prod-x/app")
    write(tmp_path, "b", env="prod-y")
    assert problems(tmp_path) == [
        f"{inner}:{SECRET_LINE}: keys[0].secret_path 'vault-rotator/state/prod-x/app' is inside "
        "vault.state_prefix 'vault-rotator', where vault-rotator keeps its state"
    ]


@pytest.mark.parametrize(
    ("mount", "secret"),
    [
        ("secret", "secret/data/apps/app"),
        ("secret", "/secret/data/apps/app"),
        ("secret", "data/apps/app"),
        ("kv", "kv/data/apps/app"),
    ],
)
def test_a_secret_path_holding_the_mounts_data_segment_is_refused(
    tmp_path: Path, mount: str, secret: str
) -> None:
    """Issue 20 item 9: ``secret/data/…`` as a secret path would be read at
    ``secret/data/secret/data/…``; refused, pointing at docs/upgrading.md."""
    file = write(tmp_path, "a", env="prod-x", mount=mount, secret=secret)
    found = problems(tmp_path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{file}:{SECRET_LINE}: keys[0].secret_path ")
    assert f"is relative to kv_mount {mount!r}" in found[0]
    assert "docs/upgrading.md" in found[0]


def test_a_secret_path_with_data_elsewhere_is_allowed(tmp_path: Path) -> None:
    """Only a leading ``data/`` (or ``<mount>/data/``) is the API path's: ``apps/data/x`` and
    another mount's name before ``data/`` are ordinary paths."""
    write(tmp_path, "a", env="prod-x", secret="apps/data/app")
    write(tmp_path, "b", env="prod-y", secret="kv/data/app")
    write(tmp_path, "c", env="prod-z", secret="database/app")
    assert len(load_policies(tmp_path).environments) == 3


def test_validate_prints_the_collision_in_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``validate`` names the file and line of the colliding secret path, without a traceback."""
    write(tmp_path, "a", env="prod-x")
    inner = write(tmp_path, "b", env="prod-y", prefix="other-rot", secret="vault-rotator/x")
    assert cli.main(["validate", "--config", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert f"{inner}:{SECRET_LINE}: keys[0].secret_path 'vault-rotator/x' is inside" in out + err
    assert "Traceback" not in out + err


class _StubDaemon:
    """What Service.reload touches of a daemon: its policies (as in test_hostile_policy)."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies


def test_the_daemons_reload_refuses_a_cross_file_collision(tmp_path: Path) -> None:
    """SIGHUP after another file's secret moved into the state prefix: the reload is refused
    with FILE:LINE, and the daemon keeps the policies it had."""
    write(tmp_path, "a", env="prod-x")
    write(tmp_path, "b", env="prod-y", prefix="other-rot")
    daemon = _StubDaemon(load_policies(tmp_path))
    service = Service(cast("Daemon", daemon), StopFlag(), tmp_path)
    before = daemon.policies
    inner = write(tmp_path, "b", env="prod-y", prefix="other-rot", secret="vault-rotator/acks/x")
    with structlog.testing.capture_logs() as logs:
        assert service.reload() is False
    assert daemon.policies is before
    problems = [entry["problem"] for entry in logs if "problem" in entry]
    assert [p.split(": ")[0] for p in problems] == [f"{inner}:{SECRET_LINE}"], logs


# ---------------------------------------------------------------- vault-policy consumer, bypassed


def _environment(env: str, secret: str, *, prefix: str, mount: str = "secret") -> EnvironmentPolicy:
    """One environment with one key, built without the validator."""
    provider = ProviderPolicy(
        base_url="https://api.example.test", management_key=ManagementKeyRef(path=f"mgmt/{env}")
    )
    vault = VaultPolicy(kv_mount=mount, state_prefix=prefix)
    key = KeyPolicy(env=env, name="app", secret_path=secret, provider=provider, vault=vault)
    return EnvironmentPolicy(
        environment=env,
        source=Path(f"{env}.yaml"),
        provider=provider,
        vault=vault,
        require_spending_limit=False,
        keys=(key,),
    )


# Every collision the validator refuses, as (environments), the colliding key last.
COLLISIONS = {
    "secret-at-another-state-record": [
        _environment("prod-x", "apps/x", prefix="vault-rotator"),
        _environment("prod-y", "vault-rotator/state/prod-x/app", prefix="other-rot"),
    ],
    "secret-in-another-ack-folder": [
        _environment("prod-x", "apps/x", prefix="vault-rotator"),
        _environment("prod-y", "vault-rotator/acks/prod-x/app/web-1", prefix="other-rot"),
    ],
    "secret-at-another-prefix-itself": [
        _environment("prod-x", "apps/x", prefix="vault-rotator"),
        _environment("prod-y", "vault-rotator", prefix="other-rot"),
    ],
    "secret-in-its-own-prefix": [
        _environment("prod-y", "vault-rotator/changes", prefix="vault-rotator"),
    ],
    "secret-inside-a-nested-prefix": [
        _environment("prod-x", "apps/x", prefix="vault-rotator/x"),
        _environment("prod-y", "vault-rotator/x/state/prod-x/app", prefix="vault-rotator"),
    ],
    "nested-prefix": [
        _environment("prod-x", "apps/x", prefix="vault-rotator"),
        _environment("prod-y", "apps/y", prefix="vault-rotator/y"),
    ],
    "prefix-holding-another": [
        _environment("prod-x", "apps/x", prefix="vault-rotator/acks/prod-y/app"),
        _environment("prod-y", "apps/y", prefix="vault-rotator"),
    ],
    "mount-data-in-secret-path": [
        _environment("prod-x", "apps/x", prefix="vault-rotator"),
        _environment("prod-y", "secret/data/vault-rotator/state/prod-x/app", prefix="other-rot"),
    ],
}


def _inside_a_prefix(path: str, policies: PolicySet) -> list[str]:
    """The configured ``<mount>/{data,metadata}/<state_prefix>`` namespaces ``path`` is in."""
    found = []
    for environment in policies.environments.values():
        mount, prefix = environment.vault.kv_mount, environment.vault.state_prefix
        for kind in ("data", "metadata"):
            root = f"{mount}/{kind}/{prefix}"
            if path == root or path.startswith(root + "/"):
                found.append(root)
    return found


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_the_consumer_policy_grants_nothing_in_a_state_prefix_but_its_own_acks(case: str) -> None:
    """For every key of every refused collision, the consumer policy is refused or each of its
    rules lies outside every configured state prefix, but the key's own ack folder, which lies in
    its own prefix only (an ack glob inside another prefix could write that prefix's records)."""
    environments = COLLISIONS[case]
    policies = PolicySet({e.environment: e for e in environments})
    for key in policies:
        try:
            rules = vaultacl.consumer_rules(key, policies)
        except ConfigError:
            continue  # refused: nothing granted
        mount, prefix = key.vault.kv_mount, key.vault.state_prefix
        own_acks = f"{mount}/data/{vaultacl.acks_folder(prefix, key.env, key.name)}/+"
        for rule in rules:
            allowed = [f"{mount}/data/{prefix}"] if rule.path == own_acks else []
            assert _inside_a_prefix(rule.path, policies) == allowed, (case, key.ref, rule.path)


@pytest.mark.parametrize(
    "case",
    [
        "secret-at-another-state-record",
        "secret-in-another-ack-folder",
        "secret-at-another-prefix-itself",
        "secret-in-its-own-prefix",
        "secret-inside-a-nested-prefix",
        "nested-prefix",
        "prefix-holding-another",
    ],
)
def test_a_consumer_policy_reaching_into_a_state_prefix_is_refused_in_one_line(case: str) -> None:
    """The colliding key's consumer policy is not generated: one line naming the path, whether
    its secret or its own ack folder lies in a state prefix not its own."""
    environments = COLLISIONS[case]
    policies = PolicySet({e.environment: e for e in environments})
    key = environments[-1].keys[0]
    if case == "prefix-holding-another":
        key = environments[0].keys[0]  # its ack folder lies in prod-y's prefix
    with pytest.raises(ConfigError, match="is inside the state_prefix") as info:
        vaultacl.consumer_rules(key, policies)
    assert "\n" not in str(info.value)


def test_the_consumer_policy_of_a_key_outside_every_prefix_is_unchanged() -> None:
    """The shipped layout: read on the secret, create/update on the own ack folder, nothing else."""
    environments = COLLISIONS["nested-prefix"]
    policies = PolicySet({e.environment: e for e in environments})
    rules = vaultacl.consumer_rules(policies.key("prod-x", "app"), policies)
    assert [(rule.path, rule.capabilities) for rule in rules] == [
        ("secret/data/apps/x", ("read",)),
        ("secret/data/vault-rotator/acks/prod-x/app/+", ("create", "update")),
    ]
