"""Policy files: loading, every validation rule (from real files), the model and `validate`."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from vault_rotator.commands import validate_cmd
from vault_rotator.errors import ConfigError
from vault_rotator.policy import (
    KeyPolicy,
    PolicyError,
    PolicySet,
    PolicyValueError,
    format_duration,
    load_policies,
    parse_duration,
    parse_schedule,
    parse_window,
    render_key_name,
    resolve_config_dir,
)

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "config"

# Line numbers matter: the cases below replace one line of BASE with one line.
BASE = """\
environment: production
provider:
  type: arouter
  base_url: https://api.arouter.ai
  dialect: auto
  management_key:
    path: arouter/production/management
  usage_lag: 60s
  max_concurrent: 4
vault:
  kv_mount: secret
defaults:
  schedule: "@monthly"
  window: null
  drain_period: 24h
  key_ttl: null
  key_name: "{env}-{name}-{date}-{rotation_id}"
keys:
  - name: backend
    secret_path: arouter/production/backend
    spending_limit: 500
    limit_reset: monthly
    allowed_models: [gpt-4o]
"""

DEV = """\
environment: dev
provider:
  type: arouter
  base_url: http://127.0.0.1:8787
  dialect: c
  management_key: {path: arouter/dev/management}
keys:
  - name: demo-app
    secret_path: arouter/dev/demo-app
"""


def write(directory: Path, name: str, text: str) -> Path:
    """Write a policy file and return its path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def variant(old: str, new: str) -> str:
    """BASE with one line replaced (the line must exist)."""
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def problems(config_dir: Path) -> list[str]:
    """The problems load_policies raises for a directory, as FILE:LINE: message strings."""
    with pytest.raises(PolicyError) as info:
        load_policies(config_dir)
    return [str(problem) for problem in info.value.problems]


def validate(config_dir: Path | str | None) -> int:
    """Run the `validate` verb as the CLI would."""
    parser = argparse.ArgumentParser()
    validate_cmd.add_arguments(parser)
    argv = [] if config_dir is None else ["--config", str(config_dir)]
    return validate_cmd.run(parser.parse_args(argv))


# ---------------------------------------------------------------- one problem per file, exact line

