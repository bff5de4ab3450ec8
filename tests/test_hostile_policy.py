"""Hostile or careless policy files: every one ends in clean ``FILE:LINE`` problems.

Each test here is the regression test of one finding of issue 9 (items 1, 3, 5, 10): the file
that used to crash ``validate`` or the daemon's reload, or that used to pass although the
provider or Vault would refuse what it asks for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
import yaml

from vault_rotator import cli
from vault_rotator.daemon import service as service_module
from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.service import Service
from vault_rotator.policy import PolicyError, PolicySet, load_policies
from vault_rotator.policy import yamlsource as ys

# Line numbers matter: tests replace one line of BASE.
BASE = """\
environment: production
provider:
  type: arouter
  base_url: https://api.arouter.ai
  management_key:
    path: arouter/production/management
vault:
  kv_mount: secret
defaults:
  schedule: "@monthly"
  jitter: 30m
  key_name: "{env}-{name}-{date}-{rotation_id}"
keys:
  - name: backend
    secret_path: arouter/production/backend
    spending_limit: 500
"""

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def variant(old: str, new: str) -> str:
    """BASE with one line replaced (the line must exist)."""
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def config(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    """A config directory holding one policy file with ``text``."""
    directory = tmp_path / "config"
    directory.mkdir(exist_ok=True)
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return directory


def validate(capsys: pytest.CaptureFixture[str], directory: Path) -> tuple[int, list[str]]:
    """Run ``vault-rotator validate`` as a user would; (exit code, stdout and stderr lines)."""
    try:
        code = cli.main(["validate", "--config", str(directory)])
    finally:
        structlog.reset_defaults()  # main() bound logging to capsys's stream, gone after the test
    out, err = capsys.readouterr()
    return code, (out + err).splitlines()


def assert_clean(lines: list[str]) -> None:
    """No traceback, no raw control or bidi character, no line longer than a screen or two."""
    text = "\n".join(lines)
    assert "Traceback" not in text
    assert not CONTROL.search(text), text
    assert all(len(line) <= 400 for line in lines), max(lines, key=len)


def only_problem(capsys: pytest.CaptureFixture[str], directory: Path) -> str:
    """Validate a directory expected to hold one error; return that error's line."""
    code, lines = validate(capsys, directory)
    assert_clean(lines)
    assert code == 2, lines
    assert lines[-1] == "1 error: the policy files are not valid", lines
    return lines[0]


# ---------------------------------------------------------------- item 1: crashes of the loader


def test_deep_nesting_is_a_problem_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 nested brackets are refused as one problem at their line, not a RecursionError."""
    directory = config(tmp_path, variant("environment: production", "environment: " + "[" * 10_000))
    line = only_problem(capsys, directory)
    assert line.startswith(f"{directory / 'p.yaml'}:1: ")
    assert f"nested deeper than {ys.MAX_DEPTH} levels" in line


def test_integer_of_5000_digits_is_a_problem_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 5,000-digit number is refused at its line, not a ValueError from int()."""
    directory = config(tmp_path, variant("spending_limit: 500", "spending_limit: " + "9" * 5000))
    line = only_problem(capsys, directory)
    assert line.startswith(f"{directory / 'p.yaml'}:16: ")
    assert "longer than" in line


class _StubDaemon:
    """What Service.reload touches of a daemon: its policies and its accounts."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self.should_stop: Any = None

    def accounts(self) -> dict[Any, Any]:
        return self.policies.accounts()


def _service(directory: Path) -> tuple[Service, _StubDaemon]:
    daemon = _StubDaemon(load_policies(directory))
    # A stub, not a Daemon: Service.reload touches only policies, accounts() and should_stop.
    return Service(cast("Daemon", daemon), StopFlag(), directory), daemon


def test_reload_keeps_the_old_policies_on_a_hostile_file(tmp_path: Path) -> None:
    """SIGHUP with a 10,000-deep file: reload refuses it with FILE:LINE and keeps the old config."""
    directory = config(tmp_path, BASE)
    service, daemon = _service(directory)
    before = daemon.policies
    config(tmp_path, variant("environment: production", "environment: " + "[" * 10_000))
    with structlog.testing.capture_logs() as logs:
        assert service.reload() is False
    assert daemon.policies is before
    problems = [entry["problem"] for entry in logs if "problem" in entry]
    assert any(p.startswith(f"{directory / 'p.yaml'}:1: ") for p in problems), logs


def test_reload_keeps_the_old_policies_whatever_the_loader_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: any exception out of the loader is logged, and the daemon keeps going."""
    directory = config(tmp_path, BASE)
    service, daemon = _service(directory)
    before = daemon.policies

    def explode(_directory: Path) -> PolicySet:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(service_module, "load_policies", explode)
    with structlog.testing.capture_logs() as logs:
        assert service.reload() is False
    assert daemon.policies is before
    assert any("maximum recursion depth" in str(entry.get("error")) for entry in logs), logs


# ---------------------------------------------------------------- item 5: sizes and counts


