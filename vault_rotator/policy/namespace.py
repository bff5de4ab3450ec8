"""One namespace per deployment: which Vault paths a policy may name, in one file or across files.

A deployment keeps everything of its own under ``<kv_mount>/<state_prefix>/``: state records,
pending values, freezes, leases, emergency requests, the change signal, and the consumers' ack
folders, which consumer tokens may write. Policy files that share one ``kv_mount`` and
``state_prefix`` share that namespace (the account lease and the change signal rely on it).
Within one KV mount:

* no ``secret_path`` or ``provider.management_key.path`` lies inside a ``state_prefix``
  (equal to it or below it): a consumer token allowed to write an ack folder could replace the
  key another environment's apps load, and a consumer policy would grant read on a state record;
* no ``state_prefix`` lies inside another, different one: the inner deployment's ack folders
  would be writable paths inside the outer one's namespace.

And a ``secret_path`` never starts with ``data/`` or ``<kv_mount>/data/``: paths are relative to
the mount, and the KV v2 API adds ``<kv_mount>/data/`` itself.

:mod:`~vault_rotator.policy.rules` applies these within a file, :mod:`~vault_rotator.policy.loader`
across files (``validate``, the daemon's load and its reload), and
:func:`~vault_rotator.policy.vaultacl.consumer_rules` once more on what it grants, for policies
built without the validator.
"""

from __future__ import annotations


def inside(path: str, prefix: str) -> bool:
    """True when the (normalized) Vault path ``path`` is ``prefix`` or lies below it."""
    return path == prefix or path.startswith(prefix + "/")


def enclosing(path: str) -> list[str]:
    """Every prefix ``path`` is :func:`inside`: itself and each ancestor (``a/b`` -> ``a``,
    ``a/b``), so a lookup costs the path's segments, not the number of prefixes."""
    parts = path.split("/")
    return ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]


def repeats_the_mount(path: str, mount: str) -> bool:
    """True when a secret path starts with the API's ``data/`` (or ``<mount>/data/``), which
    the KV v2 client adds again: ``secret/data/x`` in mount ``secret`` is read at
    ``secret/data/secret/data/x``."""
    return path.startswith("data/") or path.startswith(f"{mount}/data/")


def meant_path(path: str, mount: str) -> str:
    """What the secret path was probably meant to be: ``secret/data/x`` -> ``x``."""
    return path.removeprefix(f"{mount}/").removeprefix("data/")
