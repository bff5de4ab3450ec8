"""GET /v1/status on a daemon whose drawing is costly (thousands of keys, a busy emergency):
callers get the last drawing at once while the next is drawn behind them, paced by its cost;
an emergency view's ETA counts from the answer's moment. The drawing itself is stubbed here
(tests/test_status_held.py draws real books against OpenBao)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from vault_rotator.daemon import control as control_module
from vault_rotator.daemon.control import Control, _Snapshot
from vault_rotator.errors import StoreUnavailableError
from vault_rotator.secret import Secret


class RootAuth:
    def __init__(self) -> None:
        self.asked = 0
        self.looked_up = 0

    def accessor_of(self, token: Secret) -> str:
        self.looked_up += 1
        return "accessor"

    def capabilities_of(self, token: Secret, paths: list[str]) -> dict[str, frozenset[str]]:
        self.asked += 1
        return {path: frozenset({"root"}) for path in paths}


class FakeDaemon:
    generation = 1


def snapshot(n: int, *, took: float, age: float = 0.0, eta: float | None = None) -> _Snapshot:
    row = {"key": "prod/app", "state": "idle", "drawing": n}
    view = {"env": "prod", "eta_s": eta, "settled": False}
    return _Snapshot(
        at=time.monotonic() - age,
        drawn_at=1_800_000_000.0 + n,
        took=took,
        generation=1,
        paths={"prod/app": "secret/data/s/control/prod/app"},
        env_paths={"prod": "secret/data/s/control/prod"},
        rows=[("prod/app", row)],
        encoded=[json.dumps(row, sort_keys=True).encode()],
        views=[("prod", view)],
        unreadable=[],
    )


def status(control: Control) -> dict[str, Any]:
    answer = control.handle("GET", "/v1/status", "tok", {})
    assert answer.status == 200
    assert answer.payload is not None
    return dict(json.loads(answer.payload))


def test_a_costly_drawing_is_redone_behind_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    release = threading.Event()

    def draw(_daemon: Any, _rows: Any) -> _Snapshot:
        if drawn:  # the background drawing waits until the test has asked once more
            assert release.wait(10)
        drawn.append(len(drawn) + 1)
        return snapshot(drawn[-1], took=0.5)

    monkeypatch.setattr(control_module, "_draw", draw)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    monkeypatch.setattr(control_module, "STATUS_PACE", 0.0)
    control = Control(FakeDaemon(), RootAuth())  # type: ignore[arg-type]
    assert status(control)["keys"][0]["drawing"] == 1  # the first is drawn in the call
    started = time.monotonic()
    assert status(control)["keys"][0]["drawing"] == 1  # stale: answered with the last one
    assert time.monotonic() - started < 5  # ... at once, not after a drawing
    release.set()
    deadline = time.monotonic() + 10
    while status(control)["keys"][0]["drawing"] == 1:
        assert time.monotonic() < deadline, "the drawing behind the callers never landed"
        time.sleep(0.01)
    assert drawn[:2] == [1, 2]


def quick_drawings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Drawings that take no time, numbered from 1: the list of those drawn so far."""
    drawn: list[int] = []

    def draw(_daemon: Any, _rows: Any) -> _Snapshot:
        drawn.append(len(drawn) + 1)
        return snapshot(drawn[-1], took=0.01)

    monkeypatch.setattr(control_module, "_draw", draw)
    return drawn


def test_a_cheap_drawing_is_redone_in_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small daemon's drawing is quick: a caller past the freshness gets a new one."""
    quick_drawings(monkeypatch)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    control = Control(FakeDaemon(), RootAuth())  # type: ignore[arg-type]
    assert [status(control)["keys"][0]["drawing"] for _ in range(3)] == [1, 2, 3]


