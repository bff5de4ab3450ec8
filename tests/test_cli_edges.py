"""CLI edges: log level and format from flags or env, arguments checked before the environment,
an unreachable daemon, and what `--wait` prints (and when `--timeout` gives up)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import pytest
import structlog
from world import MANAGEMENT_KEY, EmulatorFactory

from vault_rotator import cli
from vault_rotator.commands import remote
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.engine.status import derive_state
from vault_rotator.policy import parse_duration
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

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


# -- 4. what --wait prints, and --timeout ----------------------------------------------------

LOCAL_CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {env}/management
  usage_lag: 1s
  poll_interval: 1s
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 60s
  drain_period: 8s
  drain_timeout: 120s
keys:
  - name: app
    secret_path: {env}/app
    allowed_providers: [openai]
"""


@dataclass
class LocalKey:
    """One key `<env>/app` on a fake clock, rotated by the CLI in this process."""

    ref: str
    config: str
    store: StateStore
    clock: FakeClock

    def record(self) -> StateRecord:
        env, name = self.ref.split("/")
        return self.store.read(env, name)[0]


class LocalKeyFactory(Protocol):
    """The ``local_key`` fixture: a LocalKey, with or without an app calling on every sleep."""

    def __call__(self, *, consumer: bool) -> LocalKey: ...


