"""The domain's ports: what the engine needs from a secret store and from a key provider.

:mod:`.kv` (``KvStore``, a KV v2 mount) and :mod:`.provider` (``KeyProvider``, one provider
account, and the values it speaks in). The engine and the policies depend on these; the
adapters (:mod:`vault_rotator.store.vault`, :mod:`vault_rotator.provider.arouter`) implement
them and never import the engine. ``make lint`` enforces this (import-linter).
"""
