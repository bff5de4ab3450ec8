"""Hostile HTTP against the daemon's listener and the emulator's: bad bodies, floods, slow
clients and probes for unknown keys each get a bounded, clean, one-line answer."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import hvac
import pytest
from world import MANAGEMENT_KEY, no_fault

from vault_rotator.commands.run_cmd import VaultCallerAuth
from vault_rotator.daemon.control import Control
from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.http import Listener, Ready
from vault_rotator.daemon.metrics import Metrics
from vault_rotator.emulator import Emulator
from vault_rotator.policy import load_policies
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.vault_server import VaultServer

ENV_CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {env}/management
  usage_lag: 1s
  poll_interval: 30s
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  pickup_timeout: 60s
  drain_period: 2s
  drain_timeout: 60s
keys:
  - name: app
    secret_path: {env}/app
    allowed_providers: [openai]
  - name: worker
    secret_path: {env}/worker
    allowed_providers: [openai]
"""


@dataclass
class Served:
    """A real daemon (real Vault, emulator, two environments of policies) behind listeners."""

    vault: VaultServer
    control: Control
    config: Path
    envs: tuple[str, str]
    listener: Listener = field(init=False)  # started by served_daemon, with listen()
    extra: list[Listener] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return listener_address(self.listener)

    def control_path(self, env: str, name: str) -> str:
        return f"secret/data/{env}/vault-rotator/control/{env}/{name}"

    def token(self, rules: str | None = None) -> str:
        """A fresh Vault token: the default policy plus ``rules`` if given."""
        admin = hvac.Client(url=self.vault.addr, token=self.vault.token)
        policies = ["default"]
        if rules is not None:
            name = f"p{uuid.uuid4().hex[:10]}"
            admin.sys.create_or_update_policy(name, rules)
            policies.append(name)
        created = admin.auth.token.create(policies=policies, ttl="30m", no_default_policy=False)
        return str(created["auth"]["client_token"])

    def listen(self, **options: Unpack[ListenerOptions]) -> Listener:
        """Another listener on the same daemon with other options (stopped with the fixture)."""
        listener = Listener(
            "127.0.0.1",
            0,
            control=self.control,
            ready=Ready(lambda: None),
            metrics=lambda: b"# none\n",
            **options,
        )
        listener.start()
        self.extra.append(listener)
        return listener


class ListenerOptions(TypedDict, total=False):
    """The limits of a :class:`Listener` that these tests tighten."""

    read_timeout: float
    max_connections: int


def listener_address(listener: Listener) -> tuple[str, int]:
    host, port = listener.server.server_address[:2]
    return str(host), int(port)


