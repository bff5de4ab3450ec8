"""What ``--wait`` prints while it follows a rotation: a line per change, or one live line.

A :class:`View` is what an operator sees of a rotation at one poll: its *step* (the words
``status`` uses: ``creating``, ``awaiting-pickup``, ``draining``, ``aborting``, ...), its
*situation* (what it waits for, and the facts that move it on) and its next *deadline*.

Polls repeat themselves, so a view is compared with the one shown before on its step, situation
and deadline only, and those hold nothing volatile. The engine's waiting texts
(``Progress.waiting``) are fixed phrases; the facts behind them are normalized: a key whose
reported use changed in the latest pass is "still in use", otherwise "quiet since T" (T its
last change, which stays put while it is quiet); deadlines are absolute times. The time spent
in a step and "deadline in ..." change every poll and are only ever drawn on the live line.

Off a terminal a line is printed only when the step, situation or deadline changes. On a
terminal (``isatty()``) the current view is one live line rewritten in place with ``\\r`` (step,
time in it, next deadline), like ``kubectl rollout status``; a change ends that line with a
newline and starts the next one, and :meth:`Follower.close` ends the last.

Locally the view is built by :class:`LocalWatch`, the driver's report callback, which reads the
key's state record after each pass (one Vault read per poll) for the use marks and deadlines.
Through a daemon (``--daemon``) it comes from the ``/v1/status`` row: the state word and any
deadline passed (the row carries no deadlines or use marks).

``--timeout DURATION`` (with ``--wait``) gives up waiting, exit 1, and leaves the rotation as it
is: it is neither stalled nor aborted, and the message says how to follow it. It is checked
between passes (on the engine's clock locally): a pass itself, which may wait ``usage_lag``
after verifying a new key, is never cut short.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from vault_rotator.engine import reasons
from vault_rotator.engine.status import derive_state
from vault_rotator.errors import ConfigError, StoreError
from vault_rotator.policy import format_duration, parse_duration

if TYPE_CHECKING:
    from vault_rotator.engine.context import Progress
    from vault_rotator.engine.engine import Engine
    from vault_rotator.engine.state import StateRecord
    from vault_rotator.policy import KeyPolicy


def add_wait_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=what)
    parser.add_argument(
        "--timeout",
        metavar="DURATION",
        type=_duration,
        default=None,
        help="with --wait: give up waiting after this long (exit 1; the rotation goes on)",
    )


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def wait_timeout(args: argparse.Namespace, *, wait: bool) -> float | None:
    """``--timeout`` in seconds (None without it); a usage error without ``--wait``."""
    timeout: float | None = getattr(args, "timeout", None)
    if timeout is not None and not wait:
        raise ConfigError("--timeout needs --wait")
    return timeout


@dataclass(frozen=True, slots=True)
class View:
    """A rotation as seen at one poll (nothing volatile in it)."""

    ref: str
    rotation_id: str | None
    step: str
    situation: str = ""
    deadline: tuple[str, float] | None = None  # (what, epoch seconds)

    def line(self) -> str:
        """The line printed off a terminal."""
        deadline = f"{self.deadline[0]} {_at(self.deadline[1])}" if self.deadline else ""
        return self._text(self.step, deadline)

    def live_line(self, in_step: float, now: float) -> str:
        """The live line on a terminal: with the time in this step and the deadline's distance."""
        deadline = ""
        if self.deadline is not None:
            left = self.deadline[1] - now
            deadline = f"{self.deadline[0]} in {_span(left)}" if left > 0 else "deadline passed"
        return self._text(f"{self.step} {_span(in_step)}", deadline)

    def _text(self, step: str, deadline: str) -> str:
        head = f"{self.ref}: rotation {self.rotation_id}" if self.rotation_id else self.ref
        detail = "; ".join(part for part in (self.situation, deadline) if part)
        return f"{head}: {step}" + (f": {detail}" if detail else "")


