"""The chaos run behind ``make chaos``: the daemon killed, Vault and the provider failing.

A real OpenBao (by default a raft ``bao server`` of its own, :mod:`.vault_raft`, so it can be
stopped, restarted and sealed), the ARouter emulator, and per key a real ``bao agent`` and the
shipped consumer calling every 0.1 s (:mod:`.chaos_world`). ``vault-rotator run`` is a
subprocess throughout. The run has phases:

1. kills (:mod:`.chaos_daemon`): the daemon SIGKILLed ``kills`` times, at every step boundary
   and at seeded random moments, and restarted; with provider faults on, every third life
   first gets the next provider fault of a cycle (:mod:`.chaos_provider`);
2. Vault faults (:mod:`.chaos_vault`): stopped and restarted, sealed, tokens revoked, a path
   denied, concurrent writers (on a raft server only);
3. provider faults (:mod:`.chaos_provider`): 5xx bursts, 429s, slow, trickled, dropped,
   malformed and oversized answers, under a longer lease;
4. a last daemon settles every rotation and is stopped with SIGTERM.

Then the figures (:mod:`.chaos_figures`): every output is searched for every key value, the
management key and every Vault token; the harness never prints one.

``python -m vault_rotator.testing.chaos [--kills N] [--seed S] [--keys K]
[--no-vault-faults] [--no-provider-faults]``: one line of figures; exit 1 when a must-be-zero
figure is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from vault_rotator.emulator import Emulator
from vault_rotator.engine.engine import BOUNDARIES
from vault_rotator.testing import chaos_figures as figs
from vault_rotator.testing import chaos_provider as provider
from vault_rotator.testing.chaos_daemon import kill_phase, plan, settle
from vault_rotator.testing.chaos_setup import setup, status_cli, traffic
from vault_rotator.testing.chaos_vault import SCENARIOS, vault_phase
from vault_rotator.testing.chaos_world import Bench, log_events, webhook_receiver
from vault_rotator.testing.vault_raft import RaftVault, raft_server
from vault_rotator.testing.vault_server import VaultServer


def _secret_versions(kv: Any, bench: Bench) -> tuple[list[figs.SecretVersion], list[str]]:
    """Every version of every consumer secret (no value kept), and the values they served."""
    versions, values = [], []
    for name in bench.names:
        current = kv.read(f"{bench.env}/{name}")
        for number in range(1, current.version + 1):
            read = kv.read(f"{bench.env}/{name}", version=number)
            if read is None:  # beyond the mount's max_versions after all: say so
                bench.outputs.notes.append(f"{name} version {number} no longer kept")
                continue
            data = read.data
            values.append(str(data.get("api_key", "")))
            versions.append(
                figs.SecretVersion(
                    name,
                    number,
                    data.get("key_id"),
                    data.get("rotation_id"),
                    bool(data.get("aborted")),
                    outside=bool(data.get("chaos_writer")),
                )
            )
    return versions, values


def gather(bench: Bench, f: figs.Figures) -> None:
    """Compute the figures from the settled world and everything that was said."""
    kv = bench.store.kv
    keys = [k for k in bench.emulator.all_keys() if k["id"] not in bench.foreign]
    versions, values = _secret_versions(kv, bench)
    secrets = [kv.read(f"{bench.env}/{name}") for name in bench.names]
    served = [str(got.data.get("key_id")) if got else "" for got in secrets]
    f.orphans, f.lost = figs.orphans_and_lost(keys, served)
    bench.observe()
    completed = set(bench.outcomes)
    f.rotations = sum(1 for o in bench.outcomes.values() if o.startswith("succeeded"))
    f.false_stalls = len((bench.stalls - bench.resumed) & completed)
    f.stalls_resumed = len(bench.resumed)
    events = [e for log in sorted(bench.work.glob("daemon-*.log")) for e in log_events(log)]
    unanswered = figs.unanswered_writes(events)
    f.retried_lost_answers = sum(unanswered.values())
    repeated = figs.repeated_work(
        keys, bench.emulator.mutation_log(), versions, [rid for _, rid in completed], unanswered
    )
    f.repeated = len(repeated)
    f.notes += bench.outputs.notes
    f.notes += repeated[:5]
    provider.provider_figures(bench, f)
    texts = [*bench.outputs.texts]
    texts += [p.read_text(errors="replace") for p in sorted(bench.work.glob("*.log"))]
    texts += [p.read_text(errors="replace") for p in sorted(bench.work.glob("consumer-*.out"))]
    for lines in (t.splitlines() for t in texts if "call 1: HTTP" in t):
        ok, failed = figs.consumer_calls(lines)
        f.consumer_ok += ok
        f.consumer_failed += failed
    hits = figs.secret_hits(
        texts, [*values, *bench.tokens], lambda v: bench.emulator.key_id_for_value(v) is not None
    )
    f.secret_hits = len(hits)
    f.searched_texts, f.searched_bytes = len(texts), sum(len(t.encode()) for t in texts)
    f.notes += hits[:5]


def _clean_up(work: Path, f: figs.Figures, *, keep: bool) -> None:
    """Remove the run's directory, unless asked to keep it or the run failed (then say where)."""
    if keep or f.failures():
        f.notes.append(f"kept the run's logs, output and Vault data in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def run(
    kills: int,
    seed: int,
    keys: int = 3,
    vault: VaultServer | None = None,
    *,
    provider_faults: bool = True,
    vault_faults: tuple[str, ...] = SCENARIOS,
    provider_groups: tuple[int, ...] | None = None,
    keep: bool = False,
) -> figs.Figures:
    """One chaos run (on ``vault``, else on a raft server of its own); its figures.

    ``vault_faults``: the Vault scenarios to run (none unless Vault is a :class:`RaftVault`);
    ``provider_faults``: the kill phase's cycle, the foreign keys and the provider phase
    (``provider_groups``: which of its groups, default all; ``()``: no provider phase).
    ``keep``: leave the working directory (logs, consumer output, Vault's data) in place and
    name it in a note; a failed run always keeps it."""
    f = figs.Figures(seed=seed)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="vault-rotator-chaos-"))
        stack.callback(_clean_up, work, f, keep=keep)  # runs last: after Vault has stopped
        vault = vault or stack.enter_context(raft_server(work / "vault"))
        emulator = stack.enter_context(Emulator(dialect="b", seed=seed))
        bench = setup(vault, emulator, work, keys)
        bench.webhook = stack.enter_context(webhook_receiver(bench.outputs))
        if provider_faults:
            provider.add_foreign_keys(bench)
        with traffic(bench), httpx.Client(timeout=10) as http:
            before = (lambda: provider.next_kill_fault(bench, f)) if provider_faults else None
            hit = kill_phase(bench, http, plan(kills, seed), f, before or (lambda: None))
            if vault_faults and isinstance(vault, RaftVault):
                vault_phase(bench, http, f, vault_faults)
            if provider_faults and provider_groups != ():
                provider.provider_phase(bench, http, f, provider_groups)
            settle(bench, http, f)
            time.sleep(2.0)  # the consumers go on calling with the final keys
        status_cli(bench)
        f.boundaries_missed = len(set(BOUNDARIES[:kills]) - hit)
        gather(bench, f)
    f.seconds = time.monotonic() - started
    return f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=int(os.environ.get("CHAOS_KILLS", "100")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED", "1")))
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--no-vault-faults", action="store_true", help="skip the Vault faults")
    parser.add_argument("--no-provider-faults", action="store_true", help="no provider faults")
    parser.add_argument("--keep", action="store_true", help="keep the run's logs and data")
    args = parser.parse_args(argv)
    figures = run(
        args.kills,
        args.seed,
        args.keys,
        provider_faults=not args.no_provider_faults,
        vault_faults=() if args.no_vault_faults else SCENARIOS,
        keep=args.keep,
    )
    for note in figures.notes:
        print(f"note: {note}", file=sys.stderr)
    print(figures.line(), flush=True)
    return 1 if figures.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
