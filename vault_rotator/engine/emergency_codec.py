"""The stored form of an environment-wide emergency request: a small header and key shards.

One JSON document holding every key cannot be saved on a normally configured OpenBao beyond a
few hundred keys (a listener's ``max_request_json_strings`` is 1000 by default, and raft's
``max_entry_size`` 1 MiB). Schema 2 therefore stores a request as

* its **header** at ``<kv_mount>/<state_prefix>/emergency/<env>`` (the request's path, as
  before)::

    {"schema": 2, "id": "mab12c3d4e", "env": "production", "requested_at": 1700000000.0,
     "by": "alice@host", "trigger": "cli", "revoke_old_now": false,
     "shards": 50, "key_count": 10000,
     "settled_at": null, "completed_at": null, "notified_at": null}

* and its keys in **shards** at ``<kv_mount>/<state_prefix>/emergency/<env>/<id>/<n>``
  (``n`` from 0; the key names sorted, :data:`SHARD_KEYS` per shard, so a key's shard never
  changes), each one record whose per-key progress is packed in one JSON string::

    {"schema": 2, "request_id": "mab12c3d4e", "shard": 0,
     "keys": "{\"backend\":[\"done\",1700000050.0,1700000000.0,\"mab13...\",
               \"succeeded-emergency\"],...}"}

  where each key's list is ``[step, at, since, rotation_id, outcome, detail, prior]`` with
  ``""`` for an empty field and trailing empty fields left out; ``detail`` is cut to
  :data:`MAX_DETAIL` characters. A shard record is thus a handful of JSON strings and, at 200
  keys, tens of KiB (measured in docs/emergency.md), whatever the key count.

The shards sit under the request's id, so a new request never touches an earlier one's and a
reader never mixes two requests. Every record is written by check-and-set: a new request's
shards first (``cas=0``), then its header (the header's check-and-set picks one winner among
concurrent requesters); a round writes only the shards that changed, then the header if it
changed.

Schema 1 (the request's keys inline in one document, see :mod:`.emergency`) is still read, and
written back as schema 2 at the next change. A newer schema is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from vault_rotator.engine.emergency import EmergencyRequest, KeyEntry, Step
from vault_rotator.errors import StoreError
from vault_rotator.policy.build import MAX_KEYS

SCHEMA_VERSION = 2
SHARD_KEYS = 200  # keys per shard record
MAX_SHARDS = -(-MAX_KEYS // SHARD_KEYS)  # an environment's keys (one policy file) at most
MAX_DETAIL = 300  # characters of a key's detail kept in the store
_ENTRY_FIELDS = ("rotation_id", "outcome", "detail", "prior")


def shard_path(request_path: str, request_id: str, shard: int) -> str:
    """Where shard ``shard`` of a request lives (its request's path + ``/<id>/<n>``)."""
    return f"{request_path}/{request_id}/{shard}"


def shard_names(request: EmergencyRequest) -> list[list[str]]:
    """The request's key names, sorted, cut in shards of :data:`SHARD_KEYS`."""
    names = sorted(request.keys)
    return [names[i : i + SHARD_KEYS] for i in range(0, len(names), SHARD_KEYS)]


def header_doc(request: EmergencyRequest) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "id": request.id,
        "env": request.env,
        "requested_at": request.requested_at,
        "by": request.by,
        "trigger": request.trigger,
        "revoke_old_now": request.revoke_old_now,
        "shards": len(shard_names(request)),
        "key_count": len(request.keys),
        "settled_at": request.settled_at,
        "completed_at": request.completed_at,
        "notified_at": request.notified_at,
    }


def shard_docs(request: EmergencyRequest) -> list[dict[str, Any]]:
    return [shard_doc(request, index, names) for index, names in enumerate(shard_names(request))]


def shard_doc(request: EmergencyRequest, index: int, names: Sequence[str]) -> dict[str, Any]:
    """Shard ``index`` of ``request`` (``names``: its keys, :func:`shard_names`)."""
    return {
        "schema": SCHEMA_VERSION,
        "request_id": request.id,
        "shard": index,
        "keys": json.dumps(
            {name: _packed(request.keys[name]) for name in names}, separators=(",", ":")
        ),
    }


def as_stored(request: EmergencyRequest) -> EmergencyRequest:
    """The request as reading back its header and shards gives it (numbers as floats, a
    detail cut to MAX_DETAIL, empty texts as None, keys in name order): what a writer
    keeps of what it saved, instead of reading and decoding it again."""
    keys = {name: _entry_as_stored(request.keys[name]) for name in sorted(request.keys)}

    def number(value: float | None) -> float | None:
        return None if value is None else float(value)

    return dataclasses.replace(
        request,
        requested_at=float(request.requested_at),
        keys=keys,
        settled_at=number(request.settled_at),
        completed_at=number(request.completed_at),
        notified_at=number(request.notified_at),
    )


