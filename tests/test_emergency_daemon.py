"""The environment-wide emergency through the daemon: `POST /v1/rotate/{env}` authorised by
`update` on the environment's control path, the request picked up by the ticks, one webhook per
request, the request in `GET /v1/status`; against real OpenBao and the emulator on a fake clock."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hvac
import pytest
from world import MANAGEMENT_KEY, EmulatorFactory, no_fault

from vault_rotator import cli
from vault_rotator.commands import remote
from vault_rotator.commands.run_cmd import VaultCallerAuth
from vault_rotator.daemon.control import Control
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.emergencies import open_request
from vault_rotator.daemon.http import Listener
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.daemon.notify import Notifier
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.emergency import EmergencyRequest, Step, new_request
from vault_rotator.engine.emergency_round import Round
from vault_rotator.engine.emergency_store import EmergencyStore
from vault_rotator.engine.session import StateStore
from vault_rotator.errors import VaultRotatorError
from vault_rotator.policy import load_policies
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection, VaultKv
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key: {{path: {env}/management}}
  usage_lag: 60s
  poll_interval: 30s
vault: {{kv_mount: secret, state_prefix: {env}/vault-rotator}}
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 1h
  drain_period: 10m
  drain_timeout: 2h
keys:
{keys}
"""
NAMES = ("api", "batch", "web", "worker")


class Hooks(BaseHTTPRequestHandler):
    """A webhook receiver keeping every payload."""

    received: list[dict[str, Any]] = []  # noqa: RUF012  (reset by the fixture)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return None


@dataclass
class Site:
    """One environment of four keys under a daemon with its control API and webhooks."""

    vault: VaultServer
    emulator: Emulator
    clock: FakeClock
    env: str
    kv: VaultKv
    daemon: Daemon
    control: Control
    notifier: Notifier
    config: Path
    old: dict[str, str] = field(default_factory=dict)

    def token(self, capabilities: list[str], tail: str = "") -> str:
        """A token holding ``capabilities`` on the environment's control path (+ ``tail``)."""
        path = f"secret/data/{self.env}/vault-rotator/control/{self.env}{tail}"
        admin = hvac.Client(url=self.vault.addr, token=self.vault.token)
        name = f"p{uuid.uuid4().hex[:10]}"
        admin.sys.create_or_update_policy(
            name, f'path "{path}" {{ capabilities = {json.dumps(capabilities)} }}'
        )
        created = admin.auth.token.create(policies=["default", name], ttl="30m")
        return str(created["auth"]["client_token"])

    def post(self, token: str, body: dict[str, Any], env: str | None = None) -> Any:
        return self.control.handle("POST", f"/v1/rotate/{env or self.env}", token, body)

    def request(self) -> EmergencyRequest | None:
        return EmergencyStore(self.kv, f"{self.env}/vault-rotator").read(self.env)

    def tick(self, times: int) -> None:
        """Tick every 30 s of fake time, each app calling with what Vault serves it."""
        ((account, keys),) = self.daemon.accounts().items()
        for _ in range(times):
            assert self.daemon.tick(account, keys).errors == []
            self.clock.advance(30)
            for name in NAMES:
                got = self.kv.read(f"{self.env}/{name}")
                assert got is not None
                status = self.emulator.call(str(got.data["api_key"]))  # never a value shown
                assert status == 200, name


@pytest.fixture
def site(vault: VaultServer, make_emulator: EmulatorFactory, tmp_path: Path) -> Iterator[Site]:
    clock = FakeClock()
    emulator = make_emulator(dialect="c", clock=clock)
    env = f"x{uuid.uuid4().hex[:8]}"
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
    old = {}
    for name in NAMES:
        old[name], value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
        kv.write(f"{env}/{name}", {"api_key": value, "key_id": old[name]}, cas=0)
    lines = [
        f"  - {{name: {n}, secret_path: {env}/{n}, allowed_providers: [openai]}}" for n in NAMES
    ]
    (tmp_path / "site.yaml").write_text(
        CONFIG.format(env=env, base_url=emulator.base_url, keys="\n".join(lines))
    )
    Hooks.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    notifier = Notifier(
        [f"http://127.0.0.1:{server.server_address[1]}/hook"],
        events=frozenset({"stalled", "failed", "needs-attention", "succeeded"}),
    )
    runtime = Runtime(conn, clock=clock, sleep=clock.sleep)
    daemon = Daemon(
        load_policies(tmp_path), runtime, notifier=notifier, metrics=Metrics(), fault=no_fault
    )
    control = Control(daemon, VaultCallerAuth(conn))
    yield Site(vault, emulator, clock, env, kv, daemon, control, notifier, tmp_path, old)
    notifier.close(timeout=1)
    server.shutdown()
    server.server_close()
    conn.close()


