"""The scale benchmark's environment-wide emergency, started as users start it.

After the scheduled mass rotation and the idle minutes (:mod:`benchmarks.bench_scale`), in the
same process and on the same daemon: the policies are written again with 1 s polls plus a
**side environment** of the same account (one key on ``every 1h``, last rotated so that it falls
due a little after the emergency opens: :func:`benchmarks.scale_world.seed_side`), loaded as
SIGHUP loads them, and the daemon runs as ``vault-rotator run`` does (its
:class:`~vault_rotator.daemon.service.Service` loop, account-lease renewal included) with its
control API on a loopback port (:class:`~vault_rotator.daemon.http.Listener`, the Vault root
token as the caller's). Once every record is read, a poller in its own process asks
``GET /v1/status`` every second (:mod:`benchmarks.status_poller`), and every fleet environment
gets ``POST /v1/rotate/{env}`` with ``{"emergency": true}``, all at once (one thread each).

Measured from the first POST (**opened**) to the moment the last key's rotation finished
(**done**, an engine listener; every outcome must be ``succeeded-emergency``), bounded by
:func:`limit_s` (past it: not settled, the benchmark fails):

* wall time and rotations/s; each process's CPU seconds over that window (this process is the
  daemon, OpenBao the ``bao`` server, the emulator), from ``/proc``; the daemon's peak RSS over
  the emergency (its peak reset at opened);
* from opened until every request is recorded complete (every key ``done``) and notified in
  Vault, and the side key is idle again (each waited for at most :data:`SETTLE_WAIT_S`):
  Vault writes, counted by path (:class:`benchmarks.scale_world.WriteTally`): each request's
  own (``<state_prefix>/emergency/<env>`` and its shards) **apart, per request**; the side
  environment's apart; everything else (the change signal ``<state_prefix>/changes``
  included) is the keys', per rotation (the account lease is on a connection of its own);
  provider requests by route and mutations (the emulator's counts), less the side key's
  mutations (a create per side rotation started after opened, a delete per one finished; a
  side rotation still in flight makes the figure unmeasurable). The route figures include
  the side key's few calls;
* the side key: its scheduled rotation (trigger ``schedule``) must start after opened and
  finish before done, while the account is busy with the emergency;
* ``GET /v1/status``: every poll whose answer came after opened and that was sent before done,
  its latency (answer minus send) and status;
* the ETA: see :mod:`benchmarks.emergency_figures` for which samples count.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from benchmarks import procs
from benchmarks import scale_world as w
from benchmarks.emergency_figures import eta_samples, status_polls, target_s
from vault_rotator.commands.run_cmd import VaultCallerAuth
from vault_rotator.daemon.control import Control
from vault_rotator.daemon.daemon import Daemon, StopFlag
from vault_rotator.daemon.http import Listener
from vault_rotator.daemon.service import Service
from vault_rotator.engine.emergency import Step
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.emergency_view import line_of
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import Outcome, Rotation, Stall
from vault_rotator.policy import KeyPolicy
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer

POLL = "1s"
POLL_S = 1.0
USAGE_LAG_S = 0.0  # scale_world's usage_lag
LIMIT_MIN_S = 180.0  # the emergency may take at least this long before it counts as stuck
LIMIT_FACTOR = 3.0  # ... or this many times its target
SETTLE_WAIT_S = 60.0  # after done: for every request to be recorded complete, the side key idle
SIDE_LEAD_MIN_S = 10.0


def limit_s(mass_wall_s: float) -> float:
    """How long the emergency may take before the benchmark gives up on it."""
    return max(LIMIT_MIN_S, LIMIT_FACTOR * target_s(mass_wall_s, USAGE_LAG_S, POLL_S))


class Ledger:
    """An engine listener: the fleet's rotations that finish after opened, and the side key's."""

    def __init__(self, envs: set[str], side_ref: str) -> None:
        self.envs, self.side_ref = envs, side_ref
        self.opened = float("inf")  # monotonic; set when the first POST goes
        self.done: dict[str, tuple[float, str]] = {}  # ref -> (monotonic, outcome), last one
        self.side: list[dict[str, Any]] = []
        self.stalls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def finished_count(self) -> int:
        with self.lock:
            return len(self.done)

    def finished(self, policy: KeyPolicy, outcome: Outcome, rotation: Rotation) -> None:
        now, epoch = time.monotonic(), time.time()
        with self.lock:
            if policy.ref == self.side_ref:
                self.side.append(
                    {
                        "started_epoch": rotation.started_at,
                        "finished_epoch": epoch,
                        "trigger": str(rotation.trigger),
                        "outcome": str(outcome.outcome),
                    }
                )
            elif policy.env in self.envs and now >= self.opened:
                self.done[policy.ref] = (now, str(outcome.outcome))

    def stalled(self, policy: KeyPolicy, _rotation: Rotation, stall: Stall) -> None:
        with self.lock:
            self.stalls[stall.reason] += 1


def classifier(fleet: w.Fleet) -> Callable[[str], str]:
    """A Vault write's owner by path: ``request:<env>``, ``side`` or ``keys``."""
    requests = f"{fleet.state_prefix}/emergency/"

    def classify(path: str) -> str:
        if path.startswith(requests):
            return "request:" + path[len(requests) :].split("/", 1)[0]
        return "side" if fleet.side_env in path.split("/") else "keys"

    return classify


