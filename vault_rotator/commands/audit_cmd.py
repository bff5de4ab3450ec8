"""``vault-rotator audit [--json] [--unused-days N] [--delete-unused [--yes]]``: review the keys.

ARouter's rotation guide: audit regularly, delete keys no longer in use. For every provider
account in the policies (one list pass each) this reports keys no policy manages, keys unused
for N days, keys without a spending cap and keys served at more than one secret path (kinds and
rules: :mod:`vault_rotator.engine.audit`). Keys are listed first and Vault read after, so every
listed key a rotation created is already named in its state record.

``--delete-unused`` deletes keys that are both unused and unmanaged, and only with ``--yes``;
without it, it prints what it would delete. Vault is read again right before deleting, and a
key now served or held is kept. Each deletion is logged by key id.

Exit 0 when nothing is left to report (no findings, or findings only on keys this run
deleted), 1 when findings remain or a deletion failed, 2 on a usage or config error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from vault_rotator.commands.common import add_config_argument, load
from vault_rotator.display import redact_text, shown
from vault_rotator.engine.audit import (
    API_KEY_PREFIX,
    Finding,
    Held,
    Listing,
    NamePattern,
    Report,
    Served,
    audit,
    held_by,
    served_by,
    still_deletable,
)
from vault_rotator.engine.session import StateStore
from vault_rotator.errors import ConfigError, EngineError, ProviderError, StorePermissionError
from vault_rotator.policy import Account, PolicySet
from vault_rotator.ports.provider import KeyProvider
from vault_rotator.runtime import Runtime

log = structlog.get_logger(__name__)

DEFAULT_UNUSED_DAYS = 30
VaultView = tuple[list[Served], Held]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--unused-days",
        metavar="N",
        type=int,
        default=DEFAULT_UNUSED_DAYS,
        help=f"a key with no use for N days is unused (default {DEFAULT_UNUSED_DAYS})",
    )
    parser.add_argument(
        "--delete-unused",
        action="store_true",
        help="delete keys both unused and unmanaged (prints them only, unless --yes)",
    )
    parser.add_argument("--yes", action="store_true", help="with --delete-unused: really delete")
    add_config_argument(parser)


@dataclass
class Deletion:
    """What ``--delete-unused`` did (or, without ``--yes``, would do)."""

    dry_run: bool
    candidates: tuple[Finding, ...]
    refused: dict[Account, str]
    deleted: list[Finding] = field(default_factory=list)
    kept: list[Finding] = field(default_factory=list)  # served or held on the second read
    failed: list[tuple[Finding, str]] = field(default_factory=list)


def run(args: argparse.Namespace, *, clock: Callable[[], float] | None = None) -> int:
    if args.yes and not args.delete_unused:
        raise ConfigError("--yes goes with --delete-unused")
    if args.unused_days < 1:
        raise ConfigError(f"--unused-days must be at least 1, not {args.unused_days}")
    policies = load(args)
    runtime = Runtime.from_env()
    try:
        now = (clock or runtime.clock)()
        listings, providers = list_accounts(policies, runtime)
        served, held = read_vault(policies, runtime)
        report = audit(listings, served, held, now=now, unused_days=args.unused_days)
        deletion = None
        if args.delete_unused:
            deletion = Deletion(not args.yes, report.candidates, dict(report.refused))
            if args.yes and report.candidates and held.unreadable:
                raise EngineError(
                    f"refusing --delete-unused: {len(held.unreadable)} state record(s) or "
                    f"folder(s) are not readable with this token (e.g. "
                    f"{sorted(held.unreadable)[0]}), so the keys they hold are unknown"
                )
            if args.yes and report.candidates:
                delete(deletion, providers, read_vault(policies, runtime))
    finally:
        runtime.close()
    show(args, report, listings, deletion, now)
    return exit_code(report, deletion)


def list_accounts(
    policies: PolicySet, runtime: Runtime
) -> tuple[list[Listing], dict[Account, KeyProvider]]:
    """One list pass per provider account."""
    listings: list[Listing] = []
    providers: dict[Account, KeyProvider] = {}
    for account, keys in policies.accounts().items():
        provider = runtime.provider(keys[0], None)
        records = tuple(provider.list_keys())
        api_shaped = runtime.management_key(keys[0]).reveal().startswith(API_KEY_PREFIX)
        patterns = tuple(NamePattern.of(key) for key in keys)
        listings.append(Listing(account, provider.dialect.value, records, patterns, api_shaped))
        providers[account] = provider
    return listings, providers


def read_vault(policies: PolicySet, runtime: Runtime) -> VaultView:
    """What the consumer secrets serve and what every state record holds."""
    served: list[Served] = []
    stores: dict[tuple[str, str], StateStore] = {}
    for policy in policies:
        kv = runtime.kv(policy.vault.kv_mount)
        got = kv.read(policy.secret_path)
        item = served_by(policy, got.data if got is not None and not got.deleted else None)
        if item is not None:
            served.append(item)
        where = (policy.vault.kv_mount, policy.vault.state_prefix)
        stores.setdefault(where, StateStore(kv, policy.vault.state_prefix))
    by_ref = {(policy.env, policy.name): policy for policy in policies}
    held = Held()
    for store in stores.values():
        skipped: list[str] = []
        for env, name in store.list_records(skipped):
            try:
                record, _ = store.read(env, name)
            except StorePermissionError:
                skipped.append(store.state_path(env, name))
                continue
            held |= held_by(record, by_ref.get((env, name)))
        held |= Held(unreadable=frozenset(skipped))
    return served, held


def delete(deletion: Deletion, providers: dict[Account, KeyProvider], fresh: VaultView) -> None:
    """Delete each candidate still unserved and unheld on a fresh read of Vault."""
    served, held = fresh
    for candidate in deletion.candidates:
        assert candidate.key_id is not None
        if not still_deletable(candidate, served, held):
            deletion.kept.append(candidate)
            log.warning("audit kept a key now served or held", key_id=candidate.key_id)
            continue
        try:
            gone_now = providers[candidate.account].delete_key(candidate.key_id)
        except ProviderError as exc:
            deletion.failed.append((candidate, redact_text(str(exc))))
            log.warning("audit could not delete a key", key_id=candidate.key_id, error=str(exc))
            continue
        deletion.deleted.append(candidate)
        log.info(
            "unused unmanaged key deleted",
            key_id=candidate.key_id,
            name=candidate.name,
            account=str(candidate.account),
            already_gone=not gone_now,
        )


def exit_code(report: Report, deletion: Deletion | None) -> int:
    gone = {(f.account, f.key_id) for f in deletion.deleted} if deletion else set()
    left = [f for f in report.findings if (f.account, f.key_id) not in gone]
    return 1 if left or (deletion and deletion.failed) else 0


# -- output --------------------------------------------------------------------------------


def show(
    args: argparse.Namespace,
    report: Report,
    listings: Sequence[Listing],
    deletion: Deletion | None,
    now: float,
) -> None:
    if args.json:
        doc = document(report, listings, deletion, now=now, unused_days=args.unused_days)
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    keys = _count(sum(len(listing.keys) for listing in listings), "key")
    days = _count(args.unused_days, "day")
    scope = f"{keys} in {_count(len(listings), 'account')}, unused = no use for {days}"
    if report.findings:
        print(table(report.findings))
        print(f"{_count(len(report.findings), 'finding')} ({scope})")
    else:
        print(f"no findings ({scope})")
    if deletion is not None:
        print("\n".join(deletion_lines(deletion)))


def table(findings: Sequence[Finding]) -> str:
    header = ("ACCOUNT", "KEY ID", "NAME", "FINDING", "DETAIL")
    rows = [header] + [
        (f.account.base_url, f.key_id or "-", shown(f.name) if f.name else "-", f.kind, f.detail)
        for f in findings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def deletion_lines(deletion: Deletion) -> list[str]:
    lines = [f"not deleting in {account}: {why}" for account, why in deletion.refused.items()]
    if not deletion.candidates:
        return [*lines, "--delete-unused: no key is both unused and unmanaged"]
    if deletion.dry_run:
        lines.append(f"--delete-unused would delete {_count(len(deletion.candidates), 'key')}:")
        lines += [f"  {_key(f)}" for f in deletion.candidates]
        return [*lines, "nothing deleted; add --yes to delete them"]
    lines += [f"deleted {_key(f)}" for f in deletion.deleted]
    lines += [f"kept {_key(f)}: served or held on a second read" for f in deletion.kept]
    lines += [f"could not delete {_key(f)}: {error}" for f, error in deletion.failed]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _key(finding: Finding) -> str:
    return f"{finding.account.base_url} {finding.key_id} ({shown(finding.name or '')})"


def document(
    report: Report,
    listings: Sequence[Listing],
    deletion: Deletion | None,
    *,
    now: float,
    unused_days: int,
) -> dict[str, Any]:
    """The ``--json`` document."""
    accounts = [
        {
            "base_url": listing.account.base_url,
            "account": str(listing.account),
            "dialect": listing.dialect,
            "keys": len(listing.keys),
        }
        for listing in listings
    ]
    return {
        "at": datetime.fromtimestamp(now, UTC).isoformat(),
        "unused_days": unused_days,
        "accounts": accounts,
        "findings": [f.to_dict() for f in report.findings],
        "deletion": None if deletion is None else _deletion_dict(deletion),
    }


def _deletion_dict(deletion: Deletion) -> dict[str, Any]:
    def keys(findings: Sequence[Finding]) -> list[dict[str, Any]]:
        return [
            {"base_url": f.account.base_url, "key_id": f.key_id, "name": f.name} for f in findings
        ]

    return {
        "mode": "dry-run" if deletion.dry_run else "delete",
        "candidates": keys(deletion.candidates),
        "deleted": keys(deletion.deleted),
        "kept": keys(deletion.kept),
        "failed": [
            {"base_url": f.account.base_url, "key_id": f.key_id, "error": error}
            for f, error in deletion.failed
        ],
        "refused": [{"account": str(a), "reason": why} for a, why in deletion.refused.items()],
    }
