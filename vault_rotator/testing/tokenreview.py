"""A stand-in for Kubernetes' TokenReview API, to test Vault's ``kubernetes`` auth method.

Vault (OpenBao) logs a pod in by reading the claims of its service-account JWT and asking the
cluster's API server, ``POST /apis/authentication.k8s.io/v1/tokenreviews``, whether the token
is still valid. :class:`TokenReviewServer` answers that one route on loopback, over HTTPS with a
self-signed certificate made by the ``openssl`` command (:attr:`~TokenReviewServer.ca_cert` is
what Vault's ``kubernetes_ca_cert`` wants; off-cluster, Vault requires one even for a plain-HTTP
host, so ``tls=False`` suits only servers that tolerate a placeholder, as OpenBao 2.x does).
It answers ``authenticated: true`` with the account's username
(``system:serviceaccount:<namespace>:<name>``), uid and groups for a JWT it issued and has not
revoked, ``authenticated: false`` for anything else. With ``reviewer_token`` set it also
requires Vault's ``token_reviewer_jwt`` as the bearer, like an API server would.

The JWTs it issues have the claims of a projected service-account token (``iss``, ``aud``,
``exp``, ``iat``, ``sub``, ``kubernetes.io: {namespace, serviceaccount: {name, uid}}``) and an
``RS256`` header, but their signature is meaningless: Vault checks signatures only when the
auth method is configured with ``pem_keys``, and leaves validity to the TokenReview answer.

::

    with TokenReviewServer() as k8s:
        jwt = k8s.issue("apps", "vault-rotator")
        # auth/kubernetes/config: kubernetes_host=k8s.url; then log in with jwt
        k8s.revoke(jwt)  # the next review of jwt answers authenticated=false
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A Kubernetes service account as a TokenReview reports it."""

    namespace: str
    name: str
    uid: str

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> list[str]:
        return [
            "system:serviceaccounts",
            f"system:serviceaccounts:{self.namespace}",
            "system:authenticated",
        ]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_jwt(
    account: ServiceAccount,
    *,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = DEFAULT_ISSUER,
    lifetime_s: float = 3600.0,
    now: Callable[[], float] = time.time,
) -> str:
    """A projected service-account token for ``account`` (RS256 header, unverifiable signature).

    ``exp`` is checked by Vault against its own clock, hence the real-time default of ``now``.
    """
    issued = int(now())
    header = {"alg": "RS256", "kid": "vault-rotator-test", "typ": "JWT"}
    claims = {
        "iss": issuer,
        "aud": [audience],
        "sub": account.username,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(lifetime_s),
        "kubernetes.io": {
            "namespace": account.namespace,
            "serviceaccount": {"name": account.name, "uid": account.uid},
        },
    }
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    return f"{signing_input}.{_b64(secrets.token_bytes(256))}"


class TokenReviewServer:
    """Answers TokenReviews on loopback for the JWTs it was told about (thread-safe)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reviewer_token: str | None = None,
        tls: bool = True,
    ) -> None:
        self._valid: dict[str, ServiceAccount] = {}
        self._lock = threading.Lock()
        self._reviewer_token = reviewer_token
        self.reviews: list[ServiceAccount | None] = []  # each review's answer, in order
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self.ca_cert: str | None = None  # PEM of the self-signed certificate (TLS only)
        if tls:
            try:
                context, self.ca_cert = _tls_context(host)
                self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            except BaseException:
                self._httpd.server_close()
                raise
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        scheme = "https" if self.ca_cert else "http"
        return f"{scheme}://{host!s}:{port}"

    def issue(
        self, namespace: str, name: str, *, uid: str | None = None, audience: str = DEFAULT_AUDIENCE
    ) -> str:
        """A new JWT for the service account ``namespace/name``, valid until revoked."""
        account = ServiceAccount(namespace, name, uid or str(uuid.uuid4()))
        jwt = service_account_jwt(account, audience=audience)
        self.accept(jwt, account)
        return jwt

    def accept(self, jwt: str, account: ServiceAccount) -> None:
        """Answer reviews of ``jwt`` with authenticated=true for ``account``."""
        with self._lock:
            self._valid[jwt] = account

    def revoke(self, jwt: str) -> None:
        """Answer reviews of ``jwt`` with authenticated=false from now on."""
        with self._lock:
            self._valid.pop(jwt, None)

    def review(self, jwt: str) -> ServiceAccount | None:
        """The account ``jwt`` stands for, or None; recorded in :attr:`reviews`."""
        with self._lock:
            account = self._valid.get(jwt)
            self.reviews.append(account)
        return account

    def reviewer_allowed(self, authorization: str | None) -> bool:
        if self._reviewer_token is None:
            return True
        return secrets.compare_digest(authorization or "", f"Bearer {self._reviewer_token}")

    def start(self) -> TokenReviewServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="tokenreview", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> TokenReviewServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def review_answer(spec: dict[str, Any], account: ServiceAccount | None) -> dict[str, Any]:
    """The TokenReview object answering ``spec`` (audiences echoed when authenticated)."""
    status: dict[str, Any] = {"authenticated": False}
    if account is not None:
        audiences = spec.get("audiences")
        status = {
            "authenticated": True,
            "user": {"username": account.username, "uid": account.uid, "groups": account.groups},
            "audiences": list(audiences) if isinstance(audiences, list) else [],
        }
    else:
        status["error"] = "invalid bearer token"
    return {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": status,
    }


def _handler_for(server: TokenReviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def do_POST(self) -> None:
            self.close_connection = True  # one request per connection: no idle threads linger
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_BODY))
            if self.path.split("?")[0] != REVIEW_PATH:
                self._answer(HTTPStatus.NOT_FOUND, _status(404, "NotFound", "no such route"))
                return
            if not server.reviewer_allowed(self.headers.get("Authorization")):
                self._answer(HTTPStatus.UNAUTHORIZED, _status(401, "Unauthorized", "Unauthorized"))
                return
            try:
                spec = json.loads(body)["spec"]
                token = spec["token"]
            except (ValueError, KeyError, TypeError):
                self._answer(HTTPStatus.BAD_REQUEST, _status(400, "BadRequest", "bad review"))
                return
            account = server.review(token) if isinstance(token, str) else None
            self._answer(HTTPStatus.CREATED, review_answer(spec, account))

        def _answer(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep quiet: a request line would hold nothing useful and tests read stderr."""

    return Handler


def _tls_context(host: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a fresh self-signed certificate for ``host``, and its PEM."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed for a TLS TokenReview server")
    san = f"IP:{host}" if _is_ip(host) else f"DNS:{host}"
    with tempfile.TemporaryDirectory(prefix="vault-rotator-k8s-") as tmp:
        key, cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        command += ["-nodes", "-days", "1", "-keyout", str(key), "-out", str(cert)]
        command += ["-subj", f"/CN={host}", "-addext", f"subjectAltName={san}"]
        subprocess.run(  # noqa: S603
            command,
            check=True,
            capture_output=True,
            timeout=30,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context, cert.read_text()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