def test_file_over_the_size_limit_is_refused_before_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A valid policy padded past 1 MiB with comments is refused by size, never opened or parsed."""
    padding = ("# " + "x" * 98 + "\n") * (ys.MAX_FILE_BYTES // 100 + 1)
    directory = config(tmp_path, BASE + padding)

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("a file over the size limit was opened or parsed")

    monkeypatch.setattr(yaml, "compose", refuse)  # the module yamlsource parses with
    monkeypatch.setattr(ys, "_Loader", refuse)
    monkeypatch.setattr(Path, "open", refuse)
    line = only_problem(capsys, directory)
    assert line.startswith(f"{directory / 'p.yaml'}: the file is larger than 1 MiB")


def test_too_many_nodes_is_one_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A list of more YAML nodes than the limit stops composing at the limit: one problem."""
    items = ",".join(["1"] * (ys.MAX_NODES + 10))
    directory = config(tmp_path, variant("  jitter: 30m", f"  jitter: [{items}]"))
    line = only_problem(capsys, directory)
    assert line.startswith(f"{directory / 'p.yaml'}:11: ")
    assert f"more than {ys.MAX_NODES} YAML nodes" in line


def test_long_scalar_is_refused_without_echoing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 100,000-character value is one short problem at its line, not an echo of the value."""
    directory = config(tmp_path, variant("  jitter: 30m", "  jitter: " + "9" * 100_000 + "s"))
    line = only_problem(capsys, directory)
    assert line.startswith(f"{directory / 'p.yaml'}:11: ")
    assert f"longer than {ys.MAX_SCALAR_CHARS} characters" in line


def test_too_many_keys_in_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More keys than the per-file limit is one problem at ``keys``."""
    from vault_rotator.policy.build import MAX_KEYS  # noqa: PLC0415

    entries = "".join(
        f"  - {{name: k{i}, secret_path: arouter/production/k{i}, spending_limit: 1}}\n"
        for i in range(MAX_KEYS + 1)
    )
    text = BASE.split("keys:\n", maxsplit=1)[0] + "keys:\n" + entries
    line = only_problem(capsys, config(tmp_path, text))
    assert f":13: keys: {MAX_KEYS + 1} keys; a file may hold at most {MAX_KEYS}" in line


def test_too_many_policy_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More policy files than the limit is refused for the directory, none of them parsed."""
    from vault_rotator.policy.loader import MAX_FILES  # noqa: PLC0415

    directory = tmp_path / "many"
    directory.mkdir()
    for i in range(MAX_FILES + 1):
        (directory / f"f{i:03}.yaml").write_text("{")
    line = only_problem(capsys, directory)
    assert line == f"{directory}: {MAX_FILES + 1} policy files; at most {MAX_FILES} are read"


# ---------------------------------------------------------------- item 3 and 10: accepted, wrongly


@pytest.mark.parametrize(
    ("old", "new", "line", "fragment"),
    [
        (
            '  schedule: "@monthly"',
            '  schedule: "0 0 31 2 *"',
            10,
            "defaults.schedule: cron '0 0 31 2 *' never fires within 5 years",
        ),
        (
            '  schedule: "@monthly"',
            '  schedule: "0 0 31 4,6,9,11 *"',
            10,
            "never fires within 5 years",
        ),
        (
            "spending_limit: 500",
            "spending_limit: 99999999999999",
            16,
            "keys[0].spending_limit: 99,999,999,999,999 USD is over the cap of 1,000,000 USD",
        ),
        (
            "spending_limit: 500",
            "spending_limit: " + "9" * 400,
            16,
            "keys[0].spending_limit: 999999999999999999999999999999999999999999999999999999999999",
        ),
        (
            "  jitter: 30m",
            "  jitter: 36500d",
            11,
            "defaults.jitter 36500d must be shorter than",
        ),
        (
            "  base_url: https://api.arouter.ai",
            "  base_url: https://api.arouter.ai/v1",
            4,
            "provider.base_url: invalid base_url 'https://api.arouter.ai/v1': no path",
        ),
        (
            "  base_url: https://api.arouter.ai",
            "  base_url: https://api.arouter.ai/?x=1",
            4,
            "no path, query or fragment",
        ),
        (
            "  base_url: https://api.arouter.ai",
            "  base_url: https://api.arouter.ai#x",
            4,
            "no path, query or fragment",
        ),
        (
            "  base_url: https://api.arouter.ai",
            "  base_url: https://user@api.arouter.ai",
            4,
            "no credentials",
        ),
        (
            "  base_url: https://api.arouter.ai",
            "  base_url: https://api.arouter.ai:99999",
            4,
            "invalid port",
        ),
        ("  kv_mount: secret", "  kv_mount: sys", 8, "vault.kv_mount: 'sys' is a Vault system"),
        ("  kv_mount: secret", "  kv_mount: /auth/", 8, "'auth' is a Vault system path"),
        ("  kv_mount: secret", "  kv_mount: Identity", 8, "system path"),
        ("  kv_mount: secret", "  kv_mount: cubbyhole", 8, "system path"),
        (
            '  key_name: "{env}-{name}-{date}-{rotation_id}"',
            '  key_name: "../x/{rotation_id}"',
            12,
            "defaults.key_name: key_name template '../x/{rotation_id}' holds '/'",
        ),
        (
            '  key_name: "{env}-{name}-{date}-{rotation_id}"',
            '  key_name: "\\u202e{rotation_id} \\t\\u0007"',
            12,
            "key_name template '\\u202e{rotation_id} \\t\\x07' holds '\\u202e', ' ', '\\t'",
        ),
        (
            '  key_name: "{env}-{name}-{date}-{rotation_id}"',
            '  key_name: "{{rotation_id}}{rotation_id}"',
            12,
            "holds '{', '}'",
        ),
        (
            '  key_name: "{env}-{name}-{date}-{rotation_id}"',
            '  key_name: "' + "k" * 250 + '{rotation_id}"',
            12,
            "renders to 265 characters (at most 256)",
        ),
    ],
)
def test_values_the_provider_or_vault_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, line: int, fragment: str
) -> None:
    """Each value that used to pass validate is now one problem, at its line, naming the rule."""
    directory = config(tmp_path, variant(old, new))
    problem = only_problem(capsys, directory)
    assert problem.startswith(f"{directory / 'p.yaml'}:{line}: "), problem
    assert fragment in problem


def test_long_rendered_key_name_counts_env_and_name(tmp_path: Path) -> None:
    """The 256-character limit holds for the longest render: env, name, date and a long id."""
    name = "n" * 232
    text = variant("  - name: backend", f"  - name: {name}")
    with pytest.raises(PolicyError) as info:
        load_policies(config(tmp_path, text))
    (problem,) = info.value.errors
    assert problem.line == 12
    assert "renders to 270 characters (at most 256)" in problem.message


def test_at_the_limits_is_valid(tmp_path: Path) -> None:
    """A cap of exactly 1,000,000 USD, a 256-character key name and jitter under max_age pass."""
    template = "k" * (255 - len("production-backend-2026-01-01-0123456789.9999")) + "-"
    text = variant("spending_limit: 500", "spending_limit: 1000000")
    text = text.replace("{env}-{name}", template + "{env}-{name}")
    text = text.replace("  jitter: 30m", "  jitter: 44d")
    policies = load_policies(config(tmp_path, text))
    (key,) = policies
    assert key.spending_limit == 1_000_000
    assert key.jitter_s == 44 * 86400


def test_non_utf8_file_is_reported_at_the_line_of_the_bad_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte that is not UTF-8 is reported with the line it is on, and shown escaped."""
    raw = variant("  jitter: 30m", "  jitter: 30\xffm").encode("latin-1")
    line = only_problem(capsys, config(tmp_path, raw))
    assert ":11: the file is not valid UTF-8: byte 0xff at column 13" in line


