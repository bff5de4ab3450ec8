"""The shipped sample consumer (``deploy/compose/consumer.py``) stops as a supervised process
should (issue 20 item 10): on SIGTERM always, on SIGINT unless it inherited SIGINT ignored (a
job started in the background, with ``nohup`` or by a runner), exit 0 with a last line saying
so. Before, SIGTERM killed it without a word and an inherited ignored SIGINT was never seen, so
tests stopping it with SIGINT ran into their 15 s timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CONSUMER = Path(__file__).resolve().parent.parent / "deploy" / "compose" / "consumer.py"


_STARTED: list[subprocess.Popen[str]] = []


def popen(argv: list[str], **options: Any) -> subprocess.Popen[str]:
    """A process with its output (both streams) on one text pipe, reaped after the test."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options
    )
    _STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """Every process a test started is gone after it, whatever the test's outcome."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def ignoring_sigint(argv: list[str]) -> list[str]:
    """``argv`` started as a background job of a script would be: SIGINT ignored."""
    return ["bash", "-c", 'trap "" INT; exec "$@"', "job", *argv]


def with_default_sigint(argv: list[str]) -> list[str]:
    """``argv`` with SIGINT at its default, even when this test run inherited it ignored
    (``bash -c 'trap "" INT; make test'``: a shell cannot undo an ignore it inherited)."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    reset += "os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *argv]


def start(tmp_path: Path, *, sigint_ignored: bool) -> subprocess.Popen[str]:
    """The consumer waiting for a key file that never comes, calling nothing; with SIGINT
    ignored as a shell's background job or a runner would leave it (``trap "" INT``)."""
    argv = [sys.executable, str(CONSUMER), "--key-file", str(tmp_path / "absent"),
            "--base-url", "http://127.0.0.1:9", "--interval", "0.1"]  # fmt: skip
    proc = popen(ignoring_sigint(argv) if sigint_ignored else with_default_sigint(argv))
    assert proc.stdout is not None
    first = proc.stdout.readline()  # handlers are installed before the first line
    assert first.startswith("waiting for "), first
    return proc


def stop(proc: subprocess.Popen[str], signum: signal.Signals) -> tuple[int, list[str], float]:
    """Send ``signum``; the exit code, the output lines and how long the exit took."""
    began = time.monotonic()
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=10)
    return proc.returncode, out.splitlines(), time.monotonic() - began


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["sigint-default", "sigint-ignored"])
def test_sigterm_stops_the_consumer_at_once_with_exit_0(
    tmp_path: Path, sigint_ignored: bool
) -> None:
    """SIGTERM, as a supervisor (Kubernetes, systemd, docker stop) sends it: exit 0 within a
    second, the last line naming the signal, no traceback."""
    code, lines, took = stop(start(tmp_path, sigint_ignored=sigint_ignored), signal.SIGTERM)
    assert code == 0, lines
    assert took < 1.0
    assert lines[-1] == "stopped by SIGTERM after 0 calls (0 failed)"
    assert not any("Traceback" in line for line in lines)


def test_sigint_stops_the_consumer_like_sigterm(tmp_path: Path) -> None:
    """Ctrl-C in a terminal stops it the same way: exit 0, one last line, no traceback."""
    code, lines, took = stop(start(tmp_path, sigint_ignored=False), signal.SIGINT)
    assert code == 0, lines
    assert took < 1.0
    assert lines[-1] == "stopped by SIGINT after 0 calls (0 failed)"
    assert not any("Traceback" in line for line in lines)


def test_an_inherited_ignored_sigint_stays_ignored(tmp_path: Path) -> None:
    """Started with SIGINT ignored, the consumer leaves it so (a terminal's Ctrl-C is not meant
    for a background job) and runs on; SIGTERM still stops it."""
    proc = start(tmp_path, sigint_ignored=True)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None
    code, lines, _took = stop(proc, signal.SIGTERM)
    assert code == 0
    assert lines[-1] == "stopped by SIGTERM after 0 calls (0 failed)"


# -- the daemon and the emulator leave an inherited ignored SIGINT ignored too ----------------

REPO = Path(__file__).resolve().parent.parent


def test_the_emulator_leaves_an_inherited_ignored_sigint_ignored() -> None:
    """``vault-rotator emulator`` started with SIGINT ignored runs on after a SIGINT and stops,
    exit 0, on SIGTERM."""
    argv = [sys.executable, "-m", "vault_rotator", "emulator", "--port", "0", "--dialect", "c"]
    argv += ["--management-key", "lr_mgmt_signals0123456789"]
    proc = popen(ignoring_sigint(argv))
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("emulator listening on ")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.7)
    assert proc.poll() is None
    code, _lines, took = stop(proc, signal.SIGTERM)
    assert code == 0
    assert took < 2.0


def test_the_daemon_leaves_an_inherited_ignored_sigint_ignored() -> None:
    """``vault-rotator run`` started with SIGINT ignored (waiting for a Vault that is not there)
    runs on after a SIGINT, and SIGTERM stops it with exit 0."""
    argv = [sys.executable, "-m", "vault_rotator", "run", "--config", str(REPO / "config"),
            "--listen", "127.0.0.1:0"]  # fmt: skip
    env = {**os.environ, "VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "not-a-real-token"}
    env["VAULT_ROTATOR_LOG_FORMAT"] = "json"
    proc = popen(ignoring_sigint(argv), env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while "waiting for Vault" not in proc.stdout.readline():  # its signal handlers are set
        assert time.monotonic() < deadline
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    time.sleep(0.7)
    assert proc.poll() is None
    code, lines, _took = stop(proc, signal.SIGTERM)
    assert code == 0, lines
    assert not any("Traceback" in line for line in lines)
