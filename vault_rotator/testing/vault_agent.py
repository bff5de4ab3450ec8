"""Run OpenBao's real Vault Agent (``bao agent``) rendering a consumer's key to a file.

This is how production apps are fed: the agent authenticates (here with a token file), watches
the KV v2 secret and re-renders the template every ``render_interval``; the app reads the file.
End-to-end tests and the demo use it so consumers pick up new versions exactly as in production.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vault_rotator.testing.vault_server import bao_binary, stop_process

STARTUP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class AgentHandle:
    """A running agent and the file it renders the key value into."""

    destination: Path
    log_path: Path

    def read_key(self) -> str | None:
        """The key value the agent last rendered, or None before the first render."""
        try:
            text = self.destination.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None


def _config(
    addr: str,
    token_file: Path,
    *,
    api_path: str,
    field: str,
    dest: Path,
    every: str,
    source: Path | None = None,
) -> str:
    template = '{{ with secret "%s" }}{{ index .Data.data "%s" }}{{ end }}' % (api_path, field)  # noqa: UP031
    body = f"source = {json.dumps(str(source))}" if source else f"contents = {json.dumps(template)}"
    return "\n".join(
        [
            f"vault {{ address = {json.dumps(addr)} }}",
            "auto_auth {",
            '  method "token_file" {',
            f"    config = {{ token_file_path = {json.dumps(str(token_file))} }}",
            "  }",
            "}",
            f"template_config {{ static_secret_render_interval = {json.dumps(every)} }}",
            "template {",
            f"  {body}",
            f"  destination = {json.dumps(str(dest))}",
            '  perms = "0600"',
            "}",
        ]
    )


@contextlib.contextmanager
def vault_agent(
    addr: str,
    token: str,
    *,
    mount: str,
    path: str,
    field: str = "api_key",
    render_interval: str = "1s",
    template: str | None = None,
) -> Iterator[AgentHandle]:
    """``bao agent`` rendering ``<mount>/<path>``'s ``field`` to a file; stopped on exit.

    ``template``: the text of a template file to render instead (such as the shipped
    ``deploy/agent/arouter-api-key.ctmpl`` with its path set), given to the agent as ``source``.
    """
    with tempfile.TemporaryDirectory(prefix="vault-rotator-agent-") as tmp:
        work = Path(tmp)
        token_file = work / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        dest = work / "api_key"
        source = None
        if template is not None:
            source = work / "template.ctmpl"
            source.write_text(template)
        config = work / "agent.hcl"
        config.write_text(
            _config(
                addr,
                token_file,
                api_path=f"{mount}/data/{path}",
                field=field,
                dest=dest,
                every=render_interval,
                source=source,
            )
        )
        log_path = work / "agent.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603
                [bao_binary(), "agent", f"-config={config}"], stdout=log, stderr=subprocess.STDOUT
            )
        handle = AgentHandle(dest, log_path)
        try:
            _wait_rendered(handle, proc)
            yield handle
        finally:
            stop_process(proc)


def _wait_rendered(handle: AgentHandle, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while handle.read_key() is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = handle.log_path.read_text(errors="replace")[-500:]
            raise RuntimeError(f"bao agent did not render the secret: {tail}")
        time.sleep(0.05)