CASES = [
    # (old line, new line, expected line, expected message fragment)
    ('  schedule: "@monthly"', "  schedule: @monthly", 13, "YAML syntax error"),
    ("vault:", "vualt:", 10, "unknown field 'vualt' (did you mean 'vault'?)"),
    ("  usage_lag: 60s", "  usage_lagg: 60s", 8, "provider: unknown field 'usage_lagg'"),
    ("    path: arouter/production/management", "    pth: x", 7, "unknown field 'pth'"),
    ("  window: null", "  windows: null", 14, "defaults: unknown field 'windows'"),
    (
        "    limit_reset: monthly",
        "    limit_rest: monthly",
        22,
        "keys[0]: unknown field 'limit_rest'",
    ),
    ("  base_url: https://api.arouter.ai", "  # none", 2, "missing required field 'base_url'"),
    ("environment: production", "# none", 2, "missing required field 'environment'"),
    ("  - name: backend", "  - nam: backend", 19, "keys[0]: missing required field 'name'"),
    ("environment: production", "environment: 123", 1, "environment: expected a string"),
    ("environment: production", "environment: Prod_1", 1, "environment: 'Prod_1' may hold only"),
    (
        "    spending_limit: 500",
        '    spending_limit: "500"',
        21,
        "keys[0].spending_limit: expected a number",
    ),
    (
        "  max_concurrent: 4",
        "  max_concurrent: true",
        9,
        "provider.max_concurrent: expected an integer",
    ),
    (
        "  max_concurrent: 4",
        "  max_concurrent: 0",
        9,
        "provider.max_concurrent: input should be greater",
    ),
    (
        "    allowed_models: [gpt-4o]",
        "    allowed_models: gpt-4o",
        23,
        "keys[0].allowed_models: expected a list",
    ),
    (
        "    allowed_models: [gpt-4o]",
        "    allowed_models: []",
        23,
        "keys[0].allowed_models: an empty list",
    ),
    (
        '  schedule: "@monthly"',
        '  schedule: "61 * * * *"',
        13,
        "defaults.schedule: invalid cron '61 * * * *'",
    ),
    ('  schedule: "@monthly"', '  schedule: "0 0 1 * 1"', 13, "defaults.schedule: invalid cron"),
    (
        '  schedule: "@monthly"',
        '  schedule: "@often"',
        13,
        "defaults.schedule: unknown schedule '@often'",
    ),
    (
        '  schedule: "@monthly"',
        '  schedule: "every 0s"',
        13,
        "defaults.schedule: schedule 'every 0s'",
    ),
    (
        "  usage_lag: 60s",
        "  usage_lag: 60",
        8,
        "provider.usage_lag: duration 60 has no unit: write 60s",
    ),
    (
        "  drain_period: 24h",
        "  drain_period: 24hrs",
        15,
        "defaults.drain_period: invalid duration '24hrs'",
    ),
    (
        "  drain_period: 24h",
        "  drain_period: -1h",
        15,
        "defaults.drain_period: invalid duration '-1h'",
    ),
    (
        "  window: null",
        '  window: "Mon-Fri 9-17"',
        14,
        "defaults.window: invalid window 'Mon-Fri 9-17'",
    ),
    ("  window: null", '  window: "Mon-Fri 10:00-10:00"', 14, "defaults.window: invalid window"),
    (
        "  dialect: auto",
        "  dialect: d",
        5,
        "provider.dialect: must be 'auto', 'a', 'b' or 'c', got 'd'",
    ),
    ("  type: arouter", "  type: openrouter", 3, "provider.type: must be 'arouter'"),
    (
        "    limit_reset: monthly",
        "    limit_reset: yearly",
        22,
        "keys[0].limit_reset: must be 'daily'",
    ),
    ("  base_url: https://api.arouter.ai", "  base_url: ftp://x", 4, "provider.base_url: invalid"),
    (
        "    secret_path: arouter/production/backend",
        "    secret_path: a/../b",
        20,
        "keys[0].secret_path: invalid Vault path",
    ),
    ("  kv_mount: secret", "  kv_mount: a/b", 11, "vault.kv_mount: invalid kv_mount"),
    (
        '  key_name: "{env}-{name}-{date}-{rotation_id}"',
        '  key_name: "{env}-{name}"',
        17,
        "defaults.key_name: key_name template '{env}-{name}' lacks {rotation_id}",
    ),
    (
        '  key_name: "{env}-{name}-{date}-{rotation_id}"',
        '  key_name: "{nme}-{rotation_id}"',
        17,
        "unknown placeholder {nme}",
    ),
    ("    spending_limit: 500", "    # no cap", 19, "key 'backend' has no spending_limit"),
    (
        "    spending_limit: 500",
        "    spending_limit: 0",
        21,
        "keys[0].spending_limit: spending_limit must be a positive",
    ),
    (
        "  drain_period: 24h",
        "  drain_period: 30s",
        15,
        "defaults.drain_period 30s is shorter than provider.usage_lag 1m",
    ),
    (
        "  key_ttl: null",
        "  key_ttl: 53d",
        16,
        "defaults.key_ttl 53d must be longer than max_age + pickup_timeout + drain_timeout "
        "(45d + 1d + 7d = 53d)",
    ),
    (
        "    secret_path: arouter/production/backend",
        "    secret_path: arouter/production/management",
        20,
        "secret_path 'arouter/production/management' is the management key's path at",
    ),
    (
        "    limit_reset: monthly",
        "    spending_limit: 600",
        22,
        "duplicate field 'spending_limit' (first at line 21)",
    ),
    (
        "  kv_mount: secret",
        "  state_prefix: arouter/production",
        20,
        "keys[0].secret_path 'arouter/production/backend' is inside vault.state_prefix",
    ),
    ("  window: null", "  window: !!python/object:os.system {}", 14, "unsupported YAML tag"),
]


@pytest.mark.parametrize(("old", "new", "line", "fragment"), CASES)
def test_each_problem_is_reported_at_its_line(
    tmp_path: Path, old: str, new: str, line: int, fragment: str
) -> None:
    """Each invalid setting yields FILE:LINE: message, with the line of the offending node."""
    file = write(tmp_path, "production.yaml", variant(old, new))
    found = problems(tmp_path)
    assert any(p.startswith(f"{file}:{line}: ") and fragment in p for p in found), found


def test_base_file_is_valid(tmp_path: Path) -> None:
    """The file the cases start from is itself valid, so each case tests one change."""
    write(tmp_path, "production.yaml", BASE)
    policies = load_policies(tmp_path)
    assert [key.ref for key in policies] == ["production/backend"]
    assert policies.warnings == []


# ---------------------------------------------------------------- problems that span keys or files


def test_duplicate_key_names_in_a_file(tmp_path: Path) -> None:
    """Two keys with one name in a file are an error at the second name."""
    text = (
        BASE
        + "  - name: backend\n    secret_path: arouter/production/other\n    spending_limit: 1\n"
    )
    file = write(tmp_path, "production.yaml", text)
    assert problems(tmp_path) == [f"{file}:24: duplicate key name 'backend' (first at line 19)"]


