"""The daemon's building blocks (import the modules; their main functions share their names).

Modules::

    due          is a key due? pure functions over policy, state values and ``now``
    freeze       freezes of environments and keys, one check-and-set secret in Vault
    notify       webhook notifications from a background thread, bounded and redacted
    refs         ``ENV/NAME`` refs, and the policy of a key whose rotation is in flight
    status_rows  every key's status row: ``GET /v1/status`` and ``vault-rotator status``

The CLI verbs (:mod:`vault_rotator.commands`) build on these; the daemon never imports them.
"""