def test_raw_control_character_is_reported_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raw BEL byte in the file (YAML refuses it) is reported at its line, escaped."""
    line = only_problem(capsys, config(tmp_path, variant("  jitter: 30m", "  jitter: 30\am")))
    assert ":11: YAML syntax error: unacceptable character #x0007" in line


def test_messages_cut_and_escape_what_they_quote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long value with control characters is quoted cut to about 80 characters and escaped."""
    value = "\\u0007\\u202e" + "x" * 900
    directory = config(tmp_path, variant('  schedule: "@monthly"', f'  schedule: "{value}"'))
    line = only_problem(capsys, directory)
    assert "'\\x07\\u202exxxx" in line
    assert "…' (902 characters)" in line
    assert len(line) < 300


def test_an_unknown_field_with_a_hostile_name_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A field name with bidi and control characters, 500 long, is quoted cut and escaped."""
    name = "\\u202e\\u0007" + "y" * 500
    text = variant("vault:", f'"{name}": 1\nvault:')
    line = only_problem(capsys, config(tmp_path, text))
    assert "unknown field '\\u202e\\x07yyy" in line


@pytest.mark.parametrize("kind", ["dangling", "fifo", "device"])
def test_a_policy_file_that_is_not_a_regular_file_is_a_problem_not_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A dangling link (a half-updated ConfigMap), a FIFO or a device is reported, never read."""
    directory = config(tmp_path, BASE)
    odd = directory / "prod.yaml"
    if kind == "dangling":
        odd.symlink_to(directory / "..data" / "prod.yaml")
    elif kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero")
    line = only_problem(capsys, directory)
    assert line.startswith(f"{odd}: ")
    assert "not read" in line


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:0", "invalid port"),
        ("http://127.0.0.1:", "invalid port"),
        ("http://127.0.0.1%2f:8787", "the host is not a name or an IP address"),
        ("file:///etc/passwd", "expected http(s)://host[:port]"),
    ],
)
def test_base_urls_that_fail_only_at_run_time_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, why: str
) -> None:
    """Port 0, an empty port, a percent-encoded host and a non-HTTP scheme fail validate."""
    text = BASE.replace("https://api.arouter.ai", f'"{url}"')
    line = only_problem(capsys, config(tmp_path, text))
    assert why in line