def test_duplicate_environment_across_files(tmp_path: Path) -> None:
    """The same environment in two files is an error in the second file."""
    first = write(tmp_path, "a.yaml", BASE)
    text = BASE.replace("arouter/production/backend", "arouter/production/copy")
    second = write(tmp_path, "b.yml", text)
    assert problems(tmp_path) == [
        f"{second}:1: environment 'production' is already defined at {first}:1"
    ]


def test_secret_path_shared_across_files(tmp_path: Path) -> None:
    """A secret_path used by keys of two files is an error at the later one, naming the first."""
    first = write(tmp_path, "a.yaml", BASE)
    second = write(
        tmp_path, "b.yaml", DEV.replace("arouter/dev/demo-app", "/arouter/production/backend/")
    )
    assert problems(tmp_path) == [
        f"{second}:9: secret_path 'arouter/production/backend' is already used by key "
        f"production/backend at {first}:20"
    ]


def test_secret_path_equal_to_another_files_management_key(tmp_path: Path) -> None:
    """A secret_path may not be the management-key path of any file."""
    write(tmp_path, "a.yaml", BASE)
    second = write(
        tmp_path, "b.yaml", DEV.replace("arouter/dev/demo-app", "arouter/production/management")
    )
    found = problems(tmp_path)
    assert len(found) == 1
    assert found[0].startswith(
        f"{second}:9: secret_path 'arouter/production/management' is the management"
    )


def test_empty_config_dir_is_an_error(tmp_path: Path) -> None:
    """A directory without *.yaml or *.yml files is an error naming the directory."""
    write(tmp_path, "notes.txt", "not a policy")
    assert problems(tmp_path) == [f"{tmp_path}: no policy files (*.yaml, *.yml) in this directory"]


def test_missing_config_dir_is_an_error(tmp_path: Path) -> None:
    """A config directory that does not exist is an error, not a traceback."""
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: config directory not found"]


def test_empty_file_and_non_mapping_file(tmp_path: Path) -> None:
    """An empty file and a file whose top level is a list are both reported at line 1."""
    empty = write(tmp_path, "a.yaml", "")
    listing = write(tmp_path, "b.yaml", "- 1\n")
    assert problems(tmp_path) == [
        f"{empty}:1: the file is empty; expected a policy mapping",
        f"{listing}:1: expected a mapping of policy fields at the top level",
    ]


def test_all_problems_are_collected(tmp_path: Path) -> None:
    """Problems in several fields, keys and files are all reported in one pass."""
    text = variant("  dialect: auto", "  dialect: d").replace("usage_lag: 60s", "usage_lag: 60")
    text = text.replace("limit_reset: monthly", "limit_reset: yearly")
    text += "  - name: second\n    secret_path: arouter/production/second\n    drain_period: 1s\n"
    write(tmp_path, "production.yaml", text)
    write(tmp_path, "zz.yaml", "environment: [\n")
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    lines = [problem.line for problem in info.value.problems]
    assert lines == [5, 8, 22, 24, 2]  # dialect, usage_lag, limit_reset, missing cap, syntax
    assert str(info.value).endswith("(and 4 more)")


def test_broken_defaults_do_not_hide_key_rules(tmp_path: Path) -> None:
    """An invalid field under defaults still lets the rules about each key run."""
    text = variant('  key_name: "{env}-{name}-{date}-{rotation_id}"', '  key_name: "{env}"')
    file = write(tmp_path, "production.yaml", text.replace("    spending_limit: 500\n", ""))
    found = problems(tmp_path)
    assert f"{file}:19: key 'backend' has no spending_limit" in "\n".join(found)
    assert any(p.startswith(f"{file}:17: defaults.key_name") for p in found)


def test_rule_about_a_default_is_reported_once(tmp_path: Path) -> None:
    """A drain_period under defaults that is too short is one problem, not one per key."""
    text = variant("  drain_period: 24h", "  drain_period: 10s")
    text += "  - name: second\n    secret_path: arouter/production/second\n    spending_limit: 1\n"
    file = write(tmp_path, "production.yaml", text)
    found = problems(tmp_path)
    assert found == [
        f"{file}:15: defaults.drain_period 10s is shorter than provider.usage_lag 1m: use the "
        "provider records late could make the old key look quiet while it is still in use"
    ]