@pytest.fixture
def local_key(
    vault: VaultServer,
    make_emulator: EmulatorFactory,
    clock: FakeClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[LocalKeyFactory]:
    """Build a LocalKey; ``consumer=True`` adds an app that reads Vault and calls on every sleep."""
    conns: list[VaultConnection] = []

    def build(*, consumer: bool) -> LocalKey:
        env = f"w{uuid.uuid4().hex[:8]}"
        emulator = make_emulator(dialect="c", clock=clock)
        conn = VaultConnection(vault.addr, vault.token)
        conns.append(conn)
        kv = conn.kv("secret")
        kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        old_id, value = emulator.seed_key("original", allowed_providers=["openai"])
        kv.write(f"{env}/app", {"api_key": value, "key_id": old_id}, cas=0)
        (tmp_path / "w.yaml").write_text(LOCAL_CONFIG.format(env=env, base_url=emulator.base_url))
        if consumer:

            def call_with_served_key() -> None:
                served = kv.read(f"{env}/app")
                assert served is not None
                emulator.call(str(served.data["api_key"]))

            clock.on_sleep(call_with_served_key)

        def cli_runtime() -> Runtime:  # what the CLI builds from VAULT_* env, on the fake clock
            return Runtime(VaultConnection(vault.addr, vault.token), clock=clock, sleep=clock.sleep)

        monkeypatch.setattr(Runtime, "from_env", staticmethod(cli_runtime))
        store = StateStore(kv, f"{env}/vault-rotator")
        capsys.readouterr()  # the setup's own output is not the CLI's
        return LocalKey(f"{env}/app", str(tmp_path), store, clock)

    yield build
    for conn in conns:
        conn.close()


def test_wait_prints_a_line_only_when_the_situation_changes(
    capsys: pytest.CaptureFixture[str], local_key: LocalKeyFactory
) -> None:
    """Off a terminal, `rotate --wait` prints one line per change, not one per 1 s poll."""
    key = local_key(consumer=True)
    code, out, err = run_cli(capsys, "rotate", key.ref, "--wait", "--config", key.config)
    assert code == 0, err
    assert "\r" not in out
    *steps, last = out.splitlines()
    assert last.startswith(f"{key.ref}: succeeded")
    assert key.clock.slept >= 9  # the drain took 8 s + usage_lag of 1 s polls ...
    assert len(steps) == len(set(steps)), out  # ... yet no line was printed twice
    assert len(steps) <= 6, out
    assert any("quiet since" in line for line in steps), out
    assert any("drain deadline" in line for line in steps), out
    assert "lr_live_" not in out


def test_wait_on_a_terminal_rewrites_one_live_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, local_key: LocalKeyFactory
) -> None:
    """On a terminal the status line is rewritten in place with \\r and ended with a newline."""
    key = local_key(consumer=True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run_cli(capsys, "rotate", key.ref, "--wait", "--config", key.config)
    assert code == 0, err
    *steps, last, end = out.split("\n")
    assert end == ""
    assert last.startswith(f"{key.ref}: succeeded")
    assert any(line.count("\r") > 3 for line in steps), out  # one line, rewritten every poll
    shown = [line.split("\r")[-1].rstrip() for line in steps]  # what the terminal shows
    assert len(shown) <= 6, out
    assert all(line.startswith(f"{key.ref}: rotation ") for line in shown), out


def test_wait_timeout_gives_up_waiting_and_leaves_the_rotation_in_flight(
    capsys: pytest.CaptureFixture[str], local_key: LocalKeyFactory
) -> None:
    """`rotate|resume|abort --wait --timeout` exit 1 on the engine's clock, say how to follow,
    and leave the rotation in flight (neither stalled nor aborted by the timeout)."""
    key = local_key(consumer=False)  # nobody picks the new key up: it would wait 60 s
    cases = [
        ("rotate", "10s", "awaiting-pickup", f"vault-rotator rotate {key.ref} --wait"),
        ("resume", "5s", "awaiting-pickup", f"vault-rotator rotate {key.ref} --wait"),
        ("abort", "3s", "aborting", f"vault-rotator abort {key.ref} --wait"),
    ]
    for verb, timeout, phase, follow in cases:
        started = key.clock()
        code, out, err = run_cli(
            capsys, verb, key.ref, "--wait", "--timeout", timeout, "--config", key.config
        )
        assert code == 1, err
        last = out.splitlines()[-1]
        assert f"after --timeout {timeout}" in last
        assert follow in last
        assert "vault-rotator status" in last
        assert key.clock() - started == pytest.approx(parse_duration(timeout), abs=1.0)
        record = key.record()
        assert record.rotation is not None
        assert record.rotation.stalled is None
        assert derive_state(record, key.clock())[0] == phase


def test_timeout_needs_wait(capsys: pytest.CaptureFixture[str]) -> None:
    """`--timeout` without `--wait` is a one-line usage error, as is a bad duration."""
    cases = [
        (["--timeout", "5m"], "--timeout needs --wait"),
        (["--wait", "--timeout", "soon"], "'soon'"),
    ]
    for argv, says in cases:
        code, out, err = run_cli(capsys, "rotate", "dev/demo-app", *argv, "--config", EXAMPLES)
        assert code == 2, err
        assert len(err.splitlines()) == 1, err
        assert says in err
        assert out == ""


class FakeDaemon:
    """A control API on loopback: POSTs answer a rotation id, GET /v1/status plays a script."""

    def __init__(self, ref: str, states: list[str]) -> None:
        self.ref, self.states, self.polls = ref, list(states), 0
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.answer(202, {"rotation_id": "r1", "key": daemon.ref})

            def do_GET(self) -> None:
                daemon.polls += 1
                state = daemon.states.pop(0) if len(daemon.states) > 1 else daemon.states[0]
                self.answer(200, {"keys": [daemon.row(state)]})

            def answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def row(self, state: str) -> dict[str, object]:
        done = [{"rotation_id": "r1", "outcome": "succeeded", "by": "x", "trigger": "api"}]
        return {
            "key": self.ref,
            "state": state,
            "rotation_id": None if state == "idle" else "r1",
            "deadlines_passed": [],
            "stall_detail": None,
            "last_outcomes": done if state == "idle" else [],
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[list[str]], FakeDaemon]]:
    """Start FakeDaemons for dev/demo-app; the CLI polls them every 10 ms."""
    monkeypatch.setenv("VAULT_TOKEN", "not-a-real-token")
    monkeypatch.setattr(remote, "POLL_S", 0.01)
    started: list[FakeDaemon] = []

    def start(states: list[str]) -> FakeDaemon:
        started.append(FakeDaemon("dev/demo-app", states))
        return started[-1]

    yield start
    for daemon in started:
        daemon.close()


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "terminal"])
def test_daemon_wait_shows_each_change_once(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake_daemon: Callable[[list[str]], FakeDaemon],
    tty: bool,
) -> None:
    """`rotate --wait --daemon` shows each state it polls once (a live line on a terminal)."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    daemon = fake_daemon(["awaiting-pickup"] * 5 + ["draining"] * 5 + ["idle"])
    code, out, err = run_cli(
        capsys, "rotate", "dev/demo-app", "--wait", "--config", EXAMPLES, "--daemon", daemon.url
    )
    assert code == 0, err
    answer, *steps, last, end = out.split("\n")  # not splitlines(): it splits at \r too
    assert end == ""
    assert json.loads(answer)["rotation_id"] == "r1"
    assert last == "dev/demo-app: succeeded"
    assert daemon.polls == 11
    shown = [line.split("\r")[-1].rstrip() for line in steps]
    steps_seen = [line.split(": ")[2].split()[0] for line in shown]  # a terminal adds the time
    assert steps_seen == ["awaiting-pickup", "draining"], out
    assert ("\r" in out) is tty


def test_daemon_wait_timeout_exits_1_and_says_how_to_follow(
    capsys: pytest.CaptureFixture[str], fake_daemon: Callable[[list[str]], FakeDaemon]
) -> None:
    """`abort --wait --timeout` through a daemon gives up on time, exit 1, naming how to follow."""
    daemon = fake_daemon(["aborting"])
    started = time.monotonic()
    code, out, err = run_cli(
        capsys,
        "abort",
        "dev/demo-app",
        "--wait",
        "--timeout",
        "0.3s",
        "--config",
        EXAMPLES,
        "--daemon",
        daemon.url,
    )
    assert code == 1, err
    assert 0.3 <= time.monotonic() - started < 5
    last = out.splitlines()[-1]
    assert "after --timeout 0.3s" in last
    assert f"vault-rotator status --daemon {daemon.url}" in last
    assert daemon.polls > 3
