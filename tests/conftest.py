"""Shared fixtures: a real Vault (OpenBao) server and the ARouter emulator.

Hypothesis profiles: ``ci`` (the default: derandomized, a fixed number of examples, so the
property tests take the same bounded time on every run) and ``long`` (random, many examples,
for a soak on a developer's machine). Pick one with ``VAULT_ROTATOR_HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Unpack

import pytest
import structlog
from hypothesis import HealthCheck, settings
from world import (
    LIVE_CONFIG,
    MANAGEMENT_KEY,
    EmulatorFactory,
    EmulatorOptions,
    LiveEnv,
    World,
    WorldFactory,
    calling_app,
)

from vault_rotator.emulator import Emulator
from vault_rotator.engine.session import StateStore
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer, vault_server

HYPOTHESIS_PROFILE_ENV = "VAULT_ROTATOR_HYPOTHESIS_PROFILE"
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=False,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", max_examples=2000, deadline=None, database=None)
_profile = os.environ.get(HYPOTHESIS_PROFILE_ENV, "ci")
if _profile not in ("ci", "long"):
    raise pytest.UsageError(f"{HYPOTHESIS_PROFILE_ENV}={_profile!r}: use ci or long")
settings.load_profile(_profile)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Logging configured by a test (the CLI's main does it) ends with the test: the next one
    must not write to a stream that capsys has since closed."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def vault() -> Iterator[VaultServer]:
    """A real Vault API: $VAULT_ADDR if set, else a Docker container, else `bao server -dev`."""
    with vault_server() as server:
        yield server


@pytest.fixture
def make_emulator() -> Iterator[EmulatorFactory]:
    """Start in-process emulators with the given options; all are stopped after the test."""
    started: list[Emulator] = []

    def factory(**options: Unpack[EmulatorOptions]) -> Emulator:
        options.setdefault("management_keys", [MANAGEMENT_KEY])
        emulator = Emulator(**options)
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
def world_for(
    vault: VaultServer, make_emulator: EmulatorFactory, clock: FakeClock
) -> Iterator[WorldFactory]:
    """Build a World for a dialect (and emulator/policy options); closed after the test."""
    worlds: list[World] = []

    def build(
        dialect: str = "c",
        emulator_options: EmulatorOptions | None = None,
        emulator: Emulator | None = None,
        **policy: Any,
    ) -> World:
        options: EmulatorOptions = {"dialect": dialect, "clock": clock, **(emulator_options or {})}
        emu = emulator or make_emulator(**options)
        world = World(vault, emu, clock, **policy)
        worlds.append(world)
        return world

    yield build
    for world in worlds:
        world.close()


@pytest.fixture
def live_env(vault: VaultServer, tmp_path: Path) -> Iterator[LiveEnv]:
    """One key ``<env>/app`` served from Vault, its management key in Vault, an app every 0.1 s."""
    env = f"l{uuid.uuid4().hex[:8]}"
    emulator = Emulator(dialect="c", management_keys=[MANAGEMENT_KEY]).start()
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
    old_id, value = emulator.seed_key("original", allowed_providers=["openai"])
    kv.write(f"{env}/app", {"api_key": value, "key_id": old_id}, cas=0)
    (tmp_path / "live.yaml").write_text(LIVE_CONFIG.format(env=env, base_url=emulator.base_url))
    store = StateStore(kv, f"{env}/vault-rotator")
    with calling_app(kv, emulator, f"{env}/app") as statuses:
        yield LiveEnv(env, tmp_path, emulator, kv, store, old_id, statuses)
    emulator.stop()
    conn.close()