def test_explicit_null_on_a_key_overrides_a_default_cap(tmp_path: Path) -> None:
    """`spending_limit: null` on a key drops the cap set under defaults, which prod refuses."""
    text = BASE.replace("defaults:\n", "defaults:\n  spending_limit: 10\n").replace(
        "    spending_limit: 500", "    spending_limit: null"
    )
    file = write(tmp_path, "production.yaml", text)
    assert any(
        p.startswith(f"{file}:22: key 'backend' has no spending_limit") for p in problems(tmp_path)
    )


def test_spending_limit_not_required_outside_prod(tmp_path: Path) -> None:
    """Without a prod* name or require_spending_limit, a key may inherit its cap."""
    write(tmp_path, "dev.yaml", DEV)
    policies = load_policies(tmp_path)
    assert policies.key("dev", "demo-app").spending_limit is None
    assert policies.environments["dev"].require_spending_limit is False


def test_require_spending_limit_true_outside_prod(tmp_path: Path) -> None:
    """require_spending_limit: true applies to any environment name."""
    file = write(tmp_path, "dev.yaml", "require_spending_limit: true\n" + DEV)
    assert problems(tmp_path) == [
        f"{file}:9: key 'demo-app' has no spending_limit, which environment 'dev' requires "
        "(require_spending_limit); set one on the key or under defaults to cap what a leaked "
        "key can spend"
    ]


def test_shared_account_must_be_configured_alike(tmp_path: Path) -> None:
    """Two files using one provider account with different settings is an error."""
    write(tmp_path, "a.yaml", BASE)
    text = DEV.replace("http://127.0.0.1:8787", "https://api.arouter.ai").replace(
        "arouter/dev/management", "arouter/production/management"
    )
    second = write(tmp_path, "b.yaml", text)
    found = problems(tmp_path)
    assert len(found) == 1
    assert found[0].startswith(f"{second}:2: provider account https://api.arouter.ai")
    assert "dialect" in found[0]


def test_a_management_key_goes_to_one_provider_url_only(tmp_path: Path) -> None:
    """Another team's file naming production's management key with its own base_url (the
    rotator would send that key there) is refused at its base_url, naming the first file."""
    first = write(tmp_path, "a.yaml", BASE)
    text = DEV.replace("http://127.0.0.1:8787", "https://collector.example.net").replace(
        "arouter/dev/management", "arouter/production/management"
    )
    second = write(tmp_path, "b.yaml", text)
    found = [p for p in problems(tmp_path) if "one provider URL only" in p]
    assert len(found) == 1
    assert found[0].startswith(f"{second}:")
    assert f"is used by {first} with base_url 'https://api.arouter.ai'" in found[0]


def test_adopt_key_id_claimed_twice(tmp_path: Path) -> None:
    """Two keys of one account cannot adopt the same provider key."""
    text = BASE.replace(
        "    spending_limit: 500\n", "    spending_limit: 500\n    adopt_key_id: key_1\n"
    )
    text += "  - name: other\n    secret_path: arouter/production/other\n"
    text += "    spending_limit: 1\n    adopt_key_id: key_1\n"
    file = write(tmp_path, "production.yaml", text)
    assert problems(tmp_path) == [
        f"{file}:28: adopt_key_id 'key_1' is already adopted by key production/backend"
    ]


def test_yaml_merge_keys_and_recursive_aliases_are_refused(tmp_path: Path) -> None:
    """`<<` merge keys and self-referencing anchors are errors with their lines."""
    text = BASE.replace("vault:\n  kv_mount: secret\n", "vault: &v\n  <<: {kv_mount: secret}\n")
    merge = write(tmp_path, "production.yaml", text)
    loop = write(tmp_path, "z.yaml", "environment: z\nprovider: &p\n  x: [*p]\n")
    found = problems(tmp_path)
    assert f"{merge}:11: YAML merge keys (<<) are not supported; use 'defaults' instead" in found
    assert f"{loop}:2: recursive YAML alias (an anchor used inside itself)" in found


# ---------------------------------------------------------------- warnings


