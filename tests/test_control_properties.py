"""Properties of the daemon's listener over arbitrary requests: whatever a client sends, the
answer is one well-formed HTTP response with a JSON body and a documented status, in bounded
time, and the daemon logs no traceback.

Requests go over raw sockets to a real daemon (real Vault, real emulator, real token checks):
tokens are drawn by role (root, none, reader, operator, garbage) and only resolved when sent,
so a falsifying example never prints one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_http import Served, served_daemon

from vault_rotator.testing.vault_server import VaultServer

READ_TIMEOUT_S = 0.3
ANSWER_WITHIN_S = 10.0  # the slowest honest answer (a real rotation's first steps) and then some
# Every status the listener documents (README "HTTP listener").
DOCUMENTED = {200, 202, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 431, 502, 503, 505}
HEALTH = ("/healthz", "/readyz", "/metrics")
VERBS = ("rotate", "resume", "finish", "abort", "freeze", "unfreeze")
ROLES = ("root", "none", "reader", "operator")


@dataclass(frozen=True)
class Raw:
    """A request as bytes, with its token named by role; ``{D1}``/``{D2}`` are the two envs."""

    method: str
    path: str
    version: str
    auth: str | None  # "{root}" etc. stand for tokens
    length: str | None  # the Content-Length header to send; None: none at all
    extra: tuple[tuple[str, str], ...]
    body: bytes

    def encode(self, served: Served, tokens: dict[str, str]) -> bytes:
        d1, d2 = served.envs
        path = self.path.replace("{D1}", d1).replace("{D2}", d2)
        line = " ".join(part for part in (self.method, path, self.version) if part)
        headers = [("Host", "test")]
        if self.auth is not None:
            auth = self.auth
            for role, token in tokens.items():
                auth = auth.replace("{" + role + "}", token)
            headers.append(("Authorization", auth))
        if self.length is not None:
            headers.append(("Content-Length", self.length.replace("EXACT", str(len(self.body)))))
        headers += self.extra
        head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        return head.encode("utf-8", "surrogatepass") + self.body


no_crlf = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))
segment = st.one_of(
    st.sampled_from(["{D1}", "{D2}", "app", "worker", "ghost", "..", ".", "%2F", "%2e%2e", ""]),
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
    st.text(max_size=12),
)
paths = st.one_of(
    st.sampled_from(
        [
            "/v1/status",
            "/v1/rotate/{D1}/app",
            "/v1/finish/{D1}/app",
            "/v1/abort/{D1}/worker",
            "/v1/freeze/{D1}",
            "/v1/unfreeze/{D1}/app",
            "/v1/rotate/{D2}/app",
            "/v1/rotate/{D1}/ghost",
            "/v1/freeze/nowhere",
            "/v1/rotate/../../../etc/passwd",
            "/v1/rotate/{D1}%2Fapp",
            "/v1/rotate/{D1}/app/",
            "/v1/rotate/{D1}/app?emergency=1",
            "//v1/status",
            "/v1/status/..",
            "*",
            "http://evil.example/v1/status",
            *HEALTH,
        ]
    ),
    st.builds(
        lambda verb, parts: "/v1/" + verb + "/" + "/".join(parts),
        st.sampled_from(VERBS),
        st.lists(segment, min_size=0, max_size=3),
    ),
    st.text(max_size=80).map(lambda text: "/" + text),
    st.integers(1, 70_000).map(lambda n: "/v1/rotate/" + "a" * n),
)
auths = st.one_of(
    st.none(),
    st.sampled_from(ROLES).map(lambda role: "Bearer {" + role + "}"),
    st.sampled_from(ROLES).map(lambda role: "bearer   {" + role + "}  "),
    st.sampled_from(
        ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer s.bogus0000000000000000000"]
    ),
    no_crlf.map(lambda text: "Bearer " + text),
    no_crlf,
)
lengths = st.one_of(
    st.just("EXACT"),
    st.none(),
    st.integers(0, 300).map(str),
    st.sampled_from(
        ["abc", "-1", "+5", "1e3", "5, 5", "99999999999999999999", "\uff10", " EXACT "]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
route_fields = st.fixed_dictionaries(
    {},
    optional={
        "emergency": st.booleans(),
        "revoke_old_now": st.booleans(),
        "keep_old": st.booleans(),
        "reason": st.text(max_size=30),
    },
)
bodies = st.one_of(
    st.just(b""),
    route_fields.map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.integers(1, 60_000).map(lambda depth: b"[" * depth),
    st.integers(1, 20).map(lambda kib: b" " * (kib * 8 * 1024)),
)
extras = st.lists(
    st.sampled_from(
        [
            ("Transfer-Encoding", "chunked"),
            ("Expect", "100-continue"),
            ("Connection", "keep-alive"),
            ("Content-Length", "7"),
            ("Authorization", "Bearer {none}"),
            ("Content-Type", "text/plain"),
        ]
    ),
    max_size=2,
).map(tuple)
requests = st.builds(
    Raw,
    method=st.one_of(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get"]),
        st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True),
    ),
    path=paths,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "", "HTTP/2.0", "HTTP/1.x"]),
    auth=auths,
    length=lengths,
    extra=extras,
    body=bodies,
)


class World:
    """The served daemon and a token per role; its repr shows neither (hypothesis prints it)."""

    def __init__(self, served: Served, tokens: dict[str, str]) -> None:
        self.served = served
        self.tokens = tokens

    def __repr__(self) -> str:
        return "World(<served daemon>, <tokens>)"


@pytest.fixture(scope="module")
def world(vault: VaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A served daemon with a short read timeout and a token for each role."""
    config = tmp_path_factory.mktemp("properties")
    with served_daemon(vault, config, read_timeout=READ_TIMEOUT_S) as served:
        d1 = served.envs[0]
        tokens = {
            "root": vault.token,
            "none": served.token(),
            "reader": served.token(
                f'path "secret/data/{d1}/vault-rotator/control/*" {{ capabilities = ["read"] }}'
            ),
            "operator": served.token(
                f'path "secret/data/{d1}/vault-rotator/control/*" '
                '{ capabilities = ["read", "update"] }'
            ),
        }
        yield World(served, tokens)


