"""Concurrent writers in a chaos run's Vault phase: check-and-set conflicts under the daemon.

* Every key's state record rewritten unchanged, by check-and-set, as fast as Vault takes it:
  the daemon's next write of a record loses (its lease is lost; the pass stops and a later one
  goes on), and nothing may be lost or repeated.
* The consumer secret of a published rotation written by someone else (every field kept, one
  added, marked ``chaos_writer`` so the figures know it): the rotation stalls as
  ``secret-changed`` (it never overwrites someone else's write), is resumed through the
  control API, and completes.
"""

from __future__ import annotations

import contextlib
import threading
import time

from vault_rotator.engine.reasons import Phase
from vault_rotator.errors import CasConflictError
from vault_rotator.testing.chaos_fault import Fault, completed
from vault_rotator.testing.chaos_world import Bench


def cas_writers(run: Fault) -> None:
    """State records rewritten under the daemon, then a consumer secret written by someone else."""
    run.hit()
    bench = run.bench
    wins = _rewrite_records(bench, seconds=6.0)
    run.complete("state records rewritten")
    run.hit()
    if not run.wait(30, lambda: bool(_published(bench))):
        run.miss("cas: no published rotation to write under")
        return
    name, rid = _published(bench)[0]
    _write_secret(bench, name)

    def stalled_or_done() -> bool:
        return (name, rid) in bench.stalls or completed(bench, {name: rid})

    if run.wait(20, stalled_or_done) and (name, rid) in bench.stalls:
        bench.resumed.add((name, rid))
        bench.ask(run.http, "POST", run.daemon.url(f"/v1/resume/{bench.env}/{name}"))
    run.flying = {name: rid}
    run.complete("consumer secret written by someone else")
    if wins == 0:
        run.miss("cas: the record writer never won a write")


def _published(bench: Bench) -> list[tuple[str, str]]:
    found = []
    for name in bench.names:
        record = bench.store.read(bench.env, name)[0]
        rotation = record.rotation
        if record.phase == Phase.PUBLISHED and rotation and rotation.stalled is None:
            found.append((name, rotation.id))
    return found


def _write_secret(bench: Bench, name: str) -> None:
    kv = bench.store.kv
    current = kv.read(f"{bench.env}/{name}")
    assert current is not None
    kv.write(f"{bench.env}/{name}", {**current.data, "chaos_writer": True}, cas=current.version)


def _rewrite_records(bench: Bench, seconds: float) -> int:
    """Rewrite every key's state record unchanged, by CAS, for ``seconds``; the writes won."""
    wins = [0]
    end = time.monotonic() + seconds

    def write() -> None:
        kv = bench.store.kv
        while time.monotonic() < end:
            for name in bench.names:
                path = bench.store.state_path(bench.env, name)
                got = kv.read(path)
                if got is None:
                    continue
                with contextlib.suppress(CasConflictError):  # a lost race is the point
                    kv.write(path, dict(got.data), cas=got.version)
                    wins[0] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    thread.join(seconds + 10)
    return wins[0]
