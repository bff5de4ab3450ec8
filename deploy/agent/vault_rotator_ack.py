"""vault-rotator consumer acknowledgements: the Vault Agent's command and the app's helper.

Standard library only (Python 3.8+); copy this one file next to the agent or into the app.

As the agent's command (a ``template`` block's ``exec``, run after a render changed the
version file rendered by ``arouter-api-key-version.ctmpl``), it writes an ``agent`` ack: the new
key is on disk::

    python3 vault_rotator_ack.py agent --version-file /run/backend/arouter-api-key.version \\
        --ack-path secret/data/vault-rotator/acks/production/backend \\
        --token-file /run/backend/vault-token --vault-addr https://vault.example.internal:8200

In the app, after a successful call with the key it read from the key file, one line writes an
``app`` ack (the app switched): ``vault_rotator_ack.app_ack(key)``. It is configured from the
environment (``VAULT_ROTATOR_ACK_PATH``, ``VAULT_ROTATOR_ACK_VERSION_FILE``,
``VAULT_ROTATOR_ACK_TOKEN_FILE``, ``VAULT_ROTATOR_ACK_INSTANCE``, ``VAULT_ADDR``,
``VAULT_CACERT``, ``VAULT_NAMESPACE``), writes only when the version changed or once an hour
(a heartbeat that keeps the instance present for ``ack_ttl``; and once more 10 s after the
first ack of a version, so that the agent's ``agent`` ack of the same render, which may land
just after it, does not have the last word), never raises, and acks only when
the key it was given is the one the version file names (compared by SHA-256, never sent).

The token is the agent's own (its auto-auth ``sink "file"``), re-read at every write. The ack
holds ``version``, ``key_id``, ``at``, ``kind`` and ``instance``: never a key value or a token.
The instance name is ``--instance`` / ``VAULT_ROTATOR_ACK_INSTANCE``, else the host name
(``HOSTNAME``: a Kubernetes pod's name), lowercased, other characters as ``-``; it must match
``[a-z0-9][a-z0-9.-]{0,62}``. Exit codes of the command: 0 written, 1 not written (one line on
stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

INSTANCE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
HEARTBEAT_S = 3600.0
SETTLE_S = 10.0  # an app ack is written again this long after the first one of a version
TIMEOUT_S = 5.0


class AckError(Exception):
    """Why an ack was not written (never holds a key value or a token)."""


def instance_name(given: Optional[str] = None) -> str:
    """``given``, else the host name, as an instance name; AckError if none fits."""
    raw = given or os.environ.get("VAULT_ROTATOR_ACK_INSTANCE") or os.environ.get("HOSTNAME")
    name = (raw or socket.gethostname()).lower()
    if not given:
        name = re.sub(r"[^a-z0-9.-]", "-", name).lstrip(".-")[:63]
    if not INSTANCE.fullmatch(name):
        raise AckError(f"instance name {name[:70]!r} is not [a-z0-9][a-z0-9.-]{{0,62}}")
    return name


def read_version(path: Path) -> Dict[str, Any]:
    """The version file the agent rendered: {"version", "key_id", "key_sha256"}."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AckError(f"cannot read the version file {path}: {type(exc).__name__}") from None
    ok = isinstance(info, dict) and isinstance(info.get("version"), int)
    if not ok or not isinstance(info.get("key_id"), str):
        raise AckError(f"the version file {path} has no version and key_id")
    return info


def write_ack(
    addr: str, token: str, ack_path: str, instance: str, info: Dict[str, Any], kind: str
) -> None:
    """POST the ack to ``<addr>/v1/<ack_path>/<instance>``; AckError if Vault refuses it."""
    body = {
        "data": {
            "version": info["version"],
            "key_id": info["key_id"],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": kind,
            "instance": instance,
        }
    }
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}
    if os.environ.get("VAULT_NAMESPACE"):
        headers["X-Vault-Namespace"] = os.environ["VAULT_NAMESPACE"]
    url = f"{addr.rstrip('/')}/v1/{ack_path.strip('/')}/{instance}"
    if not url.startswith(("http://", "https://")):
        raise AckError("the Vault address must be an http:// or https:// URL")
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    cafile = os.environ.get("VAULT_CACERT") or None
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as answer:  # noqa: S310
            answer.read(4096)
    except urllib.error.HTTPError as exc:
        raise AckError(f"Vault answered {exc.code} to the ack at {ack_path}/{instance}") from None
    except OSError as exc:
        raise AckError(f"Vault unreachable for the ack: {type(exc).__name__}") from None


