"""The daemon's building blocks (import the modules; their main functions share their names).

Modules::

    due      is a key due? pure functions over policy, state values and ``now``
    freeze   freezes of environments and keys, one check-and-set secret in Vault
    notify   webhook notifications from a background thread, bounded and redacted
"""
