"""Ack records a hostile consumer can write that once broke status, ticks or a rotation."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import hvac
from structlog.testing import capture_logs
from test_acks import T0, ack, facts, rotation
from world import WorldFactory

from vault_rotator.commands import vault_policy_cmd
from vault_rotator.daemon.ack_retention import AckRetention
from vault_rotator.engine import reasons
from vault_rotator.engine.ack_store import AckStore
from vault_rotator.engine.acks import MAX_ACKS, AckPolicy, hold
from vault_rotator.engine.driver import drive
from vault_rotator.policy import (
    EnvironmentPolicy,
    KeyPolicy,
    ManagementKeyRef,
    PolicySet,
    ProviderPolicy,
    VaultPolicy,
)
from vault_rotator.policy.defaults import MAX_REQUIRE_ACKS
from vault_rotator.store.memory import MemoryKv
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer

DEPTH = 1000


NESTED = (
    '{"data": {"version": ' + "[" * DEPTH + "2" + "]" * DEPTH + "}}"
)  # no encoder nests so deep


def test_a_deeply_nested_ack_is_one_refused_record_not_a_crash(vault: VaultServer) -> None:
    """A consumer writes an ack nested a thousand deep (OpenBao stores it): reading the acks
    refuses that record and reads the others; the retention sweep goes on."""
    prefix = f"h{uuid.uuid4().hex[:8]}"
    kv = VaultConnection(vault.addr, vault.token).kv("secret")
    store = AckStore(kv, prefix)
    folder = store.folder("prod", "api")
    written = httpx.post(
        f"{vault.addr}/v1/secret/data/{folder}/web-1",
        headers={"X-Vault-Token": vault.token},
        content=NESTED,
        timeout=10,
    )
    assert written.status_code == 200, written.status_code
    good = {"version": 2, "key_id": "new", "at": "2027-01-15T10:00:00Z", "kind": "app",
            "instance": "web-2"}  # fmt: skip
    kv.write(f"{folder}/web-2", good, cas=0)
    read = store.read("prod", "api", AckPolicy(1, False, 86400.0))
    assert [a.instance for a in read.acks] == ["web-2"]
    ((instance, problem),) = [(p.instance, p.problem) for p in read.problems]
    assert instance == "web-1"
    assert problem.startswith("unreadable record (")
    assert "nested too deep" in problem
    provider = ProviderPolicy(base_url="https://x.test", management_key=ManagementKeyRef(path="m"))
    policy = KeyPolicy(
        env="prod", name="api", secret_path="apps/api", provider=provider,
        vault=VaultPolicy(kv_mount="secret", state_prefix=prefix),
    )  # fmt: skip
    with capture_logs() as logs:
        AckRetention(lambda _mount: kv).sweep([policy], T0)
    assert not [e for e in logs if e["log_level"] == "error"]


def test_require_acks_can_never_ask_for_more_than_are_read() -> None:
    """The policy's limit on require_acks is the number of records read per key."""
    assert MAX_REQUIRE_ACKS == MAX_ACKS


def test_an_acks_missing_detail_names_at_most_twenty_instances() -> None:
    """Hundreds of silent instances are counted, not all named, in the stall detail."""
    silent = [ack(f"web-{i:03d}", T0 + 30, version=1) for i in range(300)]
    late = hold(rotation(), facts(*silent, require=2), T0 + 3600)
    assert late is not None
    assert "and 280 more" in late.detail
    assert len(late.detail) < 1000


FLOOD = 1100  # the count: more names than a default listener takes in one write


def test_a_consumer_token_flooding_acks_cannot_block_the_rotation(
    world_for: WorldFactory,
) -> None:
    """With drain_on_acks, a consumer token holding the generated consumer policy writes 1,100
    well-formed ack records: every state record is still saved (it carried every present
    instance's name, past OpenBao's default 1000 JSON strings, and every pass after publish
    failed), the rotation drains for its full drain_period and succeeds."""
    world = world_for("c", drain_on_acks=True, ack_ttl_s=10 * 365 * 86400.0)
    old_id, _ = world.seed_old_key()
    world.add_consumer(refresh_s=30.0)
    admin = hvac.Client(url=world.vault.addr, token=world.vault.token)
    name = f"consumer-{world.tag}"
    key = world.policy
    environment = EnvironmentPolicy(
        environment=key.env, source=Path("test.yaml"), provider=key.provider, vault=key.vault,
        require_spending_limit=False, keys=(key,),
    )  # fmt: skip
    policies = PolicySet({key.env: environment})
    admin.sys.create_or_update_policy(name, vault_policy_cmd.consumer_policy(key, policies))
    token = admin.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    consumer = VaultConnection(world.vault.addr, token)
    folder = AckStore(world.kv, world.policy.vault.state_prefix).folder(
        world.policy.env, world.policy.name
    )
    served = world.served()
    version = world.kv.current_version(world.policy.secret_path)

    def ack_of(i: int) -> None:
        data = {"version": version, "key_id": served["key_id"], "at": "2027-01-15T10:00:00Z",
                "kind": "app", "instance": f"web-{i}"}  # fmt: skip
        consumer.kv("secret").write(f"{folder}/web-{i}", data, cas=0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(ack_of, range(FLOOD)))
    consumer.close()
    started = world.clock()
    with capture_logs() as logs:
        done = drive(world.engine(), world.policy, wait=True)
    assert done.outcome is not None
    assert done.outcome.outcome == reasons.SUCCEEDED
    assert world.record().rotation is None
    assert old_id not in world.live_ids()
    assert world.clock() - started >= world.policy.drain_period_s  # the full drain
    warned = [e for e in logs if "drain_on_acks off" in str(e.get("event"))]
    assert warned
    assert warned[0]["instances"] == FLOOD  # MAX_ACKS read, the rest counted


def test_an_ack_folder_too_large_to_list_is_one_problem_and_turns_drain_on_acks_off() -> None:
    """A consumer fills its ack folder past what one answer is read of (2 MiB of names): the
    read is one problem, no record read, and counts as more than drain_on_acks waits for."""
    kv = MemoryKv()
    store = AckStore(kv, "rot")
    folder = store.folder("prod", "k0")
    for i in range(80_000):
        kv.write(f"{folder}/instance-{i:06d}-padding-padding", {"v": 1}, cas=0)
    facts = store.read("prod", "k0", AckPolicy(drain_on_acks=True))
    assert facts.acks == ()
    assert [p.instance for p in facts.problems] == ["*"]
    assert "ack folder not listed" in facts.problems[0].problem
    assert facts.unread > MAX_ACKS
