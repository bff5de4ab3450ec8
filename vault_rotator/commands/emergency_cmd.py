"""``vault-rotator rotate --env ENV --emergency --yes``: every key of one environment, now.

A suspected leak of a whole environment. ``--yes`` is required (a typo costs every key). The
request is saved in Vault first (:mod:`vault_rotator.engine.emergency`), then acted on in rounds
(:mod:`vault_rotator.engine.emergency_round`), one every ``poll_interval``, each running its
keys' passes on :data:`WORKERS` threads (the provider's adaptive limiter bounds what reaches
it): each key's rotation is started in emergency mode, or the one in flight upgraded, frozen
keys included, and driven through the engine's own crash-safe steps. A key whose old key is
unknown is skipped.

Who acts mirrors ``rotate ENV/NAME``: without ``--daemon`` this process does (a daemon running
meanwhile also picks the saved request up on its ticks, and the leases keep the two apart);
with ``--daemon URL`` the CLI asks the daemon (``POST /v1/rotate/{env}``) and the daemon acts.

Without ``--wait`` it returns once every key is published or beyond (or stalled, failed or
skipped) and prints how to go on; with ``--wait`` it goes on until no key moves, printing the
progress line whenever the counts change, then the summary. ``--timeout`` gives up waiting
(exit 1, the request stays open). A rerun resumes the open request: keys already rotated for
it are skipped, failed ones tried again. ``--dry-run`` prints what each key would get.
Exit 0 when every key is done (or ended by an operator), 1 while any is stalled, failed or
skipped, 2 on a usage or config error.
"""

from __future__ import annotations

import argparse
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import structlog

from vault_rotator.commands.common import load, operator
from vault_rotator.commands.emergency_remote import act_env
from vault_rotator.commands.follow import wait_timeout
from vault_rotator.commands.remote import daemon_url
from vault_rotator.daemon.emergencies import open_request
from vault_rotator.daemon.freeze import frozen
from vault_rotator.engine.emergency import MOVING, EmergencyRequest, KeyEntry, Step, new_request
from vault_rotator.engine.emergency_decide import KeyAction, decide_key
from vault_rotator.engine.emergency_round import Mapper, Round, serial_map
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.emergency_view import exit_code, progress_line, summary_lines, view
from vault_rotator.engine.preflight import find_old_key
from vault_rotator.engine.session import StateStore
from vault_rotator.engine.state import StateRecord
from vault_rotator.errors import (
    CasConflictError,
    ConfigError,
    PreflightError,
    StoreUnavailableError,
    VaultRotatorError,
)
from vault_rotator.policy import EnvironmentPolicy, KeyPolicy, format_duration
from vault_rotator.ports.kv import KvStore
from vault_rotator.runtime import Runtime

log = structlog.get_logger(__name__)
_ENV = re.compile(r"[a-z0-9-]+")
MAX_FAILED_ROUNDS = 10
WORKERS = 16  # a round's passes run on this many threads at most (as the daemon's)
REVOKE_WARNING = (
    "WARNING: --revoke-old-now deletes each old key right after its new one is published: "
    "consumers that have not switched yet WILL FAIL until they pick up the new key."
)


def check_arguments(args: argparse.Namespace) -> str:
    """The environment, once the flags are known to fit (a usage error otherwise)."""
    env = str(args.env)
    if not _ENV.fullmatch(env):
        raise ConfigError(f"--env {env[:80]!r} is not an environment name ([a-z0-9-]+)")
    if args.ref is not None:
        raise ConfigError("give ENV/NAME or --env ENV, not both")
    if not args.emergency:
        raise ConfigError("--env needs --emergency: only an emergency rotates a whole environment")
    if not args.yes:
        raise ConfigError(
            f"rotate --env {env} --emergency rotates every key of {env}: add --yes to confirm"
        )
    return env


def run(args: argparse.Namespace) -> int:
    env = check_arguments(args)
    if args.dry_run:
        return dry_run(args, env)
    timeout = wait_timeout(args, wait=args.wait)
    environment = _environment(args, env)
    if (url := daemon_url(args)) is not None:
        revoke = bool(args.revoke_old_now)
        return act_env(url, env, revoke_old_now=revoke, wait=args.wait, timeout=timeout)
    if args.revoke_old_now:
        print(REVOKE_WARNING, file=sys.stderr)
    runtime = Runtime.from_env()
    try:
        return _here(runtime, environment, args, timeout)
    finally:
        runtime.close()


def _environment(args: argparse.Namespace, env: str) -> EnvironmentPolicy:
    policies = load(args)
    environment = policies.environments.get(env)
    if environment is None or not environment.keys:
        known = ", ".join(sorted(policies.environments)) or "none"
        raise ConfigError(f"no environment {env!r} with keys in the policies (known: {known})")
    return environment


