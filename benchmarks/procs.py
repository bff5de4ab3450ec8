"""What a process used, read from ``/proc`` (Linux): CPU seconds and resident memory.

``/proc/<pid>/stat`` gives a process's user and system time (all its threads) in clock ticks;
``/proc/<pid>/status`` its ``VmRSS`` and ``VmHWM``, the resident set now and at its peak.
Writing ``5`` to ``/proc/self/clear_refs`` resets our own peak, so that a phase's peak can be
read alone.
"""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU seconds the process has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state); comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 (utime) and 15 (stime)


def peak_rss_mb(pid: int | str = "self") -> float:
    """The process's peak resident set (VmHWM) in MB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int | str = "self") -> float:
    """The process's resident set now (VmRSS) in MB."""
    return _status_mb(pid, "VmRSS")


def _status_mb(pid: int | str, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/{pid}/status")


def reset_peak_rss() -> None:
    """Start our own peak resident set afresh (from the current resident set)."""
    Path("/proc/self/clear_refs").write_text("5")
