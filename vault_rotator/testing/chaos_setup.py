"""Setting up the chaos run's world: policies, secrets, tokens, agents and consumers.

:func:`setup` writes the management key, one consumer secret per key (every version kept) and
the policy file, and makes a least-privilege rotator token; :func:`traffic` starts, per key, a
real ``bao agent`` rendering the shipped template with a consumer-only token and the shipped
consumer (``deploy/compose/consumer.py``) calling every 0.1 s with whatever key the agent
serves.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac

from vault_rotator import cli
from vault_rotator.emulator import Emulator
from vault_rotator.engine.session import StateStore
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.chaos_world import REPO, Bench, Outputs
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer

TEMPLATE = REPO / "deploy" / "agent" / "arouter-api-key.ctmpl"
SHIPPED_PATH = "secret/data/arouter/dev/demo-app"
CONSUMER = REPO / "deploy" / "compose" / "consumer.py"
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: b
  management_key: {{path: {env}-admin/management}}
  usage_lag: 1s
  poll_interval: 0.5s
vault: {{kv_mount: secret, state_prefix: {env}-rotator}}
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 120s
  drain_period: 2s
  drain_timeout: 120s
  disable_before_delete: 1s
keys:
{keys}
"""


def vault_policy(args: list[str]) -> str:
    """The text ``vault-rotator vault-policy ARGS`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["vault-policy", *args]) == 0
    return out.getvalue()


def make_token(admin: hvac.Client, name: str, rules: str) -> str:
    """A 2-hour token holding only the policy ``name`` (written as ``rules``)."""
    admin.sys.create_or_update_policy(name, rules)
    return str(admin.auth.token.create(policies=[name], ttl="2h")["auth"]["client_token"])


@contextlib.contextmanager
def consumer(key_file: Path, base_url: str, out: Path) -> Iterator[None]:
    """The shipped consumer, calling every 0.1 s, its output to ``out``."""
    with out.open("wb") as sink:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, str(CONSUMER), "--key-file", str(key_file), "--base-url", base_url,
             "--interval", "0.1"],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)  # as a supervisor stops it (SIGINT may be ignored)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def traffic(bench: Bench) -> Iterator[None]:
    """Per key, a ``bao agent`` with a consumer-only token and the shipped consumer."""
    template = TEMPLATE.read_text()
    config = str(bench.work / "config")
    with contextlib.ExitStack() as stack:
        for name in bench.names:
            rules = vault_policy(["consumer", f"{bench.env}/{name}", "--config", config])
            token = make_token(bench.admin, f"{bench.env}-{name}", rules)
            bench.tokens.append(token)
            rendered = template.replace(SHIPPED_PATH, f"secret/data/{bench.env}/{name}")
            agent = stack.enter_context(
                vault_agent(bench.vault.addr, token, mount="secret", path=f"{bench.env}/{name}",
                            template=rendered)
            )  # fmt: skip
            out = bench.work / f"consumer-{name}.out"
            stack.enter_context(consumer(agent.destination, bench.emulator.base_url, out))
        yield


def setup(vault: VaultServer, emulator: Emulator, work: Path, keys: int) -> Bench:
    """Management key, consumer secrets (every version kept), policy file, rotator token."""
    env = f"chaos{uuid.uuid4().hex[:6]}"
    management = "lr_mgmt_" + secrets.token_hex(16)
    emulator.add_management_key(management)
    kv = VaultConnection(vault.addr, vault.token).kv("secret")
    kv.write(f"{env}-admin/management", {"key": management}, cas=0)
    names = tuple(f"k{i}" for i in range(keys))
    admin = hvac.Client(url=vault.addr, token=vault.token)
    for name in names:
        key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        kv.write(f"{env}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
        # every version kept for the count (KV v2 keeps 10 by default)
        admin.secrets.kv.v2.update_metadata(
            f"{env}/{name}", max_versions=1000, mount_point="secret"
        )
    config = work / "config"
    config.mkdir()
    lines = [
        f"  - {{name: {n}, secret_path: {env}/{n}, allowed_providers: [openai]}}" for n in names
    ]
    (config / "chaos.yaml").write_text(
        CONFIG.format(env=env, base_url=emulator.base_url, keys="\n".join(lines))
    )
    rules = vault_policy(["rotator", "--config", str(config)])
    rotator = make_token(admin, f"{env}-rotator", rules)
    return Bench(
        vault, emulator, work, env, names, rotator, "", Outputs(),
        StateStore(kv, f"{env}-rotator"), [management, vault.token, rotator], admin,
    )  # fmt: skip


def status_cli(bench: Bench) -> None:
    """``status --json`` as an operator would run it; its output kept for the search."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **bench.vault.env()}
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "vault_rotator", "--log-level", "debug", "status", "--json",
         "--config", str(bench.work / "config")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    bench.outputs.add(done.stdout + done.stderr)
