"""`vault-rotator run` caps glibc's malloc arenas at start, unless the operator set them, and
runs the cyclic garbage collector less often."""

from __future__ import annotations

import ctypes.util
import gc

import pytest

from vault_rotator.daemon import memory
from vault_rotator.testing.clock import FakeClock


def test_the_arenas_are_capped_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    glibc = ctypes.util.find_library("c") == "libc.so.6"
    assert memory.limit_arenas() is glibc


def test_an_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas() is False


def test_no_c_library_found_is_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: None)
    assert memory.limit_arenas() is False


def test_the_collector_runs_less_often_than_pythons_default() -> None:
    before = gc.get_threshold()
    try:
        memory.tune_gc()
        assert gc.get_threshold() == memory.GC_THRESHOLDS
        assert gc.get_threshold()[0] > 700 * 10
    finally:
        gc.set_threshold(*before)


def test_the_heap_is_trimmed_at_most_once_per_interval() -> None:
    """The daemon calls the trimmer after every tick; it hands free heap memory back at most
    once per TRIM_EVERY_S (a tick of a thousand accounts would otherwise trim a thousand
    times a poll)."""
    clock = FakeClock()
    trimmer = memory.HeapTrimmer(every=10.0, clock=clock)
    glibc = ctypes.util.find_library("c") == "libc.so.6"
    for _ in range(5):
        trimmer()
    assert trimmer.trims == (1 if glibc else 0)
    clock.advance(10)
    trimmer()
    assert trimmer.trims == (2 if glibc else 0)


def test_no_c_library_means_no_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: None)
    trimmer = memory.HeapTrimmer()
    trimmer()
    assert trimmer.trims == 0
