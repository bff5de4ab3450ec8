"""``vault-rotator run``: the daemon process: scheduler, signals, listener, shutdown.

APScheduler 3.x only ticks: one interval job per provider account every ``poll_interval`` runs
:meth:`Daemon.tick` (missed runs coalesce; the truth lives in Vault). A second job renews the
Vault token before it expires.

* SIGTERM / SIGINT: take no new work, let the provider or Vault call in progress finish, cancel
  backoffs, release leases, exit 0 (well within 10 s). A SIGINT ignored when the process started
  (a script's background job, ``nohup``) stays ignored; SIGTERM always stops.
* SIGHUP: reload the policies; an invalid new config is logged with its ``FILE:LINE`` problems
  and the old one kept. So is a new config the loader fails on in any other way: a reload never
  stops the daemon.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from vault_rotator.daemon.daemon import Cancelled, Daemon, StopFlag
from vault_rotator.errors import VaultRotatorError
from vault_rotator.policy import Account, KeyPolicy, PolicyError, load_policies
from vault_rotator.policy.problems import clipped, escaped

log = structlog.get_logger(__name__)

RENEW_EVERY_S = 15.0
STEP_BACK_AFTER = 3  # failed ticks in a row before a replica leaves an account to another
STEP_BACK_POLLS = 3  # ... for this many polls (plus one lease TTL)
SHUTDOWN_WAIT_S = 8.0


class Service:
    """Runs a daemon's ticks on a scheduler until stopped."""

    def __init__(
        self,
        daemon: Daemon,
        stop: StopFlag,
        config_dir: Path,
        *,
        renew: Callable[[], object] | None = None,
    ) -> None:
        self.daemon = daemon
        self.stop = stop
        self.config_dir = config_dir
        self.renew = renew
        self.started = time.time()
        self.reload_requested = threading.Event()
        self.on_reload: list[Callable[[], object]] = []  # run on SIGHUP too (TLS files)
        self.failed_ticks: dict[Account, int] = {}  # failed ticks in a row, per account
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        daemon.should_stop = lambda: stop.stopping

    def schedule(self) -> None:
        """(Re)create one tick job per account, each due at once (resumes work in flight)."""
        for job in self.scheduler.get_jobs():
            if job.id.startswith("tick:"):
                job.remove()
        now = datetime.now(UTC)
        accounts = {**self.daemon.discover_orphans(), **self.daemon.accounts()}
        for account, keys in accounts.items():
            every = min(k.provider.poll_interval_s for k in keys)
            self.scheduler.add_job(
                self._tick,
                IntervalTrigger(seconds=every, timezone=UTC),
                args=[account],
                id=f"tick:{account.base_url}|{account.kv_mount}|{account.management_key_path}",
                next_run_time=now,
            )

    def _tick(self, account: Account) -> None:
        if self.stop.stopping:
            return
        keys = self.daemon.accounts().get(account, ())
        try:
            report = self.daemon.tick(account, keys)
        except Cancelled:
            return
        except VaultRotatorError as exc:
            log.warning("tick failed", account=account.base_url, error=str(exc))
            self._tick_failed(account, keys)
            return
        except Exception as exc:  # a bug: one line, no traceback; the next tick tries again
            error = f"unexpected {type(exc).__name__}: {str(exc)[:200]}"
            log.error("tick failed", account=account.base_url, error=error)  # noqa: TRY400
            self._tick_failed(account, keys)
            return
        self.failed_ticks.pop(account, None)
        if report.started or report.errors:
            log.info("tick", account=account.base_url, started=report.started, errors=report.errors)

    def _renew(self) -> None:
        if self.renew is not None and not self.stop.stopping:
            try:
                self.renew()
            except VaultRotatorError as exc:
                log.warning("vault token renewal failed", error=str(exc))

    def _tick_failed(self, account: Account, keys: tuple[KeyPolicy, ...]) -> None:
        """Count a failed tick; after STEP_BACK_AFTER in a row, leave the account to another
        replica for a few polls (one that reaches the provider or Vault may do better)."""
        failed = self.failed_ticks.get(account, 0) + 1
        self.failed_ticks[account] = failed
        if failed >= STEP_BACK_AFTER:
            self.failed_ticks.pop(account, None)
            poll = min((k.provider.poll_interval_s for k in keys), default=30.0)
            self.daemon.replicas.step_back(account, STEP_BACK_POLLS * poll + self.lease_ttl())

    def lease_ttl(self) -> float:
        return self.daemon.replicas.ttl

    def _renew_account_leases(self) -> None:
        if self.stop.stopping:
            return
        try:
            self.daemon.replicas.renew_held()
        except Exception as exc:  # a lease not renewed expires; the next tick retakes it
            log.warning("account lease renewal failed", error=f"{type(exc).__name__}: {exc}")

    def reload(self) -> bool:
        """Load the policies again; keep the old ones (and say why) if the new are invalid.

        Whatever the loader raises, the daemon keeps running on the old policies: a file that
        finds a bug in the loader must not stop rotations (the loader's own limits are the
        first line; this is the second).
        """
        try:
            policies = load_policies(self.config_dir)
        except PolicyError as exc:
            for problem in exc.problems:
                log.warning("reload refused; keeping the old policies", problem=str(problem))
            return False
        except Exception as exc:  # any failure of loading keeps the old config
            # No traceback: a RecursionError's has a thousand frames; the type and text suffice.
            log.error(  # noqa: TRY400
                "reload failed; keeping the old policies",
                config=str(self.config_dir),
                error=f"{type(exc).__name__}: {escaped(clipped(str(exc), 200))}",
            )
            return False
        self.daemon.policies = policies
        self.daemon.replicas.forget(set(policies.accounts()) | set(self.daemon.orphans))
        self.daemon.metrics.forget_per_key_series()  # the next ticks set what still exists
        self.schedule()
        log.info("policies reloaded", keys=sum(1 for _ in policies))
        return True

    def install_signals(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop.set()

        def hup(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, stop)
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # inherited ignored (a
            signal.signal(signal.SIGINT, stop)  # background job's): left so, as a shell meant
        signal.signal(signal.SIGHUP, hup)

    def run_until_stopped(self) -> None:
        self.schedule()
        if self.renew is not None:
            self.scheduler.add_job(self._renew, IntervalTrigger(seconds=RENEW_EVERY_S), id="renew")
        self.scheduler.add_job(
            self._renew_account_leases,
            IntervalTrigger(seconds=max(1.0, self.lease_ttl() / 3)),
            id="account-leases",
        )
        self.scheduler.start()
        while not self.stop.event.wait(0.2):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
                for hook in self.on_reload:
                    hook()
        self.shutdown()

    def shutdown(self) -> None:
        """No new ticks; wait for running ones (their backoffs are cancelled)."""
        self.scheduler.pause()
        finished = threading.Event()

        def wait() -> None:
            self.scheduler.shutdown(wait=True)
            finished.set()

        threading.Thread(target=wait, daemon=True).start()
        deadline = time.monotonic() + SHUTDOWN_WAIT_S
        if not finished.wait(SHUTDOWN_WAIT_S):
            log.warning("a tick is still running at shutdown; its lease will expire")
        elif not self.daemon.drain_starts(max(0.0, deadline - time.monotonic())):
            log.warning("an emergency start is still running at shutdown; its lease will expire")
        else:  # nothing runs: give the account leases back so another replica takes over now
            self.daemon.replicas.release_all()
