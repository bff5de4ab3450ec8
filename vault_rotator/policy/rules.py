"""The rules of one policy file that go beyond each field's own shape.

A problem is located at the node that set the offending value: the key's own field, else the
field under ``defaults`` (then reported once, whatever the number of keys it applies to),
else a related field or the key's entry (for a built-in default). A rule that involves a value
the file got wrong (``broken``) is skipped: that value already has its own problem.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import vault_rotator.policy.defaults as builtin
from vault_rotator.policy.durations import format_duration
from vault_rotator.policy.namespace import inside, meant_path, repeats_the_mount
from vault_rotator.policy.naming import MAX_KEY_NAME_CHARS, longest_key_name
from vault_rotator.policy.problems import Problem, shown
from vault_rotator.policy.schema import RawFile, RawKey, dotted
from vault_rotator.policy.yamlsource import Document, NodePath


@dataclass(frozen=True)
class Setting:
    """A key's effective setting and where it came from."""

    value: Any
    origin: NodePath | None  # None: the built-in default
    broken: bool = False  # the file's value was invalid; a stand-in is in ``value``


@dataclass(frozen=True)
class KeyContext:
    """What the per-key rules look at."""

    raw: RawFile
    key: RawKey
    index: int
    settings: dict[str, Setting]
    broken: frozenset[NodePath]

    def usable(self, *paths: NodePath) -> bool:
        """True when none of these file-level fields was invalid."""
        return not any(path in self.broken for path in paths)

    def label(self, name: str) -> str:
        """How a message names a setting: where it was set, or that it is the default."""
        origin = self.settings[name].origin
        return dotted(origin) if origin else f"keys[{self.index}].{name} (built-in default)"


RESERVED_ENVIRONMENTS = frozenset({"frozen"})  # names under <state_prefix>/control/


def file_rules(
    raw: RawFile | None, doc: Document, contexts: list[KeyContext], broken: frozenset[NodePath]
) -> list[Problem]:
    """Rules about the file as a whole; the duplicate-name rule runs even on a broken file."""
    problems = _duplicate_names(doc)
    if raw is None:
        return problems
    if _plain_http(raw.provider.base_url):
        message = (
            f"provider.base_url {raw.provider.base_url} is plain http to a host that is not "
            "loopback: the management key would cross the network unencrypted"
        )
        problems.append(doc.problem(("provider", "base_url"), message, "warning"))
    if not raw.keys:
        problems.append(doc.problem(("keys",), "keys is empty: nothing to rotate", "warning"))
    if raw.provider.usage_lag == 0 and ("provider", "usage_lag") not in broken:
        message = (
            "provider.usage_lag is 0s: use the provider records late would be missed, and an "
            "old key still in use could look quiet; set at least how late and how coarsely the "
            "provider records use (default 60s)"
        )
        problems.append(doc.problem(("provider", "usage_lag"), message, "warning"))
    if raw.environment in RESERVED_ENVIRONMENTS:
        message = (
            f"environment name {raw.environment!r} is reserved: "
            f"<state_prefix>/control/{raw.environment} is the freezes record, so the "
            "environment's control path would be it"
        )
        problems.append(doc.problem(("environment",), message))
    if ("vault", "state_prefix") not in broken:
        problems += _state_prefix_overlaps(raw, doc, contexts)
    if ("vault", "kv_mount") not in broken:
        problems += _mount_in_secret_paths(raw, doc, contexts)
    return problems


def _duplicate_names(doc: Document) -> list[Problem]:
    items = doc.data.get("keys") if isinstance(doc.data, dict) else None
    seen: dict[str, int] = {}
    problems: list[Problem] = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            first = doc.line_of(("keys", seen[name], "name"))
            message = f"duplicate key name {shown(name)} (first at line {first})"
            problems.append(doc.problem(("keys", index, "name"), message))
        else:
            seen[name] = index
    return problems


def _plain_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.hostname == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True


def _state_prefix_overlaps(
    raw: RawFile, doc: Document, contexts: list[KeyContext]
) -> list[Problem]:
    prefix = raw.vault.state_prefix
    paths: list[tuple[NodePath, str]] = [
        (("provider", "management_key", "path"), raw.provider.management_key.path)
    ]
    paths += [(("keys", c.index, "secret_path"), c.key.secret_path) for c in contexts]
    return [
        doc.problem(
            path,
            f"{dotted(path)} {shown(value)} is inside vault.state_prefix {shown(prefix)}, "
            "where vault-rotator keeps its state",
        )
        for path, value in paths
        if inside(value, prefix)
    ]


def _mount_in_secret_paths(
    raw: RawFile, doc: Document, contexts: list[KeyContext]
) -> list[Problem]:
    mount = raw.vault.kv_mount
    problems = []
    for c in contexts:
        path = c.key.secret_path
        if repeats_the_mount(path, mount):
            message = (
                f"keys[{c.index}].secret_path {shown(path)} is relative to kv_mount "
                f"{shown(mount)}, and the API adds {mount}/data/ itself: it would be read at "
                f"{mount}/data/{path}; write {shown(meant_path(path, mount))} (to move a secret "
                "stored at the doubled path, see docs/upgrading.md)"
            )
            problems.append(doc.problem(("keys", c.index, "secret_path"), message))
    return problems