def test_dialect_a_explicit_zero_disable_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In dialect a, disable_before_delete: 0s is a warning and validate still exits 0."""
    text = variant("  dialect: auto", "  dialect: a").replace(
        "  window: null", "  disable_before_delete: 0s"
    )
    file = write(tmp_path, "production.yaml", text)
    assert validate(tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == f"{file}: environment production, 1 key, provider https://api.arouter.ai (dialect a)"
    )
    assert out[1].startswith(
        f"{file}:14: warning: defaults.disable_before_delete is 0s in dialect a"
    )
    assert load_policies(tmp_path).key("production", "backend").disable_before_delete_s == 0


def test_plain_http_to_a_remote_host_is_a_warning(tmp_path: Path) -> None:
    """A management key sent over plain http off the machine is a warning at base_url."""
    write(
        tmp_path,
        "p.yaml",
        variant("  base_url: https://api.arouter.ai", "  base_url: http://10.1.2.3"),
    )
    warnings = load_policies(tmp_path).warnings
    assert [(w.line, w.severity) for w in warnings] == [(4, "warning")]
    assert "plain http" in warnings[0].message


# ---------------------------------------------------------------- the effective model


def test_defaults_merge_and_per_key_overrides(tmp_path: Path) -> None:
    """A key gets its own value, else the defaults value, else the built-in default."""
    text = BASE.replace("  window: null\n", '  window: "Mon-Fri 09:00-17:00"\n  jitter: 5m\n')
    text += "  - name: batch\n    secret_path: arouter/production/batch\n"
    text += "    spending_limit: 20.5\n    window: null\n    drain_period: 2h\n"
    write(tmp_path, "production.yaml", text)
    policies = load_policies(tmp_path)
    backend, batch = policies.key("production", "backend"), policies.key("production", "batch")
    assert (backend.window, batch.window) == ("Mon-Fri 09:00-17:00", None)
    assert (backend.jitter_s, batch.jitter_s) == (300.0, 300.0)
    assert (backend.drain_period_s, batch.drain_period_s) == (86400.0, 7200.0)
    assert (backend.allowed_models, batch.allowed_models) == (("gpt-4o",), None)
    assert (backend.limit_reset, batch.limit_reset) == ("monthly", None)
    assert (batch.max_age_s, batch.pickup_timeout_s) == (45 * 86400, 86400)
    assert (batch.drain_timeout_s, batch.schedule) == (7 * 86400, "@monthly")
    assert batch.key_name == "{env}-{name}-{date}-{rotation_id}"


def test_builtin_provider_and_vault_defaults(tmp_path: Path) -> None:
    """Omitted provider and vault settings take the documented defaults."""
    write(tmp_path, "dev.yaml", DEV)
    env = load_policies(tmp_path).environments["dev"]
    assert env.provider.management_key.field == "key"
    assert (env.provider.usage_lag_s, env.provider.poll_interval_s) == (60.0, 30.0)
    assert env.provider.max_concurrent == 4
    assert (env.vault.kv_mount, env.vault.state_prefix) == ("secret", "vault-rotator")


def test_disable_before_delete_default_follows_the_dialect(tmp_path: Path) -> None:
    """Unset disable_before_delete is 10m in dialect a, 0s in c, and decided later for auto."""
    write(tmp_path, "a.yaml", variant("  dialect: auto", "  dialect: a"))
    write(tmp_path, "dev.yaml", DEV)
    policies = load_policies(tmp_path)
    assert policies.key("production", "backend").disable_before_delete_s == 600
    assert policies.key("dev", "demo-app").disable_before_delete_s == 0
    write(tmp_path, "a.yaml", BASE)
    auto = load_policies(tmp_path).key("production", "backend")
    assert auto.disable_before_delete_s is None
    assert (auto.disable_before_delete_for("a"), auto.disable_before_delete_for("b")) == (600, 0)


def test_key_policy_round_trips_through_json(tmp_path: Path) -> None:
    """to_dict() is JSON-safe and from_dict() rebuilds an equal policy."""
    write(tmp_path, "production.yaml", BASE.replace("  key_ttl: null", "  key_ttl: 90d"))
    key = load_policies(tmp_path).key("production", "backend")
    stored = json.loads(json.dumps(key.to_dict()))
    assert (stored["version"], stored["key_ttl_s"]) == (1, 90 * 86400)
    assert KeyPolicy.from_dict(stored) == key
    assert KeyPolicy.from_dict(stored).account == key.account


def test_from_dict_refuses_other_versions_and_bad_values(tmp_path: Path) -> None:
    """A stored policy of another version, or with a bad value, is a ConfigError."""
    write(tmp_path, "production.yaml", BASE)
    stored = load_policies(tmp_path).key("production", "backend").to_dict()
    with pytest.raises(ConfigError, match="version 2"):
        KeyPolicy.from_dict({**stored, "version": 2})
    with pytest.raises(ConfigError, match="schedule"):
        KeyPolicy.from_dict({**stored, "schedule": "61 * * * *"})


def test_policy_set_lookup_errors_name_what_is_known(tmp_path: Path) -> None:
    """Unknown environments and keys raise ConfigError listing the known ones."""
    write(tmp_path, "dev.yaml", DEV)
    policies = load_policies(tmp_path)
    assert policies.lookup("dev/demo-app").ref == "dev/demo-app"
    with pytest.raises(ConfigError, match=r"no environment 'prod'.*known: dev"):
        policies.key("prod", "demo-app")
    with pytest.raises(ConfigError, match=r"no key 'x' in environment 'dev'.*known keys: demo-app"):
        policies.key("dev", "x")
    with pytest.raises(ConfigError, match="expected ENV/NAME"):
        policies.lookup("demo-app")


def test_accounts_group_keys(tmp_path: Path) -> None:
    """accounts() groups keys by base URL, KV mount and management-key path."""
    write(tmp_path, "dev.yaml", DEV)
    write(tmp_path, "production.yaml", BASE)
    accounts = load_policies(tmp_path).accounts()
    assert sorted(str(account) for account in accounts) == [
        "http://127.0.0.1:8787 (secret/arouter/dev/management)",
        "https://api.arouter.ai (secret/arouter/production/management)",
    ]


def test_policy_error_str_is_first_error_and_count(tmp_path: Path) -> None:
    """PolicyError's message is the first error as FILE:LINE: message plus the others' count."""
    file = write(
        tmp_path,
        "p.yaml",
        variant("  dialect: auto", "  dialect: d").replace("type: arouter", "type: x"),
    )
    with pytest.raises(PolicyError) as info:
        load_policies(tmp_path)
    assert str(info.value).startswith(f"{file}:3: provider.type: must be 'arouter'")
    assert str(info.value).endswith(" (and 1 more)")
    assert isinstance(info.value, ConfigError)


# ---------------------------------------------------------------- names, durations, schedules


def test_render_key_name() -> None:
    """Placeholders are filled, the date is the UTC day, and an unknown placeholder is refused."""
    moment = datetime(2025, 4, 1, 23, 30, tzinfo=UTC)
    name = render_key_name(
        "{env}-{name}-{date}-{rotation_id}", env="prod", name="api", date=moment, rotation_id="r1"
    )
    assert name == "prod-api-2025-04-01-r1"
    assert (
        render_key_name("{rotation_id}", env="e", name="n", date=date(2025, 1, 2), rotation_id="x")
        == "x"
    )
    with pytest.raises(PolicyValueError, match="unknown placeholder"):
        render_key_name("{team}-{rotation_id}", env="e", name="n", date=moment, rotation_id="r")
    with pytest.raises(PolicyValueError, match="lacks"):
        render_key_name("{env}", env="e", name="n", date=moment, rotation_id="r")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("1.5h", 5400), ("7d", 604800), ("0s", 0), ("2m", 120)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Numbers with a unit parse to seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "fragment"), [("60", "has no unit"), ("5w", "unknown unit 'w'"), ("h", "invalid")]
)
def test_parse_duration_refuses(text: str, fragment: str) -> None:
    """A bare number, an unknown unit or no number are refused with a message saying which."""
    with pytest.raises(PolicyValueError, match=fragment):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    """format_duration picks the largest exact unit, and parse_duration reads it back."""
    assert [format_duration(s) for s in (0, 90, 5400, 86400, 1.5)] == [
        "0s",
        "90s",
        "90m",
        "1d",
        "1.5s",
    ]
    assert all(parse_duration(format_duration(s)) == s for s in (0.25, 59, 3600, 129600))


def test_cron_day_of_week_uses_crontab_numbering() -> None:
    """Day of week 1 is Monday and 0/7 Sunday, as in crontab."""
    wednesday = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_schedule("0 6 * * 1").next_after(wednesday) == datetime(2025, 1, 6, 6, tzinfo=UTC)
    assert parse_schedule("0 0 * * 7").next_after(wednesday) == datetime(2025, 1, 5, tzinfo=UTC)
    assert parse_schedule("@monthly").next_after(wednesday) == datetime(2025, 2, 1, tzinfo=UTC)
    assert parse_schedule("every 30d").interval_s == 30 * 86400


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ("0 0 L * *", "the day of month 'L' is not crontab syntax"),
        ("0 0 * * mon#2", "the day of week 'mon#2' is not crontab syntax"),
        ("0 0 0 * * *", "expected 5 fields"),
        ("0 0 * * 1/3", "a step in day of week needs a range or '*'"),
        ("0 24 * * *", "the hour must be 0-23"),
        ("0 0 * * 8", "the day of week must be 0-7"),
    ],
)
def test_cron_outside_crontab_syntax_is_refused(cron: str, fragment: str) -> None:
    """cronsim's extensions, seconds and an ambiguous weekday step are refused, by name."""
    with pytest.raises(
        PolicyValueError, match=re.escape(f"invalid cron '{cron}': ") + ".*" + re.escape(fragment)
    ):
        parse_schedule(cron)


