"""The Vault adapter of the :mod:`vault_rotator.ports.kv` port (the only hvac user)."""
