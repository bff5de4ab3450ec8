"""Test helpers that ship with vault-rotator: a real Vault server and a real Vault Agent.

Users' own tests can use them too, as they use the ARouter emulator.
"""