def test_the_route_needs_update_on_the_environments_control_path(site: Site) -> None:
    """update on the env's control path: 202 and a saved request naming the caller's accessor;
    read only, or update on one key's path only: the 403 of a forbidden key; no emergency: 400."""
    for token in (site.token(["read"]), site.token(["update"], "/api")):
        answer = site.post(token, {"emergency": True})
        assert answer.status == 403
        assert answer.body == {
            "error": f"this token lacks update on the control path of {site.env}"
        }
    assert site.request() is None
    allowed = site.token(["update"])
    answer = site.post(allowed, {"revoke_old_now": False})
    assert answer.status == 400
    assert "emergency" in answer.body["error"]
    answer = site.post(allowed, {"emergency": True})
    assert answer.status == 202
    saved = site.request()
    assert saved is not None
    assert answer.body == {
        "env": site.env, "request_id": saved.id, "keys": 4, "requested_at": saved.requested_at,
        "revoke_old_now": False, "resumed": False,
    }  # fmt: skip
    admin = hvac.Client(url=site.vault.addr, token=site.vault.token)
    accessor = admin.auth.token.lookup(allowed)["data"]["accessor"]
    assert (saved.by, saved.trigger) == (f"token:{accessor}", "api")
    again = site.post(allowed, {"emergency": True, "revoke_old_now": True})
    assert (again.status, again.body["request_id"], again.body["resumed"]) == (202, saved.id, True)
    assert site.post(site.vault.token, {"emergency": True}, env="nowhere").status == 404
    assert site.post(site.token(["read"]), {"emergency": True}, env="nowhere").status == 403


def test_the_daemon_carries_out_a_saved_request_and_sends_one_webhook(site: Site) -> None:
    """Ticks start every key in emergency mode and delete each old key once the new one is
    used; per-key webhooks are folded into one `succeeded` message naming the request."""
    answer = site.post(site.token(["update"]), {"emergency": True})
    assert answer.status == 202
    site.tick(12)
    site.notifier.close(timeout=5)
    request = site.request()
    assert request is not None
    assert request.complete
    assert {e.step for e in request.keys.values()} == {Step.DONE}
    live = {k["id"] for k in site.emulator.live_keys()}
    store = StateStore(site.kv, f"{site.env}/vault-rotator")
    for name in NAMES:
        record = store.read(site.env, name)[0]
        assert [(o.outcome, o.trigger) for o in record.outcomes] == [
            (reasons.SUCCEEDED_EMERGENCY, f"emergency:{request.id}")
        ]
        assert site.old[name] not in live
    events = [m["vault_rotator"] for m in Hooks.received]
    assert [(e["event"], e["request_id"], e["keys"]) for e in events] == [
        ("succeeded", request.id, 4)
    ]
    assert events[0]["counts"] == {"done": 4}
    assert "lr_live_" not in json.dumps(Hooks.received)


def test_status_shows_the_request_to_readers_of_the_environment_only(site: Site) -> None:
    """GET /v1/status lists the request's view to a token with read on the env's control path."""
    site.post(site.token(["update"]), {"emergency": True})
    site.tick(1)
    reader = site.control.handle("GET", "/v1/status", site.token(["read"]), {})
    (doc,) = reader.body["emergencies"]
    assert (doc["env"], doc["keys"], doc["settled"]) == (site.env, 4, False)
    assert doc["counts"] == {"creating": 4}
    other = site.control.handle("GET", "/v1/status", site.token(["read"], "/api"), {})
    assert other.body["emergencies"] == []


@contextlib.contextmanager
def ticking(site: Site) -> Iterator[None]:
    """The daemon ticking in the background (30 s of fake time every 50 ms), apps calling."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.05):
            site.tick(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def test_the_cli_asks_the_daemon_and_follows_the_request_to_its_summary(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rotate --env ENV --emergency --yes --daemon URL --wait`: the daemon saves and carries
    out the request; the CLI draws the progress line and the summary from /v1/status."""
    listener = Listener("127.0.0.1", 0, control=site.control)
    listener.start()
    monkeypatch.setenv("VAULT_TOKEN", site.token(["update", "read"]))
    monkeypatch.setattr(remote, "POLL_S", 0.05)
    url = "http://{}:{}".format(*listener.server.server_address[:2])
    try:
        with ticking(site):
            code = cli.main(
                ["rotate", "--env", site.env, "--emergency", "--yes", "--daemon", url, "--wait",
                 "--config", str(site.config)]
            )  # fmt: skip
    finally:
        listener.stop()
    out, err = capsys.readouterr()
    request = site.request()
    assert request is not None
    assert code == 0, err
    assert f'"request_id": "{request.id}"' in out
    assert f"{site.env}: emergency {request.id}: 4 keys: " in out
    assert "4 keys in" in out
    assert "outcomes: succeeded-emergency 4" in out
    assert "lr_live_" not in out + err