def _entry_as_stored(entry: KeyEntry) -> KeyEntry:
    return KeyEntry(
        step=entry.step,
        at=float(entry.at),
        since=float(entry.since),
        rotation_id=entry.rotation_id or None,
        outcome=entry.outcome or None,
        detail=(entry.detail or "")[:MAX_DETAIL],
        prior=entry.prior or None,
    )


def _packed(entry: KeyEntry) -> list[Any]:
    tail = [getattr(entry, f) or "" for f in _ENTRY_FIELDS]
    tail[2] = tail[2][:MAX_DETAIL]
    while tail and tail[-1] == "":
        tail.pop()
    return [entry.step.value, entry.at, entry.since, *tail]


# -- reading ------------------------------------------------------------------------------


def schema_of(data: Mapping[str, Any], where: str) -> int:
    """The record's schema (1 or 2); a newer one is refused as such, anything else malformed."""
    schema = data.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA_VERSION:
        raise StoreError(
            f"emergency request at {where} was written by a newer vault-rotator (schema "
            f"{schema}; this one reads up to {SCHEMA_VERSION}): upgrade this process; the "
            "request is left as it is"
        )
    if schema not in (1, SCHEMA_VERSION) or isinstance(schema, bool):
        raise StoreError(
            f"emergency request at {where} is malformed (schema {schema!r:.40}, this "
            f"vault-rotator reads 1 and {SCHEMA_VERSION})"
        )
    return int(schema)


def shard_count(header: Mapping[str, Any], where: str) -> int:
    """How many shards a schema-2 header names: a StoreError if that is no count, or more
    than the keys of one environment need (:data:`MAX_SHARDS`: an environment is one policy
    file, of at most ``MAX_KEYS`` keys), or not what its ``key_count`` needs. Anyone who may
    write the header could otherwise make every reader read up to that many records."""
    count = header.get("shards")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_SHARDS:
        raise StoreError(
            f"emergency request at {where} is malformed (shards must be a count from 1 to "
            f"{MAX_SHARDS}: an environment has at most {MAX_KEYS} keys)"
        )
    keys = header.get("key_count")
    if isinstance(keys, bool) or not isinstance(keys, int) or count != -(-keys // SHARD_KEYS):
        raise StoreError(
            f"emergency request at {where} is malformed (key_count {keys!r:.20} does not fit "
            f"{count} shards of {SHARD_KEYS})"
        )
    return count


def from_stored(
    header: Mapping[str, Any],
    shards: Sequence[Mapping[str, Any] | None],
    where: str,
    version: int,
) -> EmergencyRequest:
    """A schema-2 request from its header and its shards' data (None: a shard missing)."""
    try:
        keys: dict[str, Any] = {}
        request_id = header.get("id")
        for index, shard in enumerate(shards):
            keys.update(_shard_keys(shard, index, request_id))
        _check_count(header, len(keys))
        return EmergencyRequest.from_dict({**header, "schema": 1, "keys": keys}, where, version)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"emergency request at {where} is malformed ({exc})") from exc


def _check_count(header: Mapping[str, Any], found: int) -> None:
    if header.get("key_count") != found:
        raise ValueError(f"key_count {header.get('key_count')!r:.20} but {found} keys")


def _shard_keys(shard: Mapping[str, Any] | None, index: int, request_id: object) -> dict[str, Any]:
    """One shard's keys, in schema 1's per-key form (checked there)."""
    if shard is None:
        raise ValueError(f"shard {index} is missing")
    if shard.get("request_id") != request_id or shard.get("shard") != index:
        raise ValueError(f"shard {index} belongs to another request or place")
    if shard.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"shard {index} has schema {shard.get('schema')!r:.20}")
    packed = json.loads(str(shard.get("keys")))
    if not isinstance(packed, dict):
        raise TypeError(f"shard {index}: keys must be an object")
    return {str(name): _unpacked(name, raw) for name, raw in packed.items()}


def _unpacked(name: object, raw: object) -> dict[str, Any]:
    if not isinstance(raw, list) or not 3 <= len(raw) <= 3 + len(_ENTRY_FIELDS):
        raise TypeError(f"keys.{str(name)[:40]} must be a list of 3 to 7 fields")
    out: dict[str, Any] = {"step": raw[0], "at": raw[1], "since": raw[2]}
    for field, value in zip(_ENTRY_FIELDS, raw[3:], strict=False):
        if value != "":
            out[field] = value
    return out


__all__ = ["SHARD_KEYS", "Step", "from_stored", "header_doc", "shard_docs", "shard_path"]
