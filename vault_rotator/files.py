"""Files named by the configuration are checked before they are opened.

Opening a FIFO for reading blocks until a writer comes, and a device such as ``/dev/zero``
never ends: a policy file, a TLS certificate, key or CA bundle that is not a regular file (or
a link to one) is refused with one line instead of hanging the process with no output. Part of
the shared kernel: every layer may import it.
"""

from __future__ import annotations

from pathlib import Path


def why_not_regular(path: str | Path) -> str | None:
    """None when ``path`` is a regular file (or a link to one); else why it is not read."""
    where = Path(path)
    if where.is_file():
        return None
    if where.is_symlink() and not where.exists():
        return "a link to nothing (dangling symlink): not read"
    if not where.exists():
        return "no such file"
    return "not a regular file (a directory, FIFO or device): not read"
