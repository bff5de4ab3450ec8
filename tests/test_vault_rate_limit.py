"""Vault answering 429 (a rate-limit quota) is backed off on every path, then given up in one
line (issue 19): through a loopback proxy in front of real OpenBao that answers 429 a given
number of times per call, and against a real OpenBao rate-limit quota."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import hvac
import pytest

from vault_rotator.errors import StoreUnavailableError
from vault_rotator.store.auth import AppRoleAuth
from vault_rotator.store.backoff import (
    DEADLINE_S,
    FIRST_WAIT_S,
    MAX_WAIT_S,
    Backoff,
    retry_after_seconds,
)
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

T = TypeVar("T")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class Throttle:
    """A loopback proxy to Vault answering 429 to the first ``times`` tries of each call
    (method and path), then passing the call on; every request and its status is logged."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.times = 0
        self.retry_after: str | None = None
        self.seen: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        throttle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                throttle.handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _any

            def log_message(self, *_args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"

    def refuse(self, times: int, retry_after: str | None = None) -> None:
        with self.lock:
            self.times, self.retry_after = times, retry_after
            self.seen.clear()
            self.log.clear()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        path = request.path.split("?", 1)[0]
        with self.lock:
            self.seen[(request.command, path)] += 1
            refused = self.seen[(request.command, path)] <= self.times
        if refused:
            payload = b'{"errors":["request path: rate limit quota exceeded"]}'
            headers = {"Content-Type": "application/json"}
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            self._answer(request, 429, headers, payload)
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname or "", self.upstream.port)
        sent = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request(request.command, request.path, body=body or None, headers=sent)
        answer = upstream.getresponse()
        payload = answer.read()
        kept = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP}
        upstream.close()
        self._answer(request, answer.status, kept, payload)

    def _answer(
        self, request: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        with self.lock:
            self.log.append((request.command, request.path.split("?", 1)[0], status))
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def refusals(self) -> int:
        return sum(1 for _m, _p, status in self.log if status == 429)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def throttle(vault: VaultServer) -> Iterator[Throttle]:
    proxy = Throttle(vault.addr)
    yield proxy
    proxy.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _backoff(clock: FakeClock, deadline_s: float = DEADLINE_S) -> Backoff:
    """Waits that advance a fake clock (no test sleeps), jitter at its middle."""
    return Backoff(
        deadline_s=deadline_s, sleep=clock.sleep, clock=clock, wall=clock, jitter=lambda: 0.5
    )


def _connect(throttle: Throttle, vault: VaultServer, backoff: Backoff) -> VaultConnection:
    return VaultConnection(throttle.addr, vault.token, backoff=backoff)


# -- the rules -------------------------------------------------------------------------------


def test_waits_double_with_jitter_and_never_undercut_retry_after() -> None:
    """The waits double from FIRST_WAIT_S to MAX_WAIT_S, each between half of its step and
    all of it; a Retry-After is a floor; one longer than allowed, or a wait past the deadline,
    gives up (None)."""
    low = Backoff(jitter=lambda: 0.0)
    high = Backoff(jitter=lambda: 0.999)
    steps = [min(MAX_WAIT_S, FIRST_WAIT_S * 2**n) for n in range(7)]
    assert [low.wait(n, None, 0.0) for n in range(7)] == [s / 2 for s in steps]
    assert all(
        s / 2 <= (high.wait(n, None, 0.0) or 0) < s for n, s in enumerate(steps)
    )  # fmt: skip
    assert low.wait(0, "3", 0.0) == 3.0
    assert low.wait(0, "0", 0.0) == FIRST_WAIT_S / 2  # Vault says 0 within the second
    assert low.wait(0, "30", 0.0) is None
    assert low.wait(0, None, low.deadline_s) is None
    assert low.wait(low.max_tries - 1, None, 0.0) is None


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """Delta-seconds and HTTP dates are read; anything else is no Retry-After."""
    now = 1_800_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 7, UTC), usegmt=True)
    assert retry_after_seconds("12", now) == 12.0
    assert retry_after_seconds(date, now) == 7.0
    for junk in (None, "", "soon", "-1", "1.5", "²", "9" * 40):
        assert retry_after_seconds(junk, now) is None


# -- through a proxy answering 429 -----------------------------------------------------------


