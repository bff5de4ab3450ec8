"""Provider ports and adapters: the engine sees only :mod:`vault_rotator.provider.port`."""
