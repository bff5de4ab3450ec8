"""Secret-store ports and the Vault adapter: the engine sees only :mod:`.port`."""
