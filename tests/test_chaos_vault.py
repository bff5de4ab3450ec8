"""The chaos run's Vault faults (``make chaos`` runs them all), a fast subset: on a raft
``bao server`` of the run's own, Vault stopped and restarted (it comes back sealed, then is
unsealed), the daemon's AppRole token revoked mid-rotation, and one key's consumer secret
denied to the rotator."""

from __future__ import annotations

import pytest

from vault_rotator.testing import chaos

SUBSET = ("stop", "revoke-approle", "deny")


@pytest.mark.slow
def test_vault_faults_mid_rotation_lose_nothing_and_readyz_follows_vault() -> None:
    """/readyz is 503 while Vault is stopped and sealed and 200 after; AppRole logs in again
    after its token is revoked; a denied key reports it while the others rotate; every
    rotation hit completes, and every must-be-zero figure is 0."""
    figures = chaos.run(0, seed=3, keys=2, provider_faults=False, vault_faults=SUBSET)
    assert figures.failures() == [], (figures.line(), figures.notes)
    assert figures.vault_faults == len(SUBSET)
    assert (figures.readyz_503_seen, figures.readyz_503_expected) == (1, 1)
    assert figures.relogins >= 1
    assert figures.vault_fault_rotations >= len(SUBSET)
    assert figures.consumer_ok > 100
