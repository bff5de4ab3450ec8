"""A faithful, fault-injecting fake of ARouter's key-management and inference API.

Like moto for AWS: tests, the demo and users' own test suites run against it. It serves one
of the spec's three dialects (``/work/shared/spec/arouter-api.md``: A, B or C) over real HTTP,
injects faults on demand, and reports what really happened (keys, uses, requests)::

    from vault_rotator.emulator import Emulator

    with Emulator(dialect="c", management_keys=["lr_mgmt_example"]) as emu:
        key_id, value = emu.seed_key("production")
        emu.call(value, "chat")                 # a consumer uses the key
        emu.set_fault("create", status=503, count=1)
        ...                                     # point the client at emu.base_url

Run it as a process with ``vault-rotator emulator --port 8790 --management-key ...``; the
``/_emulator/`` routes (module ``inspection``) then inspect and drive it over HTTP.

Modules: ``emulator`` (the facade), ``app`` (routing), ``management``, ``inference`` and
``inspection`` (handlers), ``dialects`` (JSON shapes), ``fields`` (request validation),
``store`` and ``usage`` (keys, ordering, lagged metering, persistence), ``faults``,
``recorder``, ``server`` (HTTP), ``clock``, ``model``, ``wire``, ``cli``. Decisions where the
spec is silent are written in each module's docstring.
"""

from vault_rotator.emulator.emulator import Emulator

__all__ = ["Emulator"]
