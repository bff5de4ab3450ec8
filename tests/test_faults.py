"""The test-only fault hook: SIGKILL by default, or one SIGSTOP at the named boundary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = (
    "from vault_rotator.testing.faults import env_fault_hook as hook\n"
    "hook('other'); hook('publish'); hook('publish'); print('ran on', flush=True)\n"
)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _run(**env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, "PYTHONPATH": str(REPO), "VAULT_ROTATOR_FAULT_AT": "publish", **env},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_hook_kills_the_process_at_its_boundary_by_default() -> None:
    """Without a signal named, the process dies by SIGKILL at the boundary, nothing after."""
    proc = _run()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert out == ""


def test_stop_pauses_once_at_the_boundary_and_runs_on_after_sigcont() -> None:
    """With STOP the process is paused at the boundary; continued, it passes it the second time."""
    proc = _run(VAULT_ROTATOR_FAULT_SIGNAL="STOP")
    deadline = time.monotonic() + 30
    while _state(proc.pid) != "T":
        assert time.monotonic() < deadline, "the process never stopped"
        time.sleep(0.05)
    proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "ran on\n")
