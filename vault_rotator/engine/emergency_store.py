"""Where environment-wide emergency requests live: one per environment, by check-and-set.

``<kv_mount>/<state_prefix>/emergency/<env>`` (:func:`~.emergency.emergency_path`), through the
:class:`~vault_rotator.ports.kv.KvStore` port. Writers (a CLI and a daemon may both run rounds
of one request) read, change and write by check-and-set, and read again when another won.
"""

from __future__ import annotations

from collections.abc import Callable

from vault_rotator.engine.emergency import EmergencyRequest, emergency_path, resumed
from vault_rotator.errors import CasConflictError
from vault_rotator.ports.kv import KvStore

MAX_CAS_ATTEMPTS = 5


class EmergencyStore:
    """Reads and writes the requests of one KV mount and state prefix, by check-and-set."""

    def __init__(self, kv: KvStore, prefix: str) -> None:
        self.kv = kv
        self.prefix = prefix.strip("/")

    def where(self, env: str) -> str:
        return f"{self.kv.mount}/{emergency_path(self.prefix, env)}"

    def read(self, env: str) -> EmergencyRequest | None:
        """The environment's current request, or None when there is none."""
        return self._read(env)[0]

    def _read(self, env: str) -> tuple[EmergencyRequest | None, int]:
        got = self.kv.read(emergency_path(self.prefix, env))
        if got is None:
            return None, 0
        if got.deleted:
            return None, got.version
        return EmergencyRequest.from_dict(got.data, self.where(env), got.version), got.version

    def update(
        self,
        env: str,
        change: Callable[[EmergencyRequest | None], EmergencyRequest | None],
    ) -> EmergencyRequest | None:
        """Read, change, write by check-and-set; read again and retry when another writer won.

        ``change`` returns the request to save, or None to leave the stored one as it is.
        """
        for _ in range(MAX_CAS_ATTEMPTS):
            current, version = self._read(env)
            wanted = change(current)
            if wanted is None:
                return current
            try:
                saved = self.kv.write(
                    emergency_path(self.prefix, env), wanted.to_dict(), cas=version
                )
            except CasConflictError:
                continue
            return wanted.evolve(version=saved)
        raise CasConflictError(
            f"{self.where(env)} kept changing under {MAX_CAS_ATTEMPTS} check-and-set attempts"
        )

    def open(
        self,
        env: str,
        *,
        fresh: Callable[[], EmergencyRequest],
        revoke_old_now: bool,
        now: float,
    ) -> tuple[EmergencyRequest, bool]:
        """The environment's open request, resumed (True), or ``fresh()`` saved (False)."""
        was_open: list[bool] = []

        def change(current: EmergencyRequest | None) -> EmergencyRequest:
            was_open[:] = [current is not None and not current.complete]
            if current is not None and not current.complete:
                return resumed(current, revoke_old_now=revoke_old_now, now=now)
            return fresh()

        saved = self.update(env, change)
        assert saved is not None
        return saved, was_open[0]
