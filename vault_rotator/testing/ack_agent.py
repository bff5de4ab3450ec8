"""A real ``bao agent`` set up as the shipped files say, acknowledging what it renders.

It renders ``deploy/agent/arouter-api-key.ctmpl`` (the key file) and
``deploy/agent/arouter-api-key-version.ctmpl`` (the version file) with their path set, keeps
its auto-auth token in a ``sink "file"``, and after each render that changed the version file
runs ``deploy/agent/vault_rotator_ack.py agent`` (an ``exec`` block), which writes the
instance's ``agent`` ack with that token. :meth:`AckingAgent.app_env` is the environment the
shipped consumer (``deploy/compose/consumer.py``) needs to write ``app`` acks too.

The shipped files are read from the source tree (``deploy/`` is not installed with the
package): :func:`shipped_files_present` says whether they are here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vault_rotator.testing.vault_server import bao_binary, stop_process

REPO = Path(__file__).resolve().parents[2]
AGENT_DIR = REPO / "deploy" / "agent"
KEY_TEMPLATE = AGENT_DIR / "arouter-api-key.ctmpl"
VERSION_TEMPLATE = AGENT_DIR / "arouter-api-key-version.ctmpl"
ACK_SCRIPT = AGENT_DIR / "vault_rotator_ack.py"
SHIPPED_PATH = "secret/data/arouter/dev/demo-app"  # the path the shipped templates name
STARTUP_TIMEOUT_S = 20.0


def shipped_files_present() -> bool:
    return all(p.is_file() for p in (KEY_TEMPLATE, VERSION_TEMPLATE, ACK_SCRIPT))


@dataclass(frozen=True)
class AckingAgent:
    """A running agent: its files, and where its instance acknowledges."""

    instance: str
    addr: str
    ack_path: str  # full API path of the key's ack folder, e.g. secret/data/p/acks/env/name
    destination: Path  # the key file
    version_file: Path
    token_file: Path  # the agent's sink
    log_path: Path

    def read_key(self) -> str | None:
        try:
            return self.destination.read_text().strip() or None
        except FileNotFoundError:
            return None

    def app_env(self) -> dict[str, str]:
        """What the shipped consumer needs to write this instance's ``app`` acks."""
        return {
            "VAULT_ADDR": self.addr,
            "VAULT_ROTATOR_ACK_PATH": self.ack_path,
            "VAULT_ROTATOR_ACK_VERSION_FILE": str(self.version_file),
            "VAULT_ROTATOR_ACK_TOKEN_FILE": str(self.token_file),
            "VAULT_ROTATOR_ACK_INSTANCE": self.instance,
        }


def agent_config(agent: AckingAgent, token_file: Path, work: Path, every: str) -> str:
    """The agent's HCL: token-file auth with a sink, the two shipped templates, the command."""
    command = [
        sys.executable, str(ACK_SCRIPT), "agent",
        "--version-file", str(agent.version_file), "--ack-path", agent.ack_path,
        "--token-file", str(agent.token_file), "--vault-addr", agent.addr,
        "--instance", agent.instance,
    ]  # fmt: skip
    q = json.dumps
    return "\n".join(
        [
            f"vault {{ address = {q(agent.addr)} }}",
            "auto_auth {",
            f'  method "token_file" {{ config = {{ token_file_path = {q(str(token_file))} }} }}',
            f'  sink "file" {{ config = {{ path = {q(str(agent.token_file))} }} }}',
            "}",
            f"template_config {{ static_secret_render_interval = {q(every)} }}",
            "template {",
            f"  source = {q(str(work / 'key.ctmpl'))}",
            f"  destination = {q(str(agent.destination))}",
            '  perms = "0600"',
            "  error_on_missing_key = true",
            "}",
            "template {",
            f"  source = {q(str(work / 'version.ctmpl'))}",
            f"  destination = {q(str(agent.version_file))}",
            '  perms = "0600"',
            f"  exec {{ command = {q(command)} }}",
            "}",
        ]
    )


@contextlib.contextmanager
def acking_agent(
    addr: str,
    token: str,
    *,
    secret_api_path: str,
    ack_path: str,
    instance: str,
    render_interval: str = "1s",
) -> Iterator[AckingAgent]:
    """``bao agent`` rendering ``secret_api_path`` (``<mount>/data/<path>``) with the shipped
    templates and acknowledging each new version as ``instance``; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="vault-rotator-acking-agent-") as tmp:
        work = Path(tmp)
        token_file = work / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        for source, target in ((KEY_TEMPLATE, "key.ctmpl"), (VERSION_TEMPLATE, "version.ctmpl")):
            (work / target).write_text(source.read_text().replace(SHIPPED_PATH, secret_api_path))
        agent = AckingAgent(
            instance, addr, ack_path, work / "api_key", work / "api_key.version",
            work / "sink", work / "agent.log",
        )  # fmt: skip
        (work / "agent.hcl").write_text(agent_config(agent, token_file, work, render_interval))
        with agent.log_path.open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603
                [bao_binary(), "agent", f"-config={work / 'agent.hcl'}"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_rendered(agent, proc)
            yield agent
        finally:
            stop_process(proc)


def _wait_rendered(agent: AckingAgent, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while agent.read_key() is None or not agent.version_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = agent.log_path.read_text(errors="replace")[-500:]
            raise RuntimeError(f"bao agent did not render the secret: {tail}")
        time.sleep(0.05)


def load_helper() -> ModuleType:
    """The shipped ``vault_rotator_ack.py`` as a module (the app-side helper)."""
    spec = importlib.util.spec_from_file_location("vault_rotator_ack", ACK_SCRIPT)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {ACK_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
