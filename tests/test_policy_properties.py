"""Property tests of the policy loader: whatever a file holds, the outcome is clean.

Every example writes a config directory under ``tmp_path`` and loads it through the public entry
(``load_policies``, or the ``validate`` verb through ``vault_rotator.cli.main``). The outcome is
either a PolicySet whose keys the engine and daemon can use, or a PolicyError listing one-line
``FILE:LINE`` problems; never another exception, a traceback or a hang. Each test takes a
share of the profile's ``max_examples`` (see :func:`budget`); with the ``ci`` profile the file
runs in well under 30 s.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault_rotator import cli
from vault_rotator.daemon.due import next_due
from vault_rotator.policy import KeyPolicy, PolicyError, PolicySet, load_policies
from vault_rotator.policy.fields import MAX_SPENDING_LIMIT, SYSTEM_MOUNTS
from vault_rotator.policy.naming import MAX_KEY_NAME_CHARS, longest_key_name

VALID = """\
environment: production
provider:
  type: arouter
  base_url: https://api.arouter.ai
  dialect: auto
  management_key:
    path: arouter/production/management
    field: key
  usage_lag: 60s
  poll_interval: 30s
  max_concurrent: 4
vault:
  kv_mount: secret
  state_prefix: vault-rotator
require_spending_limit: true
defaults:
  schedule: "@monthly"
  jitter: 30m
  window: "Mon-Fri 09:00-17:00"
  max_age: 45d
  pickup_timeout: 24h
  drain_period: 24h
  drain_timeout: 7d
  disable_before_delete: 0s
  key_ttl: 90d
  key_name: "{env}-{name}-{date}-{rotation_id}"
keys:
  - name: backend
    secret_path: arouter/production/backend
    allowed_providers: [openai, anthropic]
    allowed_models: [gpt-4o]
    spending_limit: 500.0
    limit_reset: monthly
    adopt_key_id: key_abc123
  - name: batch
    secret_path: arouter/production/batch
    schedule: "every 30d"
    spending_limit: 20
"""
VALID_DATA: dict[str, Any] = yaml.safe_load(VALID)
FIELDS = sorted(
    {"environment", "provider", "vault", "defaults", "keys", "name", "secret_path", "type"}
    | {"base_url", "dialect", "management_key", "path", "field", "kv_mount", "state_prefix"}
    | set(VALID_DATA["defaults"])
    | set(VALID_DATA["keys"][0])
    | {"<<", "on", "~"}
)
ODD_STRINGS = [
    "\u202e{rotation_id}",
    "\x07",
    "\t",
    "\x00",
    "\ufeff",
    "\u2028",
    "{rotation_id}",
    "{env}-{name}",
    "{{}}",
    "@monthly",
    "@often",
    "0 0 31 2 *",
    "0 0 30 2 *",
    "61 * * * *",
    "every 0s",
    "every 36500d",
    "36500d",
    "1e400",
    "99999999999999999999d",
    ".nan",
    "-.inf",
    "../x",
    "/",
    "sys",
    "auth",
    "http://[::1",
    "https://user:pw@h/p?q#f",
    "https://h:99999",
    "Mon-Fri 09:00-17:00",
    "Sun 24:00-01:00",
    "a" * 300,
]

texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30) | st.sampled_from(
    ODD_STRINGS
)
numbers = (
    st.integers(min_value=-(10**1500), max_value=10**1500)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
)
scalars = st.none() | st.booleans() | numbers | texts
names = st.sampled_from(FIELDS) | texts
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
    max_leaves=25,
)


def dump(data: object) -> str:
    """YAML for any generated value (control characters come out escaped, as YAML requires)."""
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1_000_000)


def _paths(data: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_policies(draw: st.DrawFn) -> str:
    """The valid policy with one to three nodes replaced, deleted or given a sibling."""
    data = copy.deepcopy(VALID_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(data))[1:]))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(names)] = draw(values)
        else:
            parent.append(draw(values))
    return dump(data)


@st.composite
def edited_texts(draw: st.DrawFn) -> str:
    """The valid policy's text with characters inserted, lines dropped or lines repeated."""
    lines = VALID.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["insert", "drop", "repeat", "indent"]))
        if action == "insert":
            column = draw(st.integers(0, len(lines[index])))
            text = draw(texts | st.sampled_from(list("[]{}:-&*!|>'\"#%@`,?")))
            lines[index] = lines[index][:column] + text + lines[index][column:]
        elif action == "drop" and len(lines) > 1:
            del lines[index]
        elif action == "repeat":
            lines.insert(index, lines[index])
        else:
            lines[index] = " " * draw(st.integers(1, 3)) + lines[index]
    return "".join(lines)


def write(tmp_path: Path, content: str | bytes) -> tuple[Path, Path]:
    """(config directory, policy file) holding ``content``; replaces the previous example's."""
    directory = tmp_path / "config"
    directory.mkdir(exist_ok=True)
    file = directory / "policy.yaml"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content, encoding="utf-8")
    return directory, file


