"""Vault faults in a chaos run, on a raft ``bao server`` (:mod:`.vault_raft`), under traffic.

One daemon life logged in with AppRole goes through, each while a rotation is in flight:

* ``stop``: Vault SIGKILLed, started again on the same data (sealed), then unsealed;
* ``seal``: Vault sealed, then unsealed;
* ``revoke-approle``: every token AppRole issued revoked: the daemon logs in again;
* ``deny``: the rotator policy denies one key's consumer secret: that key reports it (its
  passes fail, naming it), the others go on; the policy restored, it completes;
* ``cas``: the state records rewritten (unchanged, by check-and-set) as fast as Vault takes
  them, then the consumer secret of a published rotation written by someone else (every field
  kept, one added): the rotation stalls as ``secret-changed`` and is resumed.

Then ``revoke-static``: a life with a static token, revoked mid-rotation (``/readyz`` 503 on one
line, nothing lost), and a life with a new token that completes everything.

While Vault is unusable (stop, seal, a revoked static token) ``/readyz`` must answer 503, and
200 once it is back; every rotation in flight when a fault hit must then complete. Each
expectation that fails adds 1 to ``vault_missed`` and a note.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

from vault_rotator.testing import chaos_figures as figs
from vault_rotator.testing.chaos_daemon import stop
from vault_rotator.testing.chaos_fault import Fault
from vault_rotator.testing.chaos_setup import make_token, vault_policy
from vault_rotator.testing.chaos_world import Bench, Daemon, ready
from vault_rotator.testing.chaos_writers import cas_writers
from vault_rotator.testing.vault_raft import RaftVault

CONFLICT = re.compile(r'^vault_rotator_vault_requests_total\{[^}]*status="conflict"[^}]*\} (\S+)$')


def stop_vault(run: Fault, vault: RaftVault) -> None:
    """Vault SIGKILLed mid-rotation, started again on its data (sealed), then unsealed."""
    run.hit()
    vault.stop(kill=True)
    run.unusable("stopped")
    vault.start()
    time.sleep(1.0)  # up, but sealed
    vault.unseal()
    run.usable("stopped")


def seal_vault(run: Fault, vault: RaftVault) -> None:
    """Vault sealed mid-rotation, then unsealed."""
    run.hit()
    vault.seal()
    run.unusable("sealed")
    vault.unseal()
    run.usable("sealed")


def revoke_approle(run: Fault, vault: RaftVault) -> None:
    """Every token AppRole issued is revoked; the daemon must log in again and go on."""
    run.hit()
    before = _logins(run.daemon, "token refused")
    vault.call("PUT", "leases/revoke-prefix/auth/approle/login")
    run.complete("approle token revoked")
    run.f.relogins += _logins(run.daemon, "token refused") - before
    if _logins(run.daemon, "token refused") == before:
        run.miss("approle token revoked: no new login")


def deny_one(run: Fault) -> None:
    """The rotator policy denies one in-flight key's consumer secret; the others go on."""
    run.hit()
    bench = run.bench
    denied = sorted(run.flying)[0] if run.flying else bench.names[0]
    name = f"{bench.env}-rotator"
    rules = vault_policy(["rotator", "--config", str(bench.work / "config")])
    deny = f'\npath "secret/data/{bench.env}/{denied}" {{ capabilities = ["deny"] }}\n'
    ref = f"{bench.env}/{denied}"
    before = _denials(run.daemon, ref), _successes(bench, denied)
    bench.admin.sys.create_or_update_policy(name, rules + deny)

    def reported_and_others_go_on() -> bool:
        return _denials(run.daemon, ref) > before[0] and _successes(bench, denied) > before[1]

    if not run.wait(40, reported_and_others_go_on):
        run.miss(f"deny: {denied} not reported, or no other key completed a rotation")
    if run.probe() != 200:  # one key's trouble is its own: Vault itself is usable
        run.miss("deny: /readyz not 200 while one path is denied")
    bench.admin.sys.create_or_update_policy(name, rules)
    run.complete("deny")


def _successes(bench: Bench, but: str) -> int:
    """Succeeded rotations of every key but ``but``."""
    bench.observe()
    return sum(1 for (n, _), o in bench.outcomes.items() if n != but and o.startswith("succeeded"))


def _logins(daemon: Daemon, reason: str) -> int:
    return sum(
        1 for e in daemon.events() if e.get("event") == "vault login" and e.get("reason") == reason
    )


def _denials(daemon: Daemon, ref: str) -> int:
    """How many of ``ref``'s passes failed on a refused Vault path, as the log says."""
    return sum(
        1
        for e in daemon.events()
        if e.get("event") == "pass failed"
        and e.get("key") == ref
        and "denied" in str(e.get("error"))
    )