def _here(
    runtime: Runtime,
    environment: EnvironmentPolicy,
    args: argparse.Namespace,
    timeout: float | None,
) -> int:
    engine = runtime.engine()
    clock, env = engine.clock, environment.environment
    vault = environment.vault
    kv = runtime.kv(vault.kv_mount)

    request, again = open_request(
        environment,
        runtime.kv,
        clock,
        by=operator(),
        trigger="cli",
        revoke_old_now=args.revoke_old_now,
    )
    print(_opening(request, again, _frozen_note(kv, vault.state_prefix, environment)))
    deadline = None if timeout is None else clock() + timeout
    rounds = Round(engine, environment, drive=True)
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="vault-rotator") as pool:
        request = _loop(
            rounds,
            request,
            wait=args.wait,
            deadline=deadline,
            map=lambda f, xs: list(pool.map(f, xs)),
        )
    doc = view(request, clock())
    if request.settled:
        print("\n".join(summary_lines(doc, clock())))
        return exit_code(doc)
    follow = f"vault-rotator rotate --env {env} --emergency --yes --wait"
    if deadline is not None and clock() >= deadline and args.wait:
        assert timeout is not None
        print(
            f"{env}: emergency {request.id} still moving after --timeout "
            f"{format_duration(timeout)}; the request stays open: follow it with {follow}, "
            "or vault-rotator status"
        )
        return 1
    print(
        f"{env}: every key is published or beyond; continue with: {follow} (a running "
        "daemon carries it on as well)"
    )
    return 1 if {"stalled", "failed", "skipped"} & set(doc["counts"]) else 0


def _loop(
    rounds: Round,
    request: EmergencyRequest,
    *,
    wait: bool,
    deadline: float | None,
    map: Mapper = serial_map,
) -> EmergencyRequest:
    """Rounds every poll interval until no key moves (or, without wait, every key is
    published), or the deadline; print the progress line whenever the counts change."""
    engine = rounds.engine
    poll = rounds.environment.provider.poll_interval_s
    shown: dict[str, int] | None = None
    failed = 0
    while True:
        try:
            request = rounds.run(request, map=map).request
            failed = 0
        except (StoreUnavailableError, CasConflictError) as exc:
            failed += 1
            if failed > MAX_FAILED_ROUNDS:
                raise
            log.warning("emergency round failed; will retry", error=str(exc))
        counts = view(request, engine.clock())["counts"]
        if counts != shown:
            print(progress_line(request, engine.clock()), flush=True)
            shown = counts
        if request.settled or (not wait and _published(request)):
            return request
        left = None if deadline is None else deadline - engine.clock()
        if left is not None and left <= 0:
            return request
        engine.sleep(poll if left is None else min(poll, left))


def _published(request: EmergencyRequest) -> bool:
    return not any(e.step in (Step.QUEUED, Step.CREATING) for e in request.keys.values())


def _opening(request: EmergencyRequest, again: bool, frozen_note: str) -> str:
    how = "resumed (keys already rotated for it are skipped)" if again else "saved"
    revoke = "; old keys revoked at publish" if request.revoke_old_now else ""
    return (
        f"{request.env}: emergency {request.id} {how}: {len(request.keys)} keys"
        f"{revoke}{frozen_note}"
    )


def _frozen_note(kv: KvStore, prefix: str, environment: EnvironmentPolicy) -> str:
    try:
        held = frozen(kv, prefix)
    except VaultRotatorError:
        return ""  # only a note
    env = environment.environment
    if any(held.covers(env, key.name) for key in environment.keys):
        return "; frozen keys included (a freeze holds schedules, not operators)"
    return ""


# -- --dry-run ----------------------------------------------------------------------------


def dry_run(args: argparse.Namespace, env: str) -> int:
    """What each key would get; nothing is written."""
    environment = _environment(args, env)
    runtime = Runtime.from_env()
    try:
        lines = _plan(runtime, environment, args.revoke_old_now)
    finally:
        runtime.close()
    print("\n".join(lines))
    return 0


def _plan(runtime: Runtime, environment: EnvironmentPolicy, revoke: bool) -> list[str]:
    env, vault = environment.environment, environment.vault
    kv = runtime.kv(vault.kv_mount)
    now = runtime.clock()
    current = EmergencyStore(kv, vault.state_prefix).read(env)
    names = [key.name for key in environment.keys]
    request = current if current is not None and not current.complete else None
    lines = [f"plan for an emergency of {env}: {len(names)} keys; nothing is changed"]
    if request is None:
        request = new_request(
            "dry-run", env, names, by="", trigger="cli", revoke_old_now=revoke, now=now
        )
    else:
        lines.append(
            f"  request {request.id} (by {request.by or request.trigger}) is open: "
            "rerunning resumes it"
        )
    lines[0] += _frozen_note(kv, vault.state_prefix, environment)
    states = StateStore(kv, vault.state_prefix)
    for key in environment.keys:
        record = states.read(env, key.name)[0]
        entry = request.keys.get(key.name)
        what = "not in the open request (added since)" if entry is None else ""
        if entry is not None:
            what = _planned(key, record, decide_key(request, entry, record, now), kv)
        lines.append(f"  {key.ref}: {what}")
    if revoke or request.revoke_old_now:
        lines.append("  mode: emergency, old keys revoked right after publish")
    return lines


def _planned(
    key: KeyPolicy, record: StateRecord, decided: tuple[KeyAction, KeyEntry], kv: KvStore
) -> str:
    action, entry = decided
    rot = record.rotation
    step = entry.step
    if action == KeyAction.START:
        return "skipped: old key unknown" if _unknown(key, kv) else "start an emergency rotation"
    if action == KeyAction.UPGRADE and rot is not None:
        return f"rotation {rot.id} in flight ({step}): upgraded to emergency"
    if action == KeyAction.DRIVE and rot is not None:
        return f"rotation {rot.id} in flight ({step}): carried on"
    detail = f": {entry.outcome or entry.detail}" if entry.outcome or entry.detail else ""
    return f"{step}{detail}" + ("" if step in MOVING else " (left as it is)")


def _unknown(key: KeyPolicy, kv: KvStore) -> bool:
    try:
        return find_old_key(key, kv.read(key.secret_path), {}).unknown
    except PreflightError:
        return False