def key_rules(context: KeyContext, doc: Document) -> list[Problem]:
    """Rules about one key's effective settings."""
    rules = (
        _spending_limit_rule,
        _drain_rule,
        _ttl_rule,
        _disable_rule,
        _jitter_rule,
        _key_name_length_rule,
        _drain_on_acks_rule,
    )
    return [problem for rule in rules if (problem := rule(context, doc)) is not None]


def _drain_on_acks_rule(context: KeyContext, doc: Document) -> Problem | None:
    drain_on_acks, require = context.settings["drain_on_acks"], context.settings["require_acks"]
    if drain_on_acks.broken or require.broken or not drain_on_acks.value or require.value:
        return None
    return doc.problem(
        drain_on_acks.origin or ("keys", context.index),
        f"{context.label('drain_on_acks')} without require_acks: a consumer that never "
        "acknowledges is invisible to it, and a quiet old key could be deleted under it",
        "warning",
    )


def _spending_limit_rule(context: KeyContext, doc: Document) -> Problem | None:
    raw = context.raw
    required = raw.require_spending_limit
    if required is None:
        required = builtin.require_spending_limit(raw.environment)
    setting = context.settings["spending_limit"]
    if not required or setting.value is not None or setting.broken:
        return None
    if not context.usable(("require_spending_limit",)):
        return None
    return doc.problem(
        setting.origin or ("keys", context.index),
        f"key {shown(context.key.name)} has no spending_limit, which environment "
        f"'{raw.environment}' requires (require_spending_limit); set one on the key or under "
        "defaults to cap what a leaked key can spend",
    )


def _drain_rule(context: KeyContext, doc: Document) -> Problem | None:
    drain = context.settings["drain_period"]
    lag = context.raw.provider.usage_lag
    if drain.broken or not context.usable(("provider", "usage_lag")) or drain.value >= lag:
        return None
    return doc.problem(
        drain.origin or ("provider", "usage_lag"),
        f"{context.label('drain_period')} {format_duration(drain.value)} is shorter than "
        f"provider.usage_lag {format_duration(lag)}: use the provider records late could make "
        "the old key look quiet while it is still in use",
    )


def _ttl_rule(context: KeyContext, doc: Document) -> Problem | None:
    names = ("key_ttl", "max_age", "pickup_timeout", "drain_timeout")
    settings = [context.settings[name] for name in names]
    if any(setting.broken for setting in settings) or settings[0].value is None:
        return None
    ttl, parts = settings[0].value, [setting.value for setting in settings[1:]]
    if ttl > sum(parts):
        return None
    return doc.problem(
        settings[0].origin or ("keys", context.index),
        f"{context.label('key_ttl')} {format_duration(ttl)} must be longer than max_age + "
        f"pickup_timeout + drain_timeout ({' + '.join(map(format_duration, parts))} = "
        f"{format_duration(sum(parts))}), or a key could expire before it is rotated away",
    )


def _disable_rule(context: KeyContext, doc: Document) -> Problem | None:
    setting = context.settings["disable_before_delete"]
    if context.raw.provider.dialect != "a" or setting.origin is None or setting.value != 0:
        return None
    return doc.problem(
        setting.origin,
        f"{context.label('disable_before_delete')} is 0s in dialect a, where free calls leave "
        "usage flat, so an old key that looks quiet may still be in use; disabling it first "
        f"(default {format_duration(builtin.DIALECT_A_DISABLE_BEFORE_DELETE_S)}) makes such "
        "callers fail while the key can still be re-enabled",
        "warning",
    )


def _jitter_rule(context: KeyContext, doc: Document) -> Problem | None:
    jitter, max_age = context.settings["jitter"], context.settings["max_age"]
    if jitter.broken or max_age.broken or jitter.value < max_age.value:
        return None
    return doc.problem(
        jitter.origin or ("keys", context.index),
        f"{context.label('jitter')} {format_duration(jitter.value)} must be shorter than "
        f"{context.label('max_age')} {format_duration(max_age.value)}: max_age makes the key "
        "due anyway, so a longer jitter would only hide the schedule",
    )


def _key_name_length_rule(context: KeyContext, doc: Document) -> Problem | None:
    setting = context.settings["key_name"]
    if setting.broken:
        return None
    example = longest_key_name(setting.value, env=context.raw.environment, name=context.key.name)
    if len(example) <= MAX_KEY_NAME_CHARS:
        return None
    return doc.problem(
        setting.origin or ("keys", context.index),
        f"{context.label('key_name')} renders to {len(example)} characters (at most "
        f"{MAX_KEY_NAME_CHARS}) for key {shown(context.key.name)} with the longest date and "
        f"rotation id: {shown(example)}",
    )