@pytest.mark.parametrize(
    "views",
    [
        "{}",
        '[{"env": "e"}]',
        '[{"env": "e", "id": "r", "requested_at": 1, "by": "", "trigger": "api", "keys": 1, '
        '"counts": {"done": "1"}, "outcomes": {}, "rate_per_s": 1, "eta_s": null, '
        '"settled": true, "complete": true, "settled_at": 1, "attention": {}}]',
    ],
)
def test_a_daemon_answering_malformed_emergencies_is_a_one_line_failure(
    views: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """status --daemon checks the emergencies it is given: exit 1, one line, no traceback."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f'{{"keys": [], "emergencies": {views}}}'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("VAULT_TOKEN", "hvs.test-token-for-a-fake-daemon")
    try:
        code = cli.main(["status", "--daemon", f"http://127.0.0.1:{server.server_port}"])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert code == 1
    assert "emergencies" in err
    assert err.count("\n") == 1


def test_a_request_a_cli_carried_out_gets_its_webhook_from_the_daemon(site: Site) -> None:
    """Rounds outside the daemon (a CLI's) end the request; the daemon's next tick sends its
    one webhook, once; a request that ended over an hour before the tick gets none."""
    environment = site.daemon.policies.environments[site.env]
    request, _ = open_request(
        environment, site.daemon.runtime.kv, site.clock, by="ops@host", trigger="cli",
        revoke_old_now=True,
    )  # fmt: skip
    rounds = Round(site.daemon.runtime.engine(), environment, drive=True)
    for _ in range(8):
        request = rounds.run(request).request
        site.clock.advance(30)
    assert request.complete
    assert request.notified_at is None
    site.tick(2)
    site.notifier.close(timeout=5)
    events = [m["vault_rotator"] for m in Hooks.received]
    assert [(e["event"], e["request_id"], e["by"]) for e in events] == [
        ("succeeded", request.id, "ops@host")
    ]
    assert events[0]["attention"]["revoked"][0]["key"] == f"{site.env}/api"
    stored = site.request()
    assert stored is not None
    assert stored.notified_at is not None
    late = stored.evolve(notified_at=None, settled_at=site.clock() - 7200)
    assert not site.daemon.emergencies._open(late)


def _tick(site: Site, times: int = 1, *, call: tuple[str, ...] = ()) -> list[str]:
    """Ticks every 30 s of fake time, only the apps of ``call`` calling; the errors met."""
    ((account, keys),) = site.daemon.accounts().items()
    errors: list[str] = []
    for _ in range(times):
        errors += site.daemon.tick(account, keys).errors
        site.clock.advance(30)
        for name in call:
            got = site.kv.read(f"{site.env}/{name}")
            assert got is not None
            status = site.emulator.call(str(got.data["api_key"]))  # never a value shown
            assert status == 200, name
    return errors


def _per_key_hooks() -> list[tuple[str, str]]:
    return [
        (m["vault_rotator"]["event"], m["vault_rotator"]["key"])
        for m in Hooks.received
        if "key" in m["vault_rotator"]
    ]


def test_stalls_notify_one_by_one_while_the_request_is_unreadable(site: Site) -> None:
    """A request record this daemon cannot read (a newer schema): the round's error is
    reported each tick and the keys' stalls are webhooked one by one, not folded away."""
    site.post(site.token(["update"]), {"emergency": True})
    assert _tick(site, 2) == []
    path = f"{site.env}/vault-rotator/emergency/{site.env}"
    got = site.kv.read(path)
    assert got is not None
    site.kv.write(path, {**got.data, "schema": 99}, cas=got.version)
    errors = _tick(site)
    assert any("newer vault-rotator" in e for e in errors)
    site.clock.advance(3600)  # past pickup_timeout: each key stalls
    _tick(site)
    site.notifier.close(timeout=5)
    assert sorted(_per_key_hooks()) == [("stalled", f"{site.env}/{n}") for n in sorted(NAMES)]


def test_a_later_normal_rotation_of_a_key_done_in_the_request_notifies(site: Site) -> None:
    """A key done in the request and rotated again normally while others are still open:
    its stall is its own webhook, not folded into the request's."""
    site.post(site.token(["update"]), {"emergency": True})
    assert _tick(site, 10, call=("api",)) == []
    request = site.request()
    assert request is not None
    assert request.keys["api"].step == Step.DONE
    assert not request.settled
    answer = site.control.handle("POST", f"/v1/rotate/{site.env}/api", site.vault.token, {})
    assert answer.status < 300, answer.body
    _tick(site, 4)
    site.clock.advance(3600)
    _tick(site)
    site.notifier.close(timeout=5)
    assert ("stalled", f"{site.env}/api") in _per_key_hooks()
    assert ("stalled", f"{site.env}/batch") not in _per_key_hooks()


def test_a_replica_that_lost_the_account_folds_nothing(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once another replica leads the account, a finish this replica serves through its
    control API is webhooked as usual (its old folding set is dropped)."""
    site.post(site.token(["update"]), {"emergency": True})
    assert _tick(site, 4) == []
    monkeypatch.setattr(site.daemon.replicas, "may_tick", lambda *_args: False)
    _tick(site)
    body = {"keep_old": True}
    answer = site.control.handle("POST", f"/v1/finish/{site.env}/api", site.vault.token, body)
    assert answer.status < 300, answer.body
    site.notifier.close(timeout=5)
    assert [key for _event, key in _per_key_hooks()] == [f"{site.env}/api"]


def test_an_unexpected_error_in_a_round_is_reported_and_the_tick_goes_on(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-Vault error in one environment's round is one reported line; the rest of the
    account's tick still runs (a due key is started)."""
    site.post(site.token(["update"]), {"emergency": True})

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(site.daemon.emergencies, "_plan", broken)
    answer = site.control.handle("POST", f"/v1/rotate/{site.env}/api", site.vault.token, {})
    assert answer.status < 300, answer.body
    ((account, keys),) = site.daemon.accounts().items()
    report = site.daemon.tick(account, keys)
    assert report.errors == [f"emergency of {site.env}: unexpected RecursionError("
                             "'maximum recursion depth exceeded')"]  # fmt: skip
    record = StateStore(site.kv, f"{site.env}/vault-rotator").read(site.env, "api")[0]
    assert record.rotation is not None


def test_an_unreadable_request_leaves_status_with_its_key_rows(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request of a newer schema: GET /v1/status still answers 200 with every key row and
    a line naming the environment; `status` prints the table and that line."""
    path = f"{site.env}/vault-rotator/emergency/{site.env}"
    site.kv.write(path, {"schema": 3, "id": "r"}, cas=0)
    answer = site.control.handle("GET", "/v1/status", site.token(["read"]), {})
    assert answer.status == 200
    assert answer.body["emergencies"] == []
    (line,) = answer.body["emergency_errors"]
    assert line.startswith(f"emergency request of {site.env} unreadable: ")
    assert "newer vault-rotator (schema 3" in line
    assert len(site.control.handle("GET", "/v1/status", site.vault.token, {}).body["keys"]) == 4
    monkeypatch.setenv("VAULT_ADDR", site.vault.addr)
    monkeypatch.setenv("VAULT_TOKEN", site.vault.token)
    code = cli.main(["status", "--config", str(site.config)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"emergency request of {site.env} unreadable: " in out
    assert all(f"{site.env}/{name}" in out for name in NAMES)


# -- hostile request records (issue 20: anyone with write on the state prefix) ---------------


def _header(site: Site, **fields: Any) -> str:
    path = f"{site.env}/vault-rotator/emergency/{site.env}"
    doc = {
        "schema": 2, "id": "r1", "env": site.env, "requested_at": site.clock(), "by": "x",
        "trigger": "cli", "revoke_old_now": False, "shards": 1, "key_count": 1,
        "settled_at": None, "completed_at": None, "notified_at": None, **fields,
    }  # fmt: skip
    site.kv.write(path, doc, cas=0)
    return path


def _status_reads(site: Site) -> tuple[Any, int]:
    conn = site.daemon.runtime.conn
    before = conn.reads()
    answer = site.control.handle("GET", "/v1/status", site.vault.token, {})
    return answer, conn.reads() - before


def test_a_header_naming_100000_shards_is_refused_without_reading_them(site: Site) -> None:
    """A header claiming 100,000 shards (only shard 0 written): status refuses it in one line
    naming the bound, after reading the header alone (it read every shard: 85 s)."""
    path = _header(site, shards=100_000, key_count=20_000_000)
    site.kv.write(f"{path}/r1/0", {"schema": 2, "request_id": "r1", "shard": 0, "keys": "{}"},
                  cas=0)  # fmt: skip
    answer, reads = _status_reads(site)
    assert answer.status == 200
    (line,) = answer.body["emergency_errors"]
    assert "shards must be a count from 1 to 5" in line
    assert reads < 4 * len(NAMES) + 10, reads  # the key rows' reads, one header: no shard


def test_reading_a_request_stops_at_its_first_missing_shard(site: Site) -> None:
    """A header of 5 shards (1,000 keys) with only shard 0 written: a read of the request
    reads the header and shards 0 and 1, then refuses it naming shard 1."""
    path = _header(site, shards=5, key_count=1000)
    site.kv.write(f"{path}/r1/0", {"schema": 2, "request_id": "r1", "shard": 0, "keys": "{}"},
                  cas=0)  # fmt: skip
    store = EmergencyStore(site.daemon.runtime.kv("secret"), f"{site.env}/vault-rotator")
    conn = site.daemon.runtime.conn
    before = conn.reads()
    with pytest.raises(VaultRotatorError, match="shard 1 is missing"):
        store.read(site.env)
    assert conn.reads() - before == 3


def test_a_key_name_that_is_a_path_makes_the_request_unreadable_not_a_failed_webhook(
    site: Site,
) -> None:
    """A shard whose key is named `../../../arouter/prod/k0`: status and the tick refuse the
    request in one line naming it (status read a consumer secret as a state record, and the
    daemon settled the request with a `failed` webhook); no webhook is sent."""
    path = _header(site)
    keys = json.dumps({"../../../arouter/prod/k0": ["queued", site.clock(), site.clock()]})
    site.kv.write(f"{path}/r1/0", {"schema": 2, "request_id": "r1", "shard": 0, "keys": keys},
                  cas=0)  # fmt: skip
    answer, _ = _status_reads(site)
    (line,) = answer.body["emergency_errors"]
    assert "is not a key name" in line
    assert "\n" not in line
    ((account, keys_),) = site.daemon.accounts().items()
    errors = site.daemon.tick(account, keys_).errors
    assert any("is not a key name" in error for error in errors), errors
    site.notifier.close(timeout=5)
    assert Hooks.received == []


def test_a_malformed_state_record_is_one_unreadable_row_not_a_failed_status(
    site: Site, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone with write on the state prefix stores garbage as one key's state record: `status`
    (reading Vault) shows every other key's row, that one as unreadable with the reason, and
    exits 1 (it failed whole, one line, every row lost)."""
    store = StateStore(site.kv, f"{site.env}/vault-rotator")
    site.kv.write(store.state_path(site.env, "web"), {"schema": "x", "junk": [1, 2]}, cas=0)
    monkeypatch.setenv("VAULT_ADDR", site.vault.addr)
    monkeypatch.setenv("VAULT_TOKEN", site.vault.token)
    code = cli.main(["status", "--config", str(site.config)])
    out = capsys.readouterr().out
    assert code == 1
    assert all(f"{site.env}/{name}" in out for name in NAMES)
    assert f"{site.env}/web: unreadable: state record at " in out


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("env", "other-env", "env 'other-env' is not the environment of its path"),
        ("id", "../../x", "id '../../x' is not a request id"),
    ],
)
def test_a_request_naming_another_place_is_refused_before_it_becomes_a_path(
    site: Site, field: str, value: str, says: str
) -> None:
    """A request whose env is not its path's (the rounds saved elsewhere and its webhook was
    never sent, every per-key one folded into it) or whose id is a path is malformed, named
    in one line by status and the tick, and no key is rotated for it."""
    request = new_request("r1", site.env, list(NAMES), by="x", trigger="cli",
                          revoke_old_now=False, now=site.clock())  # fmt: skip
    doc = {**request.to_dict(), field: value}
    site.kv.write(f"{site.env}/vault-rotator/emergency/{site.env}", doc, cas=0)
    answer, _ = _status_reads(site)
    (line,) = answer.body["emergency_errors"]
    assert says in line
    ((account, keys),) = site.daemon.accounts().items()
    errors = site.daemon.tick(account, keys).errors
    assert any(says in error for error in errors), errors
    store = StateStore(site.kv, f"{site.env}/vault-rotator")
    rotations = [store.read(site.env, name)[0].rotation for name in NAMES]
    assert all(r is None or r.trigger != "emergency:r1" for r in rotations)  # (due: schedule)