def post_emergency(address: tuple[str, int], token: str, env: str) -> tuple[int, dict[str, Any]]:
    """``POST /v1/rotate/{env}`` with ``{"emergency": true}``: (status, answer)."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        body = json.dumps({"emergency": True})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request("POST", f"/v1/rotate/{env}", body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        connection.close()


class EmergencyPhase:
    """One size's emergency on the benchmark's daemon; :meth:`run` returns its figures."""

    def __init__(
        self,
        *,
        vault: VaultServer,
        emu: w.Emulator,
        fleet: w.Fleet,
        daemon: Daemon,
        runtime: w.SwitchingRuntime,
        routes: Counter[str],
        figures: dict[str, Any],
    ) -> None:
        self.vault, self.emu, self.fleet = vault, emu, fleet
        self.daemon, self.runtime, self.routes = daemon, runtime, routes
        self.keys = len(fleet.refs)
        self.mass = figures
        target = target_s(figures["mass_wall_s"], USAGE_LAG_S, POLL_S)
        self.e: dict[str, Any] = {"target_s": target, "limit_s": limit_s(figures["mass_wall_s"])}
        self.ledger = Ledger(set(fleet.envs), fleet.side_ref)
        self.side_due = 0.0  # epoch seconds
        self.own = VaultConnection(vault.addr, vault.token)  # the benchmark's reads: not counted

    def run(self) -> dict[str, Any]:
        try:
            self._run()
        except Exception as exc:  # a figure that cannot be measured fails the benchmark
            self.e["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            self.own.close()
        return self.e

    def _run(self) -> None:
        lead = max(SIDE_LEAD_MIN_S, 3 * self.mass["startup_s"] + 5)
        self.side_due = side_due = time.time() + lead
        w.seed_side(self.vault, self.emu, self.fleet, due_at=side_due)
        w.write_config(self.fleet, self.emu.url, poll=POLL, keys=self.keys, side=True)
        self.daemon.engine.listeners.append(self.ledger)
        self.runtime.tally.classify = classifier(self.fleet)
        with self._serving() as address:
            if time.time() >= side_due:
                raise RuntimeError(f"the side key fell due before the emergency opened ({lead=})")
            url = f"http://{address[0]}:{address[1]}"
            with w.status_poller(url, self.vault.token) as poller:
                time.sleep(POLL_S)  # a poll or so before opened: the baseline latency
                self._measure(address)
                polls = poller.finish()
        self._figures_of(polls)

    @contextmanager
    def _serving(self) -> Iterator[tuple[str, int]]:
        """The daemon as ``vault-rotator run`` runs it, its control API on a loopback port,
        every record read (the start-up read is not the emergency's)."""
        service = Service(self.daemon, StopFlag(), self.fleet.config)
        if not service.reload():
            raise RuntimeError("the emergency's policies did not load")
        accounts = self.daemon.accounts()
        if len(accounts) != 1:
            raise RuntimeError(f"the side environment is not in the fleet's account: {accounts}")
        ((account, _keys),) = accounts.items()
        auth = VaultCallerAuth(self.runtime.conn)
        listener = Listener("127.0.0.1", 0, control=Control(self.daemon, auth))
        listener.start()
        runner = threading.Thread(target=service.run_until_stopped, daemon=True)
        runner.start()
        try:
            loaded = lambda: (b := self.daemon.books.get(account)) is not None and b.loaded  # noqa: E731
            if not w.wait_for(loaded, 600, step=0.2):
                raise RuntimeError("the daemon did not read every record within 600 s")
            host, port = listener.server.server_address[:2]
            yield str(host), int(port)
        finally:
            service.stop.set()
            runner.join(30)
            listener.stop()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "writes": self.runtime.conn.writes(),
            "tally": self.runtime.tally.snapshot(),
            "routes": Counter(dict(self.routes)),
            "mutations": self.emu.mutation_counts(),
        }

    def _cpu(self) -> dict[str, float]:
        pids: dict[str, int | str] = {
            "daemon": "self",
            "openbao": self._bao_pid(),
            "emulator": self.emu.process.pid,
        }
        return {name: procs.cpu_seconds(pid) for name, pid in pids.items()}

    def _bao_pid(self) -> int:
        if self.vault.process is None:
            raise RuntimeError("OpenBao is not a process of ours: its CPU cannot be read")
        return self.vault.process.pid

    def _measure(self, address: tuple[str, int]) -> None:
        """Open every request, wait for every key, then for the records to settle."""
        e, before, cpu = self.e, self._snapshot(), self._cpu()
        e["peak_before_mb"], e["rss_at_open_mb"] = procs.peak_rss_mb(), procs.rss_mb()
        procs.reset_peak_rss()
        self.ledger.opened, opened_epoch = time.monotonic(), time.time()
        e["opened"], e["opened_epoch"] = self.ledger.opened, opened_epoch
        e["side_due_s"] = self.side_due - opened_epoch
        envs = self.fleet.envs
        with ThreadPoolExecutor(len(envs)) as pool:
            answers = list(
                pool.map(lambda env: post_emergency(address, self.vault.token, env), envs)
            )
        e["answers"] = [[env, status, body.get("keys"), body.get("resumed")]
                        for env, (status, body) in zip(envs, answers, strict=True)]  # fmt: skip
        e["opened_in_s"] = time.monotonic() - self.ledger.opened
        for env, (status, body) in zip(envs, answers, strict=True):
            if status != 202:
                raise RuntimeError(f"POST /v1/rotate/{env} answered {status}: {body.get('error')}")
        finished = w.wait_for(lambda: self.ledger.finished_count() >= self.keys, e["limit_s"], 0.2)
        e["done"] = time.monotonic()
        e["window_s"] = e["done"] - self.ledger.opened
        e["finished_in_window"] = self.ledger.finished_count()
        after = self._cpu()
        e["cpu_s"] = {name: after[name] - cpu[name] for name in cpu}
        e["peak_rss_mb"] = procs.peak_rss_mb()
        e["finished"] = finished
        e["settled_complete"] = w.wait_for(self._requests_complete, SETTLE_WAIT_S, step=1.0)
        e["complete_s"] = time.monotonic() - self.ledger.opened  # within a second
        e["side_idle"] = w.wait_for(self._side_idle, SETTLE_WAIT_S, step=0.5)
        self._since(before, self._snapshot())

    def _requests_complete(self) -> bool:
        """Every request recorded complete (every key done) and its one webhook marked."""
        store = EmergencyStore(self.own.kv("secret"), self.fleet.state_prefix)
        counts: dict[str, dict[str, int]] = {}
        complete = True
        for env in self.fleet.envs:
            request = store.read(env)
            if request is None:
                return False
            counts[env] = dict(Counter(str(entry.step) for entry in request.keys.values()))
            complete &= request.complete and request.notified_at is not None
            complete &= counts[env] == {str(Step.DONE): len(request.keys)}
        self.e["request_counts"] = counts
        return complete

    def _side_idle(self) -> bool:
        env, name = self.fleet.side_ref.split("/")
        record, _version = StateStore(self.own.kv("secret"), self.fleet.state_prefix).read(
            env, name
        )
        return record.rotation is None

    def _since(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Writes by owner, provider requests and mutations between two snapshots."""
        tally, total = after["tally"] - before["tally"], after["writes"] - before["writes"]
        requests = {k.split(":", 1)[1]: n for k, n in tally.items() if k.startswith("request:")}
        self.e["writes_after"] = {
            "total": total,
            "keys": total - sum(requests.values()) - tally["side"],  # the change signal's too
            "side": tally["side"],
            "requests": requests,
            "untallied": total - sum(tally.values()),  # sent past the wrapper: counted as keys'
        }
        self.e["routes"] = dict(after["routes"] - before["routes"])
        self.e["mutations"] = dict(after["mutations"] - before["mutations"])

    def _figures_of(self, polls: list[dict[str, Any]]) -> None:
        e, ledger = self.e, self.ledger
        opened, done = e.pop("opened"), e.pop("done")
        with ledger.lock:
            finished = dict(ledger.done)
            e["side"] = [dict(s) for s in ledger.side]
            e["stalls"] = dict(ledger.stalls)
        e["outcomes"] = dict(Counter(outcome for _at, outcome in finished.values()))
        last = max((at for at, _ in finished.values()), default=done) if e["finished"] else done
        e["wall_s"] = last - opened if e["finished"] else None
        ends: dict[str, float] = {}
        for ref, (at, _outcome) in finished.items():
            env = ref.split("/")[0]
            ends[env] = max(ends.get(env, 0.0), at)
        e["env_wall_s"] = {env: end - opened for env, end in sorted(ends.items())}
        for side in e["side"]:
            side["started_s"] = side.pop("started_epoch") - e["opened_epoch"]
            side["finished_s"] = side.pop("finished_epoch") - e["opened_epoch"]
        e["status"] = status_polls(polls, opened, last)
        e["eta"] = eta_samples(polls, ends if e["finished"] else {})
        e["progress_line"] = _halfway_line(polls)
        e["polls"] = len(polls)


def _halfway_line(polls: list[dict[str, Any]]) -> str | None:
    """The progress line a user saw nearest half-way, for the first environment."""
    views = [v for p in polls for v in p["views"][:1] if v.get("keys")]
    if not views:
        return None
    best = min(views, key=lambda v: abs(v["counts"].get("done", 0) / v["keys"] - 0.5))
    return line_of({**best, "complete": bool(best.get("complete"))})