@contextlib.contextmanager
def served_daemon(
    vault: VaultServer, config: Path, **options: Unpack[ListenerOptions]
) -> Iterator[Served]:
    """Two environments of two keys each on one emulator, a real daemon, a started listener."""
    tag = f"h{uuid.uuid4().hex[:8]}"
    envs = (f"{tag}-d1", f"{tag}-d2")
    emulator = Emulator(dialect="c", management_keys=[MANAGEMENT_KEY]).start()
    conn = VaultConnection(vault.addr, vault.token)
    kv = conn.kv("secret")
    for env in envs:
        kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        for name in ("app", "worker"):
            key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
            kv.write(f"{env}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
        (config / f"{env}.yaml").write_text(ENV_CONFIG.format(env=env, base_url=emulator.base_url))
    daemon = Daemon(
        load_policies(config), Runtime(conn), notifier=None, metrics=Metrics(), fault=no_fault
    )
    control = Control(daemon, VaultCallerAuth(conn))
    served = Served(vault, control, config, envs)
    served.listener = served.listen(**options)
    try:
        yield served
    finally:
        for listener in served.extra:
            listener.stop()
        emulator.stop()
        conn.close()


@pytest.fixture(scope="module")
def served(vault: VaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A served daemon shared by this module's tests (read timeout 1 s)."""
    with served_daemon(vault, tmp_path_factory.mktemp("hostile"), read_timeout=1.0) as served:
        yield served


@dataclass
class Answer:
    """An HTTP answer read off a raw socket."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def error(self) -> str:
        document = json.loads(self.body)
        assert isinstance(document, dict), self.body
        return str(document["error"])


def exchange(address: tuple[str, int], raw: bytes, *, timeout: float = 10.0) -> Answer:
    """Send raw bytes, read one whole answer (the server closes the connection after it)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server may answer before reading it all
            sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Answer(response.status, response.headers, response.read())


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    body: bytes = b"",
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One request with a correct Content-Length unless ``headers`` says otherwise."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    given = headers or {}
    if "Content-Length" not in given:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in given.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return exchange(address, head + body, timeout=timeout)


def assert_clean_error(answer: Answer, status: int) -> str:
    """A JSON object ``{"error": one line}`` with the status expected; returns the message."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["Content-Type"] == "application/json"
    assert b"\n" not in answer.body.rstrip(b"\n")
    message = answer.error
    assert message
    assert "\n" not in message
    return message


# -- item 6: bad bodies ------------------------------------------------------------------------


def test_thirty_thousand_nested_brackets_get_a_400_not_a_dropped_connection(
    served: Served, capfd: pytest.CaptureFixture[str]
) -> None:
    """A body of 30,000 nested brackets is a one-line 400, and the daemon prints no traceback."""
    env = served.envs[0]
    for body in (b"[" * 30_000, b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 12_000):
        answer = request(served.address, "POST", f"/v1/rotate/{env}/app", body)
        assert "JSON" in assert_clean_error(answer, 400)
    assert "Traceback" not in capfd.readouterr().err


BAD_BODIES = [
    pytest.param(b"{", 400, id="invalid-json"),
    pytest.param(b"\xff\xfe\x00garbage", 400, id="not-utf8"),
    pytest.param(b"[1, 2]", 400, id="array"),
    pytest.param(b'"text"', 400, id="string"),
    pytest.param(b"null", 400, id="null"),
    pytest.param(b"1" * 5000, 400, id="huge-integer"),
    pytest.param(b'{"emergency": "yes"}', 400, id="wrong-type"),
    pytest.param(b'{"emergency": 1}', 400, id="number-for-bool"),
    pytest.param(b'{"surprise": true}', 400, id="unknown-field"),
    pytest.param(b'{"revoke_old_now": true}', 400, id="revoke-without-emergency"),
    pytest.param(b" " * (65 * 1024), 413, id="over-64KiB"),
]


@pytest.mark.parametrize(("body", "status"), BAD_BODIES)
def test_bad_bodies_each_get_a_one_line_4xx(served: Served, body: bytes, status: int) -> None:
    """Invalid, non-object, mistyped, unknown-field or oversized bodies: a one-line JSON 4xx."""
    token = served.token()  # valid, no capabilities: the body is judged before authorisation
    answer = request(served.address, "POST", f"/v1/rotate/{served.envs[0]}/app", body, token=token)
    assert_clean_error(answer, status)
    assert token not in answer.body.decode()


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("finish", b'{"keep_old": "true"}', "keep_old"),
        ("freeze", b'{"reason": 7}', "reason"),
        ("abort", b'{"keep_old": true}', "keep_old"),
        ("unfreeze", b'{"reason": "x"}', "reason"),
        ("resume", b'{"reason": "x"}', "reason"),
    ],
)
def test_each_route_names_the_field_it_refuses(
    served: Served, route: str, body: bytes, field: str
) -> None:
    """Each action route checks its own fields: a wrong or foreign one is a 400 naming it."""
    token = served.token()
    answer = request(served.address, "POST", f"/v1/{route}/{served.envs[0]}/app", body, token=token)
    assert field in assert_clean_error(answer, 400)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Content-Length": "abc"}, 400, id="not-a-number"),
        pytest.param({"Content-Length": "-5"}, 400, id="negative"),
        pytest.param({"Content-Length": "+2"}, 400, id="signed"),
        pytest.param({"Content-Length": "9" * 30}, 413, id="enormous"),
        pytest.param({"Content-Length": "2\r\nContent-Length: 3"}, 400, id="two-lengths"),
        pytest.param({"Transfer-Encoding": "chunked"}, 411, id="chunked"),
    ],
)
def test_content_length_lies_get_a_one_line_4xx(
    served: Served, headers: dict[str, str], status: int
) -> None:
    """A Content-Length that is not one plain number, or chunked framing: a one-line JSON 4xx."""
    answer = request(
        served.address, "POST", f"/v1/rotate/{served.envs[0]}/app", b"{}", headers=headers
    )
    assert_clean_error(answer, status)


def test_a_get_with_a_body_and_other_methods_get_json(served: Served) -> None:
    """A body on GET is read (no reset), and methods the API does not serve are JSON errors."""
    token = served.token()
    answer = request(served.address, "GET", "/v1/status", b'{"x": 1}', token=token)
    assert "x" in assert_clean_error(answer, 400)
    for method in ("PUT", "DELETE", "OPTIONS", "BREW"):
        answer = request(served.address, method, f"/v1/rotate/{served.envs[0]}/app", token=token)
        assert_clean_error(answer, 405)


# -- item 8: backlog, read timeout, header bounds -------------------------------------------


def _flood(address: tuple[str, int], path: str, clients: int = 200) -> list[int | str]:
    """``clients`` connections opened at once, each one GET; every status or error met."""
    barrier = threading.Barrier(clients)
    results: list[int | str] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait(timeout=30)
        try:
            answer = request(address, "GET", path, headers={"Connection": "close"}, timeout=20)
            outcome: int | str = answer.status
        except OSError as exc:
            outcome = type(exc).__name__
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_hundred_concurrent_clients_all_get_200_from_the_daemon(served: Served) -> None:
    """200 clients connecting at once to /healthz: no reset, every one answered 200."""
    results = _flood(served.address, "/healthz")
    assert results == [200] * 200, sorted(set(map(str, results)))


def test_two_hundred_concurrent_clients_all_get_200_from_the_emulator() -> None:
    """200 clients connecting at once to the emulator: no reset, every one answered 200."""
    with Emulator(dialect="c", management_keys=[MANAGEMENT_KEY]) as emulator:
        host, port = emulator.base_url.removeprefix("http://").rsplit(":", 1)
        results = _flood((host, int(port)), "/_emulator/requests")
    assert results == [200] * 200, sorted(set(map(str, results)))


def test_a_partial_body_is_cut_off_within_the_read_timeout(served: Served) -> None:
    """Content-Length 100 and 2 bytes sent: a 408 within the read timeout, the thread freed."""
    listener = served.listen(read_timeout=0.5)
    began = time.monotonic()
    answer = request(
        listener_address(listener),
        "POST",
        f"/v1/rotate/{served.envs[0]}/app",
        b"{}",
        headers={"Content-Length": "100"},
        timeout=5,
    )
    took = time.monotonic() - began
    assert_clean_error(answer, 408)
    assert took < 2.0


def test_a_trickling_client_is_cut_off_by_a_total_deadline(served: Served) -> None:
    """Headers sent a byte every 0.1 s: cut off after the total read timeout, not per byte."""
    listener = served.listen(read_timeout=0.5)
    head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 100
    began = time.monotonic()
    closed_after: float | None = None
    with socket.create_connection(listener_address(listener), timeout=5) as sock:
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            closed_after = time.monotonic() - began
        if closed_after is None:  # all sent; the server must have answered and closed
            closed_after = time.monotonic() - began
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            reply = sock.recv(4096)
            assert reply == b"" or reply.startswith(b"HTTP/1.0 408")
    assert closed_after < 3.0


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("".join(f"X-H{i}: v\r\n" for i in range(150)), id="150-headers"),
        pytest.param("X-Big: " + "b" * 70_000 + "\r\n", id="70KB-header"),
        pytest.param("".join(f"X-H{i}: {'c' * 900}\r\n" for i in range(90)), id="81KB-of-headers"),
    ],
)
def test_oversized_request_heads_get_a_431(served: Served, extra: str) -> None:
    """Too many headers, a too long one, or too many bytes of them: a one-line JSON 431."""
    raw = f"GET /healthz HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()
    assert_clean_error(exchange(served.address, raw), 431)


# -- item 9: no information about unknown environments or keys -------------------------------


def test_unknown_environment_or_key_answers_exactly_the_forbidden_403(served: Served) -> None:
    """No capability: an unknown env or key gets the very 403 a forbidden known key gets."""
    token = served.token()
    d1, d2 = served.envs

    def probe(route: str, ref: str) -> tuple[int, str]:
        answer = request(served.address, "POST", f"/v1/{route}/{ref}", b"{}", token=token)
        return answer.status, answer.body.decode().replace(ref, "REF")

    known = probe("rotate", f"{d1}/app")
    assert known[0] == 403
    for ref in (f"{d1}/ghost", "nowhere/app", f"{d1}x/app"):
        assert probe("rotate", ref) == known
    assert probe("freeze", "nowhere") == probe("freeze", d1)
    for ref in (f"{d1}/ghost", "nowhere/app"):
        body = request(served.address, "POST", f"/v1/abort/{ref}", token=token).body.decode()
        for leak in ("known", "worker", d2, str(served.config), ".yaml"):
            assert leak not in body


def test_root_token_gets_a_404_naming_only_the_requested_ref(served: Served) -> None:
    """A root token asking for an unknown key or env: 404 naming that ref, nothing else."""
    d1, d2 = served.envs
    for ref in (f"{d1}/ghost", "nowhere/app"):
        answer = request(served.address, "POST", f"/v1/rotate/{ref}", token=served.vault.token)
        message = assert_clean_error(answer, 404)
        assert ref in message
        for leak in ("known", "worker", d2, str(served.config), ".yaml"):
            assert leak not in message


def test_a_token_allowed_on_an_unknown_keys_path_gets_a_404(served: Served) -> None:
    """A token holding update on the would-be control path of an unknown key is told 404."""
    d1 = served.envs[0]
    token = served.token(
        f'path "{served.control_path(d1, "ghost")}" {{ capabilities = ["update"] }}'
    )
    answer = request(served.address, "POST", f"/v1/rotate/{d1}/ghost", token=token)
    assert f"{d1}/ghost" in assert_clean_error(answer, 404)
    other = request(served.address, "POST", f"/v1/rotate/{d1}/app", token=token)
    assert_clean_error(other, 403)


def test_connections_beyond_the_limit_get_an_immediate_503(served: Served) -> None:
    """With every connection slot held by a silent client, the next one gets a JSON 503 at once."""
    listener = served.listen(read_timeout=3.0, max_connections=2)
    address = listener_address(listener)
    idle = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted and holding a slot
        began = time.monotonic()
        answer = request(address, "GET", "/healthz", timeout=5)
        assert time.monotonic() - began < 1.0
        assert_clean_error(answer, 503)
        assert answer.headers["Retry-After"] == "1"
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while request(address, "GET", "/healthz").status != 200:  # slots come back
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_freeze_answer_shows_only_what_the_caller_targeted(served: Served) -> None:
    """Freezing one key does not disclose other environments' freezes, who made them or why."""
    d1 = served.envs[0]
    root = served.token(
        f'path "secret/data/{d1}/vault-rotator/control/*" {{ capabilities = ["update", "read"] }}'
    )
    request(
        served.address, "POST", f"/v1/freeze/{d1}/worker", b'{"reason": "incident-42"}', token=root
    )
    mine = served.token(
        f'path "{served.control_path(d1, "app")}" {{ capabilities = ["update", "read"] }}'
    )
    answer = request(
        served.address, "POST", f"/v1/freeze/{d1}/app", b'{"reason": "mine"}', token=mine
    )
    assert answer.status == 200
    assert json.loads(answer.body) == {"target": f"{d1}/app", "frozen": True}
    answer = request(served.address, "POST", f"/v1/unfreeze/{d1}/app", b"{}", token=mine)
    assert json.loads(answer.body) == {"target": f"{d1}/app", "frozen": False}
    request(served.address, "POST", f"/v1/unfreeze/{d1}/worker", b"{}", token=root)
