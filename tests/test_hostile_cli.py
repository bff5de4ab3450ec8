"""The CLI against a hostile or broken ``--daemon``: one line, the documented exit, no traceback."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vault_rotator import cli
from vault_rotator.commands import remote, runner
from vault_rotator.engine import reasons
from vault_rotator.engine.engine import Command, Progress
from vault_rotator.engine.state import Stall

CONFIG = str(Path(__file__).resolve().parent.parent / "config")
Answer = Callable[[str, str], tuple[int, bytes]]  # (method, path) -> (status, body)


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Answer], str]]:
    """Serve whatever a test says on loopback; VAULT_TOKEN set; --wait polls quickly."""
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-for-the-fake-daemon")
    monkeypatch.setattr(remote, "POLL_S", 0.01)
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = answer(self.command, self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply

            def log_message(self, *_args: object) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("vault-rotator:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("url", ["http://[::1", "ftp://127.0.0.1:9", "http://", "127.0.0.1:9"])
def test_a_malformed_daemon_url_is_a_usage_error(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--daemon` that is not an http(s) URL exits 2 with one line naming it."""
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-for-the-fake-daemon")
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 2
    assert "--daemon" in _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b"null",
        b'"text"',
        b'{"keys": [1, 2]}',
        b'{"keys": {"a": 1}}',
        b'{"keys": [{"key": "dev/demo-app"}]}',
        b'{"keys": [{"key": "dev/demo-app", "state": "idle", "last_outcomes": [7]}]}',
        b"[" * 50_000 + b"]" * 50_000,
        b"not json at all",
    ],
)
def test_status_from_a_daemon_answering_garbage_is_one_line(
    fake_daemon: Callable[[Answer], str], body: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --daemon` given a non-object, a wrong shape or deep nesting exits 1 in one line."""
    url = fake_daemon(lambda _m, _p: (200, body))
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 1
    assert url in _one_line_error(capsys.readouterr().err)


def test_rotate_wait_against_a_daemon_answering_an_array_is_one_line(
    fake_daemon: Callable[[Answer], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`rotate --wait --daemon` whose daemon answers `[1,2]` exits 1 with one line."""
    url = fake_daemon(lambda _m, _p: (202, b"[1, 2]"))
    args = ["rotate", "dev/demo-app", "--wait", "--daemon", url, "--config", CONFIG]
    assert cli.main(args) == 1
    assert "JSON list, not an object" in _one_line_error(capsys.readouterr().err)


def test_rotate_wait_whose_status_polls_are_refused_says_so(
    fake_daemon: Callable[[Answer], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 401 on the status poll is reported as such, not as "not visible in the status"."""

    def answer(method: str, _path: str) -> tuple[int, bytes]:
        if method == "POST":
            return 202, b'{"rotation_id": "r1", "key": "dev/demo-app", "phase": "intent"}'
        return 401, b'{"error": "token expired"}'

    url = fake_daemon(answer)
    args = ["rotate", "dev/demo-app", "--wait", "--daemon", url, "--config", CONFIG]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "answered 401 to a status poll: token expired" in out


def test_a_huge_daemon_answer_is_cut_off(
    fake_daemon: Callable[[Answer], str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer over the size limit is an error, not read into memory whole."""
    monkeypatch.setattr(remote, "MAX_ANSWER_BYTES", 1000)
    url = fake_daemon(lambda _m, _p: (200, json.dumps({"keys": [], "pad": "x" * 5000}).encode()))
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 1
    assert "larger than 1000 bytes" in _one_line_error(capsys.readouterr().err)


def test_control_characters_from_a_daemon_never_reach_the_terminal(
    fake_daemon: Callable[[Answer], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A row whose strings hold terminal escapes is printed with them escaped."""
    row = {
        "key": "dev/demo-app\x1b[2J",
        "state": "idle",
        "in_policy": True,
        "current_key_id": "key_\x07x",
        "age_s": None,
        "next_due_at": None,
        "last_outcomes": [],
    }
    url = fake_daemon(lambda _m, _p: (200, json.dumps({"keys": [row]}).encode()))
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "dev/demo-app\\x1b[2J" in out


def test_a_daemon_trickling_its_headers_is_cut_off_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Headers sent a byte at a time never trip a read timeout: the total deadline ends it."""
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-for-the-fake-daemon")
    monkeypatch.setattr(remote, "ANSWER_DEADLINE_S", 1.0)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" * 50:
                if stop.wait(0.05):
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    began = time.monotonic()
    try:
        assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 1
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - began < 10
    assert "no complete answer within 1s" in _one_line_error(capsys.readouterr().err)


def test_a_daemon_error_text_cannot_drive_the_terminal(
    fake_daemon: Callable[[Answer], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Escape, bell, carriage return and bidi characters in a daemon's error are escaped."""
    hostile = json.dumps({"error": "x\x1b]0;owned\x07\r\u202eevil"}).encode()
    url = fake_daemon(lambda _m, _p: (401, hostile))
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 1
    out = capsys.readouterr().out
    for raw in ("\x1b", "\x07", "\r", "\u202e"):
        assert raw not in out


def test_credentials_in_the_daemon_url_are_refused_unshown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A URL with user:password is a usage error that does not echo the password."""
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-for-the-fake-daemon")
    url = "https://admin:hunter2secret@127.0.0.1:9780"
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 2
    err = capsys.readouterr().err
    assert "no credentials in the URL" in _one_line_error(err)
    assert "hunter2secret" not in err


@pytest.mark.parametrize("ref", ["dev/demo-app#x", "dev/demo-app?x=1", "dev/..", "DEV/demo-app"])
def test_a_ref_that_would_change_the_route_is_refused_before_any_request(
    fake_daemon: Callable[[Answer], str], ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`#`, `?`, `..` or capitals in ENV/NAME are a usage error; nothing reaches the daemon."""
    seen: list[str] = []

    def answer(method: str, path: str) -> tuple[int, bytes]:
        seen.append(path)
        return 202, b"{}"

    url = fake_daemon(answer)
    for verb in (["rotate"], ["finish", "--keep-old"], ["abort"]):
        assert cli.main([verb[0], ref, *verb[1:], "--daemon", url, "--config", CONFIG]) == 2
    assert seen == []
    assert "is not ENV/NAME" in _one_line_error(capsys.readouterr().err.splitlines()[-1])


def test_an_argument_with_terminal_escapes_is_shown_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A usage error quoting a hostile argument prints it escaped, on one capped line."""
    assert cli.main(["rotate", "dev/demo\x1b[31m-app" + "x" * 5000, "--config", CONFIG]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert len(_one_line_error(err)) < 1100


@pytest.mark.parametrize("verb", [["rotate"], ["abort"], ["finish", "--keep-old"], ["freeze"]])
def test_a_2xx_that_is_not_the_daemons_answer_is_a_failure(
    fake_daemon: Callable[[Answer], str], verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Something answering `202 {}` to an action is not the daemon: exit 1, not success."""
    url = fake_daemon(lambda _m, _p: (202, b"{}"))
    argv = [verb[0], "dev/demo-app", *verb[1:], "--daemon", url, "--config", CONFIG]
    assert cli.main(argv) == 1
    assert "not the daemon's" in _one_line_error(capsys.readouterr().err)


def test_stall_advice_offers_finish_keep_old_only_once_published(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stall before publish (rate-limited create) does not suggest keeping a new key."""
    before = Progress(
        "dev/demo-app", reasons.INTENT, "r1", stalled=Stall(reasons.RATE_LIMITED, "429", 1.0)
    )
    after = Progress(
        "dev/demo-app", reasons.PUBLISHED, "r1", stalled=Stall(reasons.PICKUP_TIMEOUT, "x", 1.0)
    )
    assert runner.conclude(before, "dev/demo-app", Command()) == 1
    early = capsys.readouterr().out
    assert "finish" not in early
    assert "old key stays served" in early
    assert runner.conclude(after, "dev/demo-app", Command()) == 1
    assert "finish dev/demo-app --keep-old" in capsys.readouterr().out


def test_a_redirecting_daemon_url_says_so(
    fake_daemon: Callable[[Answer], str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A 307 is never followed (the token would go along) and the message says why."""
    url = fake_daemon(lambda _m, _p: (307, b""))
    assert cli.main(["status", "--daemon", url, "--config", CONFIG]) == 1
    assert "a redirect (307), not followed" in capsys.readouterr().out


def test_a_vault_addr_without_a_scheme_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """VAULT_ADDR=127.0.0.1:8200 is a configuration error naming the variable (exit 2)."""
    monkeypatch.setenv("VAULT_ADDR", "127.0.0.1:8200")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-for-the-fake-daemon")
    assert cli.main(["status", "--config", CONFIG]) == 2
    assert "VAULT_ADDR '127.0.0.1:8200' is not an http://" in _one_line_error(
        capsys.readouterr().err
    )