def test_a_quick_drawing_of_many_keys_is_still_redone_behind_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A daemon of more than STATUS_SYNC_KEYS keys: its drawing, however quick the last one
    was, is redone behind the callers (one that happened to be quick was redone in a call
    while the daemon was busy, and the call took 4 s)."""
    drawn = quick_drawings(monkeypatch)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    monkeypatch.setattr(control_module, "STATUS_SYNC_KEYS", 0)  # one key is "many" here
    control = Control(FakeDaemon(), RootAuth())  # type: ignore[arg-type]
    assert status(control)["keys"][0]["drawing"] == 1  # the first drawing: in the call
    assert status(control)["keys"][0]["drawing"] == 1  # the last one, at once
    deadline = time.monotonic() + 10
    while len(drawn) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(drawn) >= 2  # ... while the next was drawn behind the caller


def test_an_emergency_eta_counts_from_the_answer_not_the_drawing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(control_module, "_draw", lambda *_a: snapshot(1, took=3, age=30, eta=100))
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 3600.0)
    control = Control(FakeDaemon(), RootAuth())  # type: ignore[arg-type]
    control._status_shot = snapshot(1, took=3, age=30, eta=100)
    body = status(control)
    (view,) = body["emergencies"]
    assert 69 <= view["eta_s"] <= 70.1
    assert body["as_of"] == 1_800_000_001.0


def test_a_callers_capabilities_are_asked_once_per_drawing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn = quick_drawings(monkeypatch)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 3600.0)
    auth = RootAuth()
    control = Control(FakeDaemon(), auth)  # type: ignore[arg-type]
    status(control)
    status(control)
    assert (len(drawn), auth.asked) == (1, 1)
    other = control.handle("GET", "/v1/status", "another-token", {})
    assert other.status == 200
    assert auth.asked == 2  # another caller: asked for itself
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    status(control)
    assert (len(drawn), auth.asked) == (2, 3)  # a new drawing: asked again


def test_a_drawing_that_fails_behind_the_callers_leaves_the_last_one_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed background drawing is one warning: callers keep getting the last drawing,
    and the drawer goes on (the next drawing lands)."""
    calls: list[int] = []

    def draw(_daemon: Any, _rows: Any) -> _Snapshot:
        calls.append(1)
        if len(calls) == 2:
            raise StoreUnavailableError("Vault at http://127.0.0.1:1: connection refused")
        return snapshot(len(calls), took=0.5)

    monkeypatch.setattr(control_module, "_draw", draw)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    monkeypatch.setattr(control_module, "STATUS_PACE", 0.0)
    control = Control(FakeDaemon(), RootAuth())  # type: ignore[arg-type]
    with capture_logs() as logs:
        assert status(control)["keys"][0]["drawing"] == 1
        deadline = time.monotonic() + 10
        while status(control)["keys"][0]["drawing"] != 3:
            assert time.monotonic() < deadline, "the drawer stopped after a failed drawing"
            time.sleep(0.01)
    failed = [e for e in logs if e["event"].startswith("status drawing failed")]
    assert [e["error"] for e in failed] == ["Vault at http://127.0.0.1:1: connection refused"]


def test_a_callers_capabilities_on_the_same_keys_are_reused_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drawings of the same keys and requests (a daemon's drawings between reloads): the
    caller's capabilities are asked once per STATUS_CAPS_S, not once per drawing (10,000
    paths each time); its token is still looked up at every call."""
    paths = {"prod/app": "secret/data/s/control/prod/app"}
    drawn: list[int] = []

    def draw(_daemon: Any, _rows: Any) -> _Snapshot:
        drawn.append(len(drawn) + 1)
        shot = snapshot(drawn[-1], took=0.01)
        return dataclasses.replace(shot, paths=paths)

    monkeypatch.setattr(control_module, "_draw", draw)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    auth = RootAuth()
    control = Control(FakeDaemon(), auth)  # type: ignore[arg-type]
    status(control)
    status(control)
    assert (len(drawn), auth.asked, auth.looked_up) == (2, 1, 2)
    monkeypatch.setattr(control_module, "STATUS_CAPS_S", 0.0)
    status(control)
    assert (len(drawn), auth.asked) == (3, 2)


def test_a_callers_capabilities_are_asked_again_behind_it_before_they_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past half of STATUS_CAPS_S, a call gets the known capabilities at once while they are
    asked again in the background (Vault weighing 10,000 paths held the call for seconds);
    the answer asked behind serves the next calls."""
    paths = {"prod/app": "secret/data/s/control/prod/app"}
    drawn: list[int] = []

    def draw(_daemon: Any, _rows: Any) -> _Snapshot:
        drawn.append(len(drawn) + 1)
        return dataclasses.replace(snapshot(drawn[-1], took=0.01), paths=paths)

    class SlowAuth(RootAuth):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def capabilities_of(self, token: Secret, paths: list[str]) -> dict[str, frozenset[str]]:
            if self.asked:  # the first answer at once; the one asked behind waits
                assert self.release.wait(10)
            return super().capabilities_of(token, paths)

    monkeypatch.setattr(control_module, "_draw", draw)
    monkeypatch.setattr(control_module, "STATUS_FRESH_S", 0.0)
    auth = SlowAuth()
    control = Control(FakeDaemon(), auth)  # type: ignore[arg-type]
    status(control)
    monkeypatch.setattr(control_module, "STATUS_CAPS_S", 4.0)
    time.sleep(2.1)  # past half of it
    started = time.monotonic()
    status(control)  # answered with the known capabilities while they are asked again
    status(control)  # one question behind at a time
    assert time.monotonic() - started < 5
    auth.release.set()
    deadline = time.monotonic() + 10
    while auth.asked < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert auth.asked == 2