def answer_of(
    served: Served, raw: bytes, method: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Send ``raw`` and read one whole answer, within ANSWER_WITHIN_S."""
    with socket.create_connection(served.address, timeout=ANSWER_WITHIN_S) as sock:
        with contextlib.suppress(OSError):  # answered and closed before all was sent
            sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.headers, response.read()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=requests)
def test_any_request_gets_one_well_formed_json_answer_in_bounded_time(
    world: World, raw: Raw, capfd: pytest.CaptureFixture[str]
) -> None:
    """Any method, path, Authorization, Content-Length and body: a documented status, JSON."""
    served, tokens = world.served, world.tokens
    began = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        status, headers, body = answer_of(served, raw.encode(served, tokens), raw.method)
    assert time.monotonic() - began < ANSWER_WITHIN_S
    assert status in DOCUMENTED, (status, body[:200])
    health = raw.method in ("GET", "HEAD") and raw.path in HEALTH and status in (200, 503)
    if not health:
        assert headers["Content-Type"] == "application/json", (status, headers["Content-Type"])
        if raw.method != "HEAD":
            document = json.loads(body)
            assert isinstance(document, dict)
            if status >= 400:
                assert isinstance(document["error"], str)
                assert "\n" not in document["error"]
    text = body.decode("utf-8", "replace")
    for token in tokens.values():
        assert token not in text
    for entry in logs:
        assert "exc_info" not in entry
        assert "exception" not in entry
        assert entry["log_level"] not in ("error", "critical")
        assert entry["event"] not in ("http request failed", "control request failed")
    assert "Traceback" not in capfd.readouterr().err


route_paths = st.builds(
    lambda verb, env, name: (
        "/v1/status" if verb == "status" else f"/v1/{verb}/{env}" + (f"/{name}" if name else "")
    ),
    st.sampled_from((*VERBS, "status")),
    st.sampled_from(["{D1}", "{D2}", "nowhere"]),
    st.sampled_from(["app", "worker", "ghost", None]),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    method=st.sampled_from(["POST"] * 6 + ["GET", "PUT"]),
    path=route_paths,
    role=st.sampled_from(ROLES),
    body=st.one_of(st.just({}), st.just({"keep_old": True}), route_fields, json_values).map(
        lambda value: json.dumps(value).encode()
    ),
)
def test_well_framed_control_requests_act_or_refuse_without_telling_more(
    world: World, method: str, path: str, role: str, body: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    """Real tokens on real routes with any JSON: a documented answer, and an unprivileged
    token never learns which environments or keys exist (403 for unknown and forbidden alike)."""
    served, tokens = world.served, world.tokens
    raw = Raw(method, path, "HTTP/1.1", "Bearer {" + role + "}", "EXACT", (), body)
    with structlog.testing.capture_logs() as logs:
        status, headers, answer = answer_of(served, raw.encode(served, tokens), method)
    assert status in DOCUMENTED - {408, 411, 413, 414, 431, 505}, (status, answer[:200])
    assert headers["Content-Type"] == "application/json"
    document = json.loads(answer)
    d1, d2 = served.envs
    action = method == "POST" and path != "/v1/status" and status != 400
    if role in ("none", "reader") and action:
        assert status == 403, (status, document)
        asked = path.replace("{D1}", d1).replace("{D2}", d2).split("/", 3)[3]
        assert document == {"error": f"this token lacks update on the control path of {asked}"}
    if role == "operator" and action and "{D1}" not in path:
        assert status in (403, 404), (status, document)
    text = answer.decode()
    for secret in (*tokens.values(), str(served.config), "lr_live_", "lr_mgmt_"):
        assert secret not in text
    assert not [e for e in logs if e["log_level"] in ("error", "critical") or "exc_info" in e]
    assert "Traceback" not in capfd.readouterr().err