def test_cron_question_mark_means_any_day_of_week() -> None:
    """A ``?`` day of week (as schedules written for Quartz have) means any day."""
    schedule = parse_schedule("0 6 1 * ?")
    assert schedule.cron == "0 6 1 * *"
    after = datetime(2025, 1, 1, 7, tzinfo=UTC)
    assert schedule.next_after(after) == datetime(2025, 2, 1, 6, tzinfo=UTC)


def test_cron_that_never_fires_parses_and_answers_none_at_once() -> None:
    """The 31st of February parses (a stored policy stays readable) and has no next firing."""
    schedule = parse_schedule("0 0 31 2 *")
    assert schedule.next_after(datetime(2025, 1, 1, tzinfo=UTC)) is None


def test_window_wraps_past_midnight() -> None:
    """A window whose end is before its start runs into the next day."""
    window = parse_window("Fri 22:00-02:00")
    assert window.contains(datetime(2025, 1, 4, 1, 59, tzinfo=UTC))  # Saturday 01:59
    assert not window.contains(datetime(2025, 1, 4, 2, 0, tzinfo=UTC))
    assert window.next_open(datetime(2025, 1, 1, tzinfo=UTC)) == datetime(
        2025, 1, 3, 22, tzinfo=UTC
    )
    assert parse_window("Sat,Sun 00:00-06:00").days == frozenset({5, 6})


