"""The ARouter adapter of the :mod:`vault_rotator.ports.provider` port (httpx stays in here)."""
