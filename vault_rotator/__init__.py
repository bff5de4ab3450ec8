"""vault-rotator: zero-downtime rotation of ARouter API keys kept in Vault / OpenBao."""

__version__ = "0.1.0"
