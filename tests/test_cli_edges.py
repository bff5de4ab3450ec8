"""CLI edges: log level and format from flags or env, arguments checked before the environment,
an unreachable daemon, and what `--wait` prints (and when `--timeout` gives up)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from vault_rotator import cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = str(REPO / "config")  # valid policies: loading them needs no Vault
CLEARED = (
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_TOKEN_FILE",
    "VAULT_ROTATOR_CONFIG",
    "VAULT_ROTATOR_DAEMON",
    "VAULT_ROTATOR_LOG_LEVEL",
    "VAULT_ROTATOR_LOG_FORMAT",
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Vault or rotator settings from the caller's shell; structlog reset afterwards."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    yield
    structlog.reset_defaults()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``vault-rotator ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. log level and format ----------------------------------------------------------------


def test_unknown_log_level_is_a_one_line_usage_error_not_a_traceback() -> None:
    """`--log-level loud` exits 2 with one line naming the bad value, no traceback."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    done = subprocess.run(
        [sys.executable, "-m", "vault_rotator", "--log-level", "loud", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "loud" in done.stderr
    assert done.stdout == ""


def probe_logs(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Log one debug and one info line through the CLI's configuration; what reached stderr."""
    capsys.readouterr()
    log = structlog.get_logger("probe")
    log.debug("probe-debug")
    log.info("probe-info")
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "validate", "--config", EXAMPLES],
        ["validate", "--log-level", "debug", "--config", EXAMPLES],
        ["validate", "--config", EXAMPLES, "--log-level", "debug"],
    ],
    ids=["before-verb", "after-verb", "last"],
)
def test_log_level_is_taken_before_or_after_the_verb(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`--log-level debug` works in front of the verb and after it (no subparser clobbering)."""
    code, _out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert any("probe-debug" in line for line in probe_logs(capsys))


@pytest.mark.parametrize(
    ("flag", "env", "debug_shown", "info_shown"),
    [
        (None, None, False, True),  # default: info
        (None, "error", False, False),  # env when no flag
        (None, "DEBUG", True, True),  # env is case-insensitive
        ("debug", "error", True, True),  # flag beats env
        ("error", "debug", False, False),
    ],
)
def test_log_level_flag_beats_env_beats_default(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    debug_shown: bool,
    info_shown: bool,
) -> None:
    """The level is `--log-level`, else $VAULT_ROTATOR_LOG_LEVEL, else info."""
    if env is not None:
        monkeypatch.setenv("VAULT_ROTATOR_LOG_LEVEL", env)
    argv = ["validate", "--config", EXAMPLES] + (["--log-level", flag] if flag else [])
    code, _out, err = run_cli(capsys, *argv)
    assert code == 0, err
    lines = probe_logs(capsys)
    assert any("probe-debug" in line for line in lines) is debug_shown
    assert any("probe-info" in line for line in lines) is info_shown


def is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("fmt", "tty", "json_expected"),
    [
        (None, False, True),  # off a terminal: JSON
        (None, True, False),  # on a terminal: console
        ("console", False, False),  # env overrides the guess both ways
        ("json", True, True),
    ],
)
def test_log_format_env_overrides_the_terminal_guess(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str | None,
    tty: bool,
    json_expected: bool,
) -> None:
    """$VAULT_ROTATOR_LOG_FORMAT=json|console beats whether stderr is a terminal."""
    if fmt is not None:
        monkeypatch.setenv("VAULT_ROTATOR_LOG_FORMAT", fmt)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    code, _out, err = run_cli(capsys, "validate", "--config", EXAMPLES)
    assert code == 0, err
    line = next(line for line in probe_logs(capsys) if "probe-info" in line)
    assert is_json(line) is json_expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("VAULT_ROTATOR_LOG_LEVEL", "loud"), ("VAULT_ROTATOR_LOG_FORMAT", "xml")],
)
def test_invalid_log_env_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A bad $VAULT_ROTATOR_LOG_LEVEL or $VAULT_ROTATOR_LOG_FORMAT exits 2 naming it, one line."""
    monkeypatch.setenv(name, value)
    code, out, err = run_cli(capsys, "validate", "--config", EXAMPLES)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert name in err
    assert value in err


# -- 2. arguments before the environment -----------------------------------------------------

REF_VERBS = [
    ["rotate"],
    ["rotate", "--dry-run"],
    ["rotate", "--wait"],
    ["resume"],
    ["abort", "--wait"],
    ["finish", "--keep-old"],
]


@pytest.mark.parametrize("daemon", [False, True], ids=["local", "daemon"])
@pytest.mark.parametrize("config", [EXAMPLES, "/nonexistent/config"], ids=["config", "no-config"])
@pytest.mark.parametrize("verb", REF_VERBS, ids=" ".join)
def test_a_malformed_ref_is_named_before_config_or_environment(
    capsys: pytest.CaptureFixture[str], verb: list[str], config: str, daemon: bool
) -> None:
    """`VERB no-slash-here` exits 2 naming ENV/NAME, whatever the config, token or daemon."""
    extra = ["--daemon", f"http://127.0.0.1:{closed_port()}"] if daemon else []
    code, out, err = run_cli(
        capsys, verb[0], "no-slash-here", *verb[1:], "--config", config, *extra
    )
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "no-slash-here" in err
    assert "ENV/NAME" in err
    assert "VAULT_" not in err
    assert out == ""


# -- 3. an unreachable daemon ---------------------------------------------------------------


@pytest.mark.parametrize(
    "verb", [["status"], ["rotate", "dev/demo-app"], ["abort", "dev/demo-app", "--wait"]]
)
def test_an_unreachable_daemon_is_a_failure_naming_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, verb: list[str]
) -> None:
    """Nothing listening at --daemon URL exits 1 (not 2) with one line naming the URL."""
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token")
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = run_cli(capsys, *verb, "--config", EXAMPLES, "--daemon", url)
    assert code == 1, err
    assert len(err.splitlines()) == 1, err
    assert url in err
    assert "unreachable" in err
    assert out == ""