def test_kv_calls_go_through_after_429s_and_a_cas_write_is_applied_once(
    vault: VaultServer, throttle: Throttle, clock: FakeClock
) -> None:
    """Every KV call of the lean transport (write by CAS, read, metadata, list, custom
    metadata, destroy) answered 429 twice succeeds on its third try; each CAS write lands
    once (versions 1 and 2: a refused try that had been applied would fail the next CAS)."""
    conn = _connect(throttle, vault, _backoff(clock))
    assert conn.transport is not None
    kv = conn.kv("secret")
    folder = f"rl-{uuid.uuid4().hex[:8]}"
    path = f"{folder}/app"
    conn.session.token()  # our token's lookup (hvac), before the KV calls

    def thrice(call: Callable[[], T]) -> T:
        throttle.refuse(2)
        result = call()
        assert [s for _m, _p, s in throttle.log][:2] == [429, 429], throttle.log
        assert [s // 100 for _m, _p, s in throttle.log][2:] == [2], throttle.log
        return result

    assert thrice(lambda: kv.write(path, {"n": 1}, cas=0)) == 1
    assert thrice(lambda: kv.write(path, {"n": 2}, cas=1)) == 2
    got = thrice(lambda: kv.read(path))
    assert got is not None
    assert (got.version, dict(got.data)) == (2, {"n": 2})
    assert thrice(lambda: kv.current_version(path)) == 2
    assert thrice(lambda: kv.list(folder)) == ["app"]
    thrice(lambda: kv.set_custom_metadata(path, {"managed-by": "test"}))
    thrice(lambda: kv.destroy(path))
    assert kv.read(path) is None
    assert clock.slept > 0  # waited, on the fake clock
    conn.close()


def test_hvac_calls_go_through_after_429s(
    vault: VaultServer, throttle: Throttle, clock: FakeClock, tmp_path: Path
) -> None:
    """hvac's calls answered 429 twice each go through: an AppRole login, our token's lookup,
    a caller token's lookup and capabilities, a KV call sent through hvac."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    admin.sys.enable_auth_method("approle", path=mount)
    admin.sys.create_or_update_policy(mount, 'path "secret/data/*" { capabilities = ["read"] }')
    admin.auth.approle.create_or_update_approle("r", mount_point=mount, token_policies=[mount])
    role_id = admin.auth.approle.read_role_id("r", mount_point=mount)["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id("r", mount_point=mount)["data"]["secret_id"]
    (tmp_path / "role").write_text(role_id)
    (tmp_path / "secret").write_text(secret_id)
    throttle.refuse(2)
    conn = VaultConnection(
        throttle.addr,
        auth=AppRoleAuth(tmp_path / "role", tmp_path / "secret", mount=mount),
        backoff=_backoff(clock),
    )
    try:
        conn.session.token()  # the login
        assert conn.lookup_token(vault.token).accessor
        path = "secret/data/anything"
        assert "root" in conn.capabilities_of(vault.token, [path])[path]
        conn.transport = None  # KV through hvac, as behind a proxy
        assert conn.kv("secret").read(f"rl-{uuid.uuid4().hex[:8]}") is None
        kinds = {p for _m, p, _s in throttle.log}
        assert f"/v1/auth/{mount}/login" in kinds
        assert "/v1/auth/token/lookup-self" in kinds
        assert "/v1/sys/capabilities-self" in kinds
        statuses = Counter((m, p) for m, p, s in throttle.log if s != 429)
        refused = Counter((m, p) for m, p, s in throttle.log if s == 429)
        assert all(refused[call] == 2 for call in statuses), throttle.log
    finally:
        conn.close()
        admin.sys.disable_auth_method(mount)
        admin.sys.delete_policy(mount)
        admin.adapter.close()


def test_giving_up_is_one_transient_line_naming_vault_the_path_and_429(
    vault: VaultServer, throttle: Throttle, clock: FakeClock
) -> None:
    """Refused for good: after waits within the deadline, a one-line StoreUnavailableError
    naming Vault, the path and "rate limited (429)", never the token; a Retry-After longer
    than RETRY_AFTER_MAX_S gives up at once, without a wait."""
    conn = _connect(throttle, vault, _backoff(clock, deadline_s=3.0))
    conn.session.token()
    path = f"rl-{uuid.uuid4().hex[:8]}/app"
    throttle.refuse(10**6)
    with pytest.raises(StoreUnavailableError) as caught:
        conn.kv("secret").write(path, {"n": 1}, cas=0)
    message = str(caught.value)
    assert message.startswith("Vault rate limited (429) write on secret/")
    assert path in message
    assert "\n" not in message
    assert vault.token not in message
    assert 0 < clock.slept <= 3.0
    tries = throttle.refusals()
    assert 3 <= tries <= 12
    throttle.refuse(10**6, retry_after="30")
    slept = clock.slept
    with pytest.raises(StoreUnavailableError, match=r"rate limited \(429\)"):
        conn.kv("secret").read(path)
    assert clock.slept == slept
    assert throttle.refusals() == 1
    conn.close()


def test_a_standbys_429_on_sys_health_is_an_answer_not_retried(
    vault: VaultServer, throttle: Throttle, clock: FakeClock
) -> None:
    """sys/health answers 429 on an unsealed standby: the health check reads it as is."""
    conn = _connect(throttle, vault, _backoff(clock))
    throttle.refuse(10**6)
    with pytest.raises(StoreUnavailableError):
        conn.check()  # the token lookup after it is refused for good
    health = [s for _m, p, s in throttle.log if p == "/v1/sys/health"]
    assert health == [429]
    conn.close()


# -- a real rate-limit quota -------------------------------------------------------------------


def test_a_real_openbao_rate_limit_quota_is_waited_out(vault: VaultServer) -> None:
    """A KV mount under a quota of 4 requests a second: 16 calls in a row all succeed, some
    after a 429 and a wait (real ones, a few seconds in all)."""
    admin = hvac.Client(url=vault.addr, token=vault.token)
    mount = f"rl{uuid.uuid4().hex[:8]}"
    quota = f"q-{mount}"
    admin.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    admin.adapter.post("/v1/sys/quotas/config", json={"enable_rate_limit_response_headers": True})
    admin.adapter.post(
        f"/v1/sys/quotas/rate-limit/{quota}",
        json={"path": f"{mount}/", "rate": 4, "interval": "1s"},
    )
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    conn = VaultConnection(vault.addr, vault.token, backoff=Backoff(sleep=sleep))
    try:
        kv = conn.kv(mount)
        for n in range(8):
            assert kv.write("app", {"n": n}, cas=n) == n + 1
            got = kv.read("app")
            assert got is not None
            assert got.data == {"n": n}
        assert waits
    finally:
        conn.close()
        admin.adapter.delete(f"/v1/sys/quotas/rate-limit/{quota}")
        admin.sys.disable_secrets_engine(mount)
        admin.adapter.close()
