"""Shared fixtures: a real Vault (OpenBao) server and the ARouter emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from world import World

from vault_rotator.emulator import Emulator
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer, vault_server

MANAGEMENT_KEY = "lr_mgmt_test_0123456789abcdef"


@pytest.fixture(scope="session")
def vault() -> Iterator[VaultServer]:
    """A real Vault API: $VAULT_ADDR if set, else a Docker container, else `bao server -dev`."""
    with vault_server() as server:
        yield server


EmulatorFactory = Callable[..., Emulator]


@pytest.fixture
def make_emulator() -> Iterator[EmulatorFactory]:
    """Start in-process emulators with the given options; all are stopped after the test."""
    started: list[Emulator] = []

    def factory(**options: object) -> Emulator:
        options.setdefault("management_keys", [MANAGEMENT_KEY])
        emulator = Emulator(**options)  # type: ignore[arg-type]
        emulator.start()
        started.append(emulator)
        return emulator

    yield factory
    for emulator in started:
        emulator.stop()


@pytest.fixture(params=["a", "b", "c"])
def dialect(request: pytest.FixtureRequest) -> str:
    """Each ARouter dialect in turn."""
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock shared by the engine and the emulator."""
    return FakeClock()


@pytest.fixture
def world_for(vault: VaultServer, make_emulator, clock: FakeClock) -> Iterator:  # type: ignore[no-untyped-def, type-arg]
    """Build a World for a dialect (and emulator/policy options); closed after the test."""
    worlds: list[World] = []

    def build(
        dialect: str = "c", emulator_options: dict | None = None, emulator=None, **policy
    ) -> World:  # type: ignore[type-arg, no-untyped-def]
        emu = emulator or make_emulator(dialect=dialect, clock=clock, **(emulator_options or {}))
        world = World(vault, emu, clock, **policy)
        worlds.append(world)
        return world

    yield build
    for world in worlds:
        world.close()