def check_outcome(directory: Path, file: Path) -> PolicySet | None:
    """Load ``directory``: a usable PolicySet, or clean problems; anything else fails the test."""
    try:
        policies = load_policies(directory)
    except PolicyError as exc:
        check_problems(exc, directory, file)
        return None
    check_usable(policies)
    return policies


def check_problems(error: PolicyError, directory: Path, file: Path) -> None:
    """Every problem is one printable, short ``FILE:LINE: message`` line, at a line of the file."""
    lines = file.read_bytes().count(b"\n") + 1
    unlocated = ("the file is larger than", "cannot read the file")
    assert error.errors
    for problem in error.problems:
        text = str(problem)
        assert text.isprintable(), text
        assert len(text) < 600, text
        assert text.startswith(f"{problem.file}:{problem.line}: " if problem.line else "")
        assert problem.file in (directory, file)
        assert problem.line is None or 1 <= problem.line <= lines + 1, (problem, lines)
        assert problem.line is not None or problem.message.startswith(unlocated), text


def check_usable(policies: PolicySet) -> None:
    """What validate accepts, the engine and daemon can use as it is."""
    for key in policies:
        assert KeyPolicy.from_dict(key.to_dict()) == key
        name = longest_key_name(key.key_name, env=key.env, name=key.name)
        assert len(name) <= MAX_KEY_NAME_CHARS
        assert set(name) <= set(string.ascii_letters + string.digits + "._-")
        assert key.spending_limit is None or key.spending_limit <= MAX_SPENDING_LIMIT
        assert key.vault.kv_mount.lower() not in SYSTEM_MOUNTS
        assert key.provider.base_url.count("/") == 2, key.provider.base_url
        assert key.jitter_s < key.max_age_s
        last = 1_800_000_000.0
        assert (
            next_due(key, last_success_at=last, rotated_at=None, now=last) <= last + key.max_age_s
        )


def budget(share: float) -> settings:
    """Settings for one test: ``share`` of the profile's max_examples (ci 60, long 2000).

    No example may take 10 s (a hang fails the test); ``tmp_path`` and ``capsys`` are shared
    by a test's examples, which overwrite the file and read the output each time.
    """
    default = settings.default
    assert default is not None  # conftest loads a profile
    return settings(
        max_examples=max(10, round(default.max_examples * share)),
        deadline=timedelta(seconds=10),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@budget(2)
@given(document=values)
def test_any_yaml_document_loads_cleanly(tmp_path: Path, document: object) -> None:
    """Any YAML value as a whole file (nested, huge numbers, odd unicode) ends cleanly."""
    check_outcome(*write(tmp_path, dump(document)))


@budget(1)
@given(content=st.binary(max_size=300) | st.text(max_size=300))
def test_any_bytes_load_cleanly(tmp_path: Path, content: bytes | str) -> None:
    """Any bytes or text as a file (not UTF-8, control characters, broken YAML) end cleanly."""
    check_outcome(*write(tmp_path, content))


@budget(0.7)
@given(
    depth=st.integers(1, 5000),
    style=st.sampled_from(["[{0}]", "{{a: {0}}}", "- {0}", "!!seq [{0}]"]),
    where=st.sampled_from(["environment", "keys", "defaults"]),
)
def test_any_nesting_depth_loads_cleanly(
    tmp_path: Path, depth: int, style: str, where: str
) -> None:
    """Nesting to any depth, in flow or block style, under any field, is at worst one problem."""
    value = "x"
    for _ in range(depth):
        value = style.format(value)
    text = VALID_DATA | {where: None}
    check_outcome(*write(tmp_path, dump(text).replace(f"{where}: null", f"{where}: {value}")))


@budget(2.5)
@given(text=mutated_policies())
def test_mutated_policy_validates_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """A valid policy with nodes replaced by arbitrary values: validate exits 0 or 2, cleanly."""
    directory, file = write(tmp_path, text)
    check_outcome(directory, file)
    try:
        code = cli.main(["validate", "--config", str(directory)])
    finally:
        structlog.reset_defaults()
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, out, err)
    assert err == ""
    lines = out.splitlines()
    assert all(line.startswith(f"{file}:") and line.isprintable() for line in lines[:-1]), out
    if code == 2:
        assert lines[-1].endswith("the policy files are not valid")


@budget(1.7)
@given(text=edited_texts())
def test_edited_policy_text_loads_cleanly(tmp_path: Path, text: str) -> None:
    """A valid policy's text with stray characters, dropped or repeated lines ends cleanly."""
    check_outcome(*write(tmp_path, text))


def test_the_valid_policy_is_valid(tmp_path: Path) -> None:
    """The base of the mutations is itself valid, so mutations start from a usable policy."""
    policies = check_outcome(*write(tmp_path, VALID))
    assert policies is not None
    assert [key.name for key in policies] == ["backend", "batch"]
