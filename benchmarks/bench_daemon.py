"""What one daemon tick costs as rotations in flight grow: time, Vault calls, provider calls.

For N = 5, 20 and 50 keys of one account (real OpenBao dev server, the emulator, a fake clock
shared by both), every key is rotated until its new key is published; then ticks are timed
while all N wait for the old keys to drain. Prints per tick: wall time (p50, p95), Vault
requests, provider list pages and other provider requests, and the ratio of each to N=5. There
is one list pass per account per poll whatever N is (its pages grow only with the account's key
count: 100 page-size); Vault requests and time grow linearly with N (each rotation reads its
record and its consumer secret and takes and releases its lease: about 5 requests).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.session import StateStore
from vault_rotator.logs import configure
from vault_rotator.policy import load_policies
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer, bao_dev_server

MANAGEMENT_KEY = "lr_mgmt_bench_0123456789abcdef"
SIZES = (5, 20, 50)
TICKS = 15
CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {url}
  dialect: c
  management_key: {{path: {env}/management}}
  usage_lag: 60s
  poll_interval: 30s
  max_concurrent: 64
vault: {{kv_mount: secret, state_prefix: {env}/vault-rotator}}
require_spending_limit: false
defaults: {{pickup_timeout: 1d, drain_period: 1d, drain_timeout: 7d}}
keys:
{keys}
"""


def _measure(vault: VaultServer, size: int) -> dict[str, float]:
    clock = FakeClock()
    env = f"b{uuid.uuid4().hex[:6]}"
    with Emulator(dialect="c", management_keys=[MANAGEMENT_KEY], clock=clock) as emu:
        conn = VaultConnection(vault.addr, vault.token)
        kv = conn.kv("secret")
        kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        lines = []
        for i in range(size):
            key_id, value = emu.seed_key(f"k{i}", allowed_providers=["openai"])
            kv.write(f"{env}/k{i}", {"api_key": value, "key_id": key_id}, cas=0)
            lines.append(
                f"  - {{name: k{i}, secret_path: {env}/k{i}, allowed_providers: [openai]}}"
            )
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "b.yaml").write_text(
                CONFIG.format(env=env, url=emu.base_url, keys="\n".join(lines))
            )
            policies = load_policies(Path(tmp))
        daemon = Daemon(policies, Runtime(conn, clock=clock, sleep=clock.sleep), metrics=Metrics())
        vault_calls: Counter[str] = Counter()
        conn.on_request = lambda op, _status: vault_calls.update([op])
        ((account, keys),) = daemon.accounts().items()
        store = StateStore(kv, f"{env}/vault-rotator")
        for _ in range(10):
            daemon.tick(account, keys)
            clock.advance(30)
            if all(store.read(env, f"k{i}")[0].phase == reasons.PUBLISHED for i in range(size)):
                break
        times, vault_per_tick, lists, others = [], [], [], []
        for _ in range(TICKS):
            clock.advance(30)
            before_v, before_r = sum(vault_calls.values()), emu.request_counts()
            began = time.perf_counter()
            daemon.tick(account, keys)
            times.append((time.perf_counter() - began) * 1000)
            after_r = emu.request_counts()
            vault_per_tick.append(sum(vault_calls.values()) - before_v)
            lists.append(after_r["list"] - before_r["list"])
            others.append(sum(after_r.values()) - sum(before_r.values()) - lists[-1])
        daemon.runtime.close()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": sorted(times)[int(0.95 * (len(times) - 1))],
        "vault": statistics.mean(vault_per_tick),
        "list_pages": statistics.mean(lists),
        "other_provider": statistics.mean(others),
    }


def main() -> None:
    configure("warning")
    with bao_dev_server() as vault:
        results = {size: _measure(vault, size) for size in SIZES}
    base = results[SIZES[0]]
    print(f"daemon tick with N rotations in flight ({TICKS} ticks each)")
    header = ("N", "p50 ms", "p95 ms", "vault/tick", "list pages", "other prov")
    print(" ".join(f"{h:>11}" for h in header) + f"  ratios to N={SIZES[0]}: time vault list")
    for size, r in results.items():
        cells = (size, r["p50_ms"], r["p95_ms"], r["vault"], r["list_pages"], r["other_provider"])
        ratios = [r[k] / base[k] for k in ("p50_ms", "vault", "list_pages")]
        row = " ".join(f"{c:>11.1f}" if isinstance(c, float) else f"{c:>11}" for c in cells)
        print(row + "  " + " ".join(f"{x:.2f}x" for x in ratios))


if __name__ == "__main__":
    main()
