"""The demo's consumer, acknowledging keys as the shipped files do (when they are at hand).

:func:`demo_agent` starts the agent: with ``deploy/agent/`` present, an acking agent
(:mod:`vault_rotator.testing.ack_agent`) and the shipped helper's ``app`` ack for the app;
else a plain agent and no acks. :class:`AckWatch` prints each ack as it arrives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from vault_rotator.engine.ack_store import AckStore, acks_folder
from vault_rotator.engine.acks import AckPolicy
from vault_rotator.policy import KeyPolicy
from vault_rotator.ports.kv import KvStore
from vault_rotator.testing.ack_agent import acking_agent, load_helper, shipped_files_present
from vault_rotator.testing.vault_agent import vault_agent
from vault_rotator.testing.vault_server import VaultServer

INSTANCE = "demo-app-1"


class KeyFile(Protocol):
    def read_key(self) -> str | None: ...


@dataclass
class AckWatch:
    """Prints every new ack of a key (instance, kind, version, key id)."""

    kv: KvStore
    policy: KeyPolicy
    say: Callable[[str], None]
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def __call__(self) -> None:
        store = AckStore(self.kv, self.policy.vault.state_prefix)
        facts = store.read(self.policy.env, self.policy.name, AckPolicy.of(self.policy))
        for ack in facts.acks:
            mark = (ack.instance, ack.kind, ack.version)
            if mark not in self.seen:
                self.seen.add(mark)
                self.say(
                    f"[ack]      {ack.instance}: {ack.kind} ack of secret v{ack.version} "
                    f"({ack.key_id})"
                )


@contextlib.contextmanager
def demo_agent(
    vault: VaultServer, policy: KeyPolicy, say: Callable[[str], None]
) -> Iterator[tuple[KeyFile, Callable[[str], object] | None]]:
    """The agent and, when the shipped files are here, the app's ack function."""
    mount = policy.vault.kv_mount
    if not shipped_files_present():
        say("[agent]    deploy/agent/ not found: no acks in this demo")
        with vault_agent(vault.addr, vault.token, mount=mount, path=policy.secret_path) as agent:
            yield agent, None
        return
    ack_path = f"{mount}/data/{acks_folder(policy.vault.state_prefix, policy.env, policy.name)}"
    with acking_agent(
        vault.addr,
        vault.token,
        secret_api_path=f"{mount}/data/{policy.secret_path}",
        ack_path=ack_path,
        instance=INSTANCE,
    ) as agent:
        helper = load_helper()
        acker = helper.Acker(
            version_file=str(agent.version_file),
            ack_path=ack_path,
            token_file=str(agent.token_file),
            addr=vault.addr,
            instance=INSTANCE,
            settle=2.0,  # re-ack soon after the agent's own ack of the same render
        )
        say(f"[agent]    it acknowledges each version as {INSTANCE} (agent), and so does the app")
        yield agent, acker.app
