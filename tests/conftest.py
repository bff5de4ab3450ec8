"""Shared fixtures: a real Vault (OpenBao) server and the ARouter emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from vault_rotator.emulator import Emulator
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