# ---------------------------------------------------------------- the validate verb


def test_shipped_config_validates(capsys: pytest.CaptureFixture[str]) -> None:
    """config/ in the repository validates with exit 0 and one summary line per file."""
    assert validate(SHIPPED_CONFIG) == 0
    out = capsys.readouterr().out
    assert (
        f"{SHIPPED_CONFIG / 'dev.yaml'}: environment dev, 1 key, "
        "provider http://127.0.0.1:8787 (dialect c)" in out
    )
    assert f"{SHIPPED_CONFIG / 'production.yaml'}: environment production, 3 keys" in out
    assert "warning" not in out


def test_shipped_dev_policy_matches_the_demo() -> None:
    """The dev policy is what the demo expects: emulator URL, dialect c, second-scale durations."""
    key = load_policies(SHIPPED_CONFIG).key("dev", "demo-app")
    assert (key.provider.base_url, key.provider.dialect) == ("http://127.0.0.1:8787", "c")
    assert key.provider.management_key.path == "arouter/dev/management"
    assert (key.secret_path, key.spending_limit) == ("arouter/dev/demo-app", 25)
    assert key.allowed_providers == ("openai", "anthropic")
    assert (key.drain_period_s, key.pickup_timeout_s, key.drain_timeout_s) == (4, 60, 60)
    assert all(k.spending_limit for k in load_policies(SHIPPED_CONFIG) if k.env == "production")


def test_validate_prints_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On errors, validate prints FILE:LINE: message for each, a count, and exits 2."""
    text = variant("  dialect: auto", "  dialect: d").replace("usage_lag: 60s", "usage_lag: 60")
    file = write(tmp_path, "production.yaml", text)
    assert validate(tmp_path) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{file}:5: provider.dialect:")
    assert out[1].startswith(f"{file}:8: provider.usage_lag: duration 60 has no unit")
    assert out[2] == "2 errors: the policy files are not valid"


def test_validate_reads_the_config_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --config, validate uses $VAULT_ROTATOR_CONFIG."""
    file = write(tmp_path, "dev.yaml", DEV)
    monkeypatch.setenv("VAULT_ROTATOR_CONFIG", str(tmp_path))
    assert validate(None) == 0
    assert capsys.readouterr().out.startswith(f"{file}: environment dev, 1 key")