def conflicts(bench: Bench, http: httpx.Client, daemon: Daemon) -> int:
    answer = bench.ask(http, "GET", daemon.url("/metrics"))
    text = answer.text if answer is not None else ""
    return int(sum(float(m.group(1)) for m in map(CONFLICT.match, text.splitlines()) if m))


# -- the phase -------------------------------------------------------------------------------


def _approle(bench: Bench, vault: RaftVault) -> dict[str, str]:
    """An AppRole for the rotator policy; the daemon's environment to log in with it."""
    role = f"{bench.env}-rotator"
    vault.call("POST", "auth/approle", {"type": "approle"})
    bench.admin.auth.approle.create_or_update_approle(
        role,
        token_policies=[role],
        **{"token_ttl": "1h", "token_max_ttl": "2h"},  # durations (S106 takes them for passwords)
    )
    role_id = bench.admin.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = bench.admin.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    bench.tokens.append(secret_id)
    files = {"role-id": role_id, "secret-id": secret_id}
    for file, value in files.items():
        (bench.work / file).write_text(value)
        (bench.work / file).chmod(0o600)
    return {
        "VAULT_AUTH_METHOD": "approle",
        "VAULT_TOKEN": "",
        "VAULT_ROLE_ID_FILE": str(bench.work / "role-id"),
        "VAULT_SECRET_ID_FILE": str(bench.work / "secret-id"),
    }


def _life(bench: Bench, http: httpx.Client, f: figs.Figures, env: dict[str, str]) -> Fault | None:
    daemon = bench.daemon(env=env)
    if not ready(http, daemon):
        f.unexpected_exits += 1
        daemon.reap()
        bench.ended()
        return None
    return Fault(bench, http, daemon, f)


def _end(run: Fault, *, sigterm: bool = True) -> None:
    if run.daemon.proc.poll() is not None:  # it died on its own
        run.f.unexpected_exits += 1
    elif sigterm:
        stop(run.daemon, run.f)
    run.daemon.reap()
    run.bench.ended()


def revoke_static(bench: Bench, http: httpx.Client, f: figs.Figures, vault: RaftVault) -> None:
    """A static token revoked mid-rotation: /readyz 503 on one line; a new token completes."""
    rules = vault_policy(["rotator", "--config", str(bench.work / "config")])
    token = make_token(bench.admin, f"{bench.env}-rotator", rules)
    bench.tokens.append(token)
    run = _life(bench, http, f, {"VAULT_TOKEN": token})
    if run is None:
        return
    try:
        run.hit()
        vault.call("PUT", "auth/token/revoke", {"token": token}, prefix="")
        run.unusable("static token revoked")
        answer = bench.ask(http, "GET", run.daemon.url("/readyz"))
        body = answer.text.strip() if answer is not None else ""
        if answer is None or answer.status_code != 503 or "\n" in body or "vault" not in body:
            run.miss("static token revoked: /readyz did not say 503 on one line naming Vault")
        errors = [e["event"] for e in run.daemon.events() if e.get("level") == "error"]
        if errors != ["vault token refused"]:
            run.miss(f"static token revoked: the log's errors are {errors[:3]}, not one line")
    finally:
        _end(run, sigterm=False)  # its leases cannot be released with a revoked token
    fresh = make_token(bench.admin, f"{bench.env}-rotator", rules)
    bench.tokens.append(fresh)
    again = _life(bench, http, f, {"VAULT_TOKEN": fresh})
    if again is None:
        return
    try:
        again.flying = run.flying
        again.usable("static token replaced")
    finally:
        _end(again)


SCENARIOS = ("stop", "seal", "revoke-approle", "deny", "cas", "revoke-static")


def vault_phase(
    bench: Bench, http: httpx.Client, f: figs.Figures, scenarios: tuple[str, ...] = SCENARIOS
) -> None:
    """The Vault faults, in order (see the module docstring); needs a :class:`RaftVault`."""
    vault = bench.vault
    assert isinstance(vault, RaftVault), "Vault faults need a raft server (vault_raft)"
    run = _life(bench, http, f, _approle(bench, vault))
    if run is None:
        return
    try:
        steps: dict[str, Callable[[], None]] = {
            "stop": lambda: stop_vault(run, vault),
            "seal": lambda: seal_vault(run, vault),
            "revoke-approle": lambda: revoke_approle(run, vault),
            "deny": lambda: deny_one(run),
            "cas": lambda: cas_writers(run),
        }
        for scenario in scenarios:
            if scenario in steps:
                steps[scenario]()
        f.cas_conflicts += conflicts(bench, http, run.daemon)
        if "cas" in scenarios and f.cas_conflicts == 0:
            run.miss("cas: the daemon never lost a check-and-set to the writers")
    finally:
        _end(run)
    if "revoke-static" in scenarios:
        revoke_static(bench, http, f, vault)