def _at(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    """A short elapsed time: 42s, 3m05s, 2h03m, 1d02h."""
    whole = max(0, int(seconds))
    for size, unit, sub, sub_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m")):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // sub:02d}{sub_unit}"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


class Follower:
    """Shows views: a line per change, or one live line on a terminal."""

    def __init__(
        self, clock: Callable[[], float], out: TextIO | None = None, live: bool | None = None
    ) -> None:
        self.clock = clock
        self.out = out if out is not None else sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._shown: View | None = None
        self._since = 0.0
        self._width = 0

    def show(self, view: View) -> None:
        now = self.clock()
        changed = self._shown is None or _key(view) != _key(self._shown)
        if changed:
            self._end_line()
            self._since = now
        self._shown = view
        if self.live:
            text = view.live_line(now - self._since, now)[: shutil.get_terminal_size().columns - 1]
            self.out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif changed:
            self.out.write(view.line() + "\n")
        self.out.flush()

    def close(self) -> None:
        """End the live line (if any), so what follows starts on its own line."""
        self._end_line()
        self._shown = None

    def _end_line(self) -> None:
        if self.live and self._shown is not None:
            self.out.write("\n")
            self.out.flush()
        self._width = 0


def _key(view: View) -> tuple[str, str, tuple[str, float] | None]:
    return view.step, view.situation, view.deadline


# -- local: the driver's report callback ------------------------------------------------------


class LocalWatch:
    """The ``report`` callback of a local ``drive``: reads the key's record after each pass."""

    def __init__(self, engine: Engine, policy: KeyPolicy, follower: Follower | None = None):
        self.engine = engine
        self.policy = policy
        self.follower = follower or Follower(engine.clock)
        self._polled_at = engine.clock()

    def __call__(self, progress: Progress) -> None:
        if progress.rotation_id is None or progress.finished or progress.stalled is not None:
            return  # the caller prints how it ended
        now = self.engine.clock()
        try:
            record: StateRecord | None = self.engine.read(self.policy)
        except StoreError:
            record = None  # a view from the pass alone; the rotation itself is not disturbed
        self.follower.show(local_view(progress, record, now=now, polled_at=self._polled_at))
        self._polled_at = now

    def close(self) -> None:
        self.follower.close()


def local_view(
    progress: Progress, record: StateRecord | None, *, now: float, polled_at: float
) -> View:
    """The view of a pass's progress plus the record it left (``polled_at``: the pass before)."""
    rot = record.rotation if record is not None else None
    if record is None or rot is None or rot.id != progress.rotation_id:
        return View(progress.ref, progress.rotation_id, progress.phase, progress.waiting)
    step = derive_state(record, now)[0]
    facts = [progress.waiting.removeprefix(f"{step}: ")]  # "aborting: aborting: ..." reads badly
    draining = rot.pickup_at is not None and rot.old_disabled_at is None and not rot.old_deleted
    if record.phase == reasons.PUBLISHED and draining:
        facts.append(_use("old key", rot.old_mark_since, polled_at))
    if record.phase == reasons.ABORTING and rot.republished_version and not rot.new_deleted:
        facts.append(_use("new key", rot.new_mark_since, polled_at))
    situation = "; ".join(fact for fact in facts if fact)
    return View(progress.ref, rot.id, step, situation, next_deadline(record))


def _use(key: str, since: float | None, polled_at: float) -> str:
    """A key's use, normalized: "still in use" if it changed in the latest pass."""
    if since is None:
        return ""
    if since > polled_at:
        return f"{key} still in use"
    return f"{key} quiet since {_at(since)}"


def next_deadline(record: StateRecord) -> tuple[str, float] | None:
    """The deadline the rotation is heading for (a stall if it passes), if any."""
    rot = record.rotation
    if rot is None:
        return None
    if record.phase == reasons.PUBLISHED and not rot.old_deleted:
        if rot.pickup_at is None and rot.pickup_deadline is not None:
            return "pickup deadline", rot.pickup_deadline
        if rot.pickup_at is not None and rot.old_disabled_at is None and rot.drain_deadline:
            return "drain deadline", rot.drain_deadline
    if record.phase == reasons.ABORTING and not rot.new_deleted and rot.abort_deadline:
        return "abort deadline", rot.abort_deadline
    return None


# -- through a daemon: its status rows ---------------------------------------------------------


def remote_view(ref: str, row: Mapping[str, Any]) -> View:
    """The view of a ``/v1/status`` row."""
    passed = row.get("deadlines_passed") or []
    facts = ["emergency"] if row.get("mode") == reasons.EMERGENCY else []
    if passed:
        facts.append("deadline passed: " + ", ".join(str(p) for p in passed))
    return View(ref, row.get("rotation_id"), str(row.get("state")), "; ".join(facts))


def gave_up(ref: str, where: str, timeout: float, follow: str) -> str:
    """The line printed when ``--timeout`` runs out."""
    return (
        f"{ref}: still {where} after --timeout {format_duration(timeout)}; the rotation stays "
        f"in flight (not stalled): follow it with {follow}"
    )