def test_resolve_config_dir_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over $VAULT_ROTATOR_CONFIG, which wins over ./config."""
    monkeypatch.delenv("VAULT_ROTATOR_CONFIG", raising=False)
    assert resolve_config_dir(None) == Path("config")
    monkeypatch.setenv("VAULT_ROTATOR_CONFIG", "/etc/vr")
    assert resolve_config_dir(None) == Path("/etc/vr")
    assert resolve_config_dir("here") == Path("here")


def test_policy_set_iterates_all_keys(tmp_path: Path) -> None:
    """Iterating a PolicySet yields every key of every environment."""
    write(tmp_path, "dev.yaml", DEV)
    write(tmp_path, "production.yaml", BASE)
    policies = load_policies(tmp_path)
    assert isinstance(policies, PolicySet)
    assert sorted(key.ref for key in policies) == ["dev/demo-app", "production/backend"]


def test_the_environment_name_frozen_is_reserved(tmp_path: Path) -> None:
    """`frozen` would make the environment's control path the freezes record."""
    file = write(tmp_path, "frozen.yaml", variant("environment: production", "environment: frozen"))
    found = problems(tmp_path)
    assert len(found) == 1
    assert found[0].startswith(f"{file}:1: environment name 'frozen' is reserved")


def test_drain_on_acks_without_require_acks_is_a_warning(tmp_path: Path) -> None:
    """drain_on_acks alone cannot see consumers that never acknowledge: a warning says so."""
    write(
        tmp_path,
        "p.yaml",
        variant("  drain_period: 24h\n", "  drain_period: 24h\n  drain_on_acks: true\n"),
    )
    warnings = [str(w) for w in load_policies(tmp_path).warnings]
    assert len(warnings) == 1
    assert "drain_on_acks without require_acks" in warnings[0]
    write(
        tmp_path,
        "p.yaml",
        variant(
            "  drain_period: 24h\n",
            "  drain_period: 24h\n  drain_on_acks: true\n  require_acks: 2\n",
        ),
    )
    assert load_policies(tmp_path).warnings == []


# ---------------------------------------------------------------- issue 20 item 9: validate bounds


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ("0-59/1000000000000 * * * *", "the minute's step 1000000000000 is over 60"),
        ("0 */25 * * *", "the hour's step 25 is over 24"),
        ("0 0 */32 * *", "the day of month's step 32 is over 31"),
        ("0 0 1 */13 *", "the month's step 13 is over 12"),
        ("0 0 * * 0-7/9", "the day of week's step 9 is over 8"),
        ("0 0 1 1-12/99999999999999999999999 *", "the month's step 9999999999"),
    ],
)
def test_a_cron_step_beyond_the_fields_range_is_refused_at_its_line(
    tmp_path: Path, cron: str, fragment: str
) -> None:
    """A step longer than the field has values (``0-59/1000000000000``) is a typo: refused
    with FILE:LINE, naming the field and its number of values."""
    file = write(tmp_path, "p.yaml", variant('  schedule: "@monthly"', f'  schedule: "{cron}"'))
    found = problems(tmp_path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{file}:13: defaults.schedule: invalid cron ")
    assert fragment in found[0]


def test_a_cron_step_as_long_as_the_field_is_allowed(tmp_path: Path) -> None:
    """``*/60`` minutes (once an hour) and ``*/24`` hours stay valid, and a stored policy with a
    longer step stays readable (only policy files are checked)."""
    write(tmp_path, "p.yaml", variant('  schedule: "@monthly"', '  schedule: "*/60 */24 * * *"'))
    assert load_policies(tmp_path).key("production", "backend").schedule == "*/60 */24 * * *"
    assert parse_schedule("0-59/1000000000000 * * * *").cron is not None


def test_an_ack_ttl_beyond_its_maximum_is_refused_at_its_line(tmp_path: Path) -> None:
    """``ack_ttl: 36500d`` would keep every instance present for a century: refused (90d at
    most), while 90d itself is allowed."""
    file = write(tmp_path, "p.yaml", variant("  key_ttl: null", "  ack_ttl: 36500d"))
    assert problems(tmp_path) == [
        f"{file}:16: defaults.ack_ttl: 36500d is over the maximum of 90d for ack_ttl (an "
        "instance silent that long is gone; run the ack command from a timer to keep an "
        "agent-only consumer present)"
    ]
    write(tmp_path, "p.yaml", variant("  key_ttl: null", "  ack_ttl: 90d"))
    assert load_policies(tmp_path).key("production", "backend").ack_ttl_s == 90 * 86400


def test_usage_lag_zero_is_a_warning_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``usage_lag: 0s`` trusts the provider's usage as immediate: a warning, validate exits 0."""
    file = write(
        tmp_path,
        "p.yaml",
        variant("  usage_lag: 60s", "  usage_lag: 0s").replace(
            "drain_period: 24h", "drain_period: 0s"
        ),
    )
    assert validate(tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "warning:" in line] == [
        f"{file}:8: warning: provider.usage_lag is 0s: use the provider records late would be "
        "missed, and an old key still in use could look quiet; set at least how late and how "
        "coarsely the provider records use (default 60s)"
    ]