class Acker:
    """One instance's acks of one key."""

    def __init__(
        self,
        *,
        version_file: str,
        ack_path: str,
        token_file: str,
        addr: str,
        instance: Optional[str] = None,
        heartbeat: float = HEARTBEAT_S,
        settle: float = SETTLE_S,
    ) -> None:
        self.version_file = Path(version_file)
        self.ack_path = ack_path
        self.token_file = Path(token_file)
        self.addr = addr
        self.instance = instance_name(instance)
        self.heartbeat = heartbeat
        self.settle = settle
        self.last: Optional[Tuple[int, str]] = None
        self.last_at = 0.0
        self.settled = False
        self.lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Acker:
        env = os.environ
        names = ("VAULT_ROTATOR_ACK_VERSION_FILE", "VAULT_ROTATOR_ACK_PATH",
                 "VAULT_ROTATOR_ACK_TOKEN_FILE", "VAULT_ADDR")  # fmt: skip
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise AckError(f"set {', '.join(missing)} to acknowledge keys")
        return cls(
            version_file=env["VAULT_ROTATOR_ACK_VERSION_FILE"],
            ack_path=env["VAULT_ROTATOR_ACK_PATH"],
            token_file=env["VAULT_ROTATOR_ACK_TOKEN_FILE"],
            addr=env["VAULT_ADDR"],
        )

    def _token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise AckError(f"cannot read the token file {self.token_file}: {type(exc).__name__}") from None
        if not token:
            raise AckError(f"the token file {self.token_file} is empty")
        return token

    def agent(self) -> Dict[str, Any]:
        """Write an ``agent`` ack of the version on disk now; the version file's contents."""
        info = read_version(self.version_file)
        write_ack(self.addr, self._token(), self.ack_path, self.instance, info, "agent")
        return info

    def app(self, used_key: str) -> bool:
        """Write an ``app`` ack if ``used_key`` is the version on disk and the version changed,
        the heartbeat is due, or ``settle`` passed since the first ack of this version (once:
        the agent's own ack of the same render may have landed after it and overwritten it);
        True when an ack was written."""
        info = read_version(self.version_file)
        digest = hashlib.sha256(used_key.strip().encode()).hexdigest()
        if info.get("key_sha256") != digest:
            return False  # the app called with another key than the file's version holds
        mark = (info["version"], info["key_id"])
        with self.lock:
            since = time.monotonic() - self.last_at
            if mark == self.last and since < self.heartbeat:
                if self.settled or since < self.settle:
                    return False
            write_ack(self.addr, self._token(), self.ack_path, self.instance, info, "app")
            self.settled = mark == self.last
            self.last, self.last_at = mark, time.monotonic()
        return True


_DEFAULT: Optional[Acker] = None
_COMPLAINED = [0.0]


def app_ack(used_key: str) -> bool:
    """The app's one line, after a successful call with ``used_key``: never raises; a failure
    is one line on stderr at most once a minute."""
    global _DEFAULT  # noqa: PLW0603
    try:
        if _DEFAULT is None:
            _DEFAULT = Acker.from_env()
        return _DEFAULT.app(used_key)
    except AckError as exc:
        if time.monotonic() - _COMPLAINED[0] > 60:
            _COMPLAINED[0] = time.monotonic()
            print(f"vault-rotator ack not written: {exc}", file=sys.stderr, flush=True)
        return False


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Write a vault-rotator agent ack.")
    parser.add_argument("kind", choices=["agent"])
    env = os.environ.get
    parser.add_argument("--version-file", default=env("VAULT_ROTATOR_ACK_VERSION_FILE"))
    parser.add_argument("--ack-path", default=env("VAULT_ROTATOR_ACK_PATH"))
    parser.add_argument("--token-file", default=env("VAULT_ROTATOR_ACK_TOKEN_FILE"))
    parser.add_argument("--vault-addr", default=env("VAULT_ADDR"))
    parser.add_argument("--instance", default=None)
    args = parser.parse_args(argv)
    missing = [f for f in ("version_file", "ack_path", "token_file", "vault_addr") if not getattr(args, f)]
    if missing:
        parser.error("missing " + ", ".join("--" + f.replace("_", "-") for f in missing))
    try:
        acker = Acker(
            version_file=args.version_file,
            ack_path=args.ack_path,
            token_file=args.token_file,
            addr=args.vault_addr,
            instance=args.instance,
        )
        info = acker.agent()
    except AckError as exc:
        print(f"vault-rotator ack not written: {exc}", file=sys.stderr)
        return 1
    print(f"vault-rotator ack: {acker.instance} has version {info['version']} ({info['key_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
