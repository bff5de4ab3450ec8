"""HTTP-free request and response values, and the spec's error body.

The emulator's logic maps a :class:`Request` to a :class:`Response`; only ``server.py`` touches
sockets, so :meth:`Emulator.call` can also drive the logic directly.

Error body: ``{"error": {"message": str, "type": str, "code": str}}`` with the spec's types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "payment_required",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
ERROR_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    402: "quota_exceeded",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class BadRequestError(ValueError):
    """The request is malformed; the message names the field. Answered with 400."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""

    @classmethod
    def build(
        cls, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Request:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        lowered = {name.lower(): value for name, value in headers}
        return cls(method.upper(), path, parse_qs(parts.query), lowered, body)

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer`` header."""
        scheme, _, token = self.headers.get("authorization", "").strip().partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def api_key(self) -> str | None:
        """The bearer token, else the ``X-Api-Key`` header (inference routes accept both)."""
        return self.bearer() or self.headers.get("x-api-key", "").strip() or None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def json(self) -> object:
        """The body parsed as JSON; BadRequestError if it is not."""
        try:
            return json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"request body is not valid JSON: {exc}") from exc

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; BadRequestError if it is anything else."""
        body = self.json()
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object")
        return body


BODY_CHUNK = 64  # bytes per chunk of a trickled body (the trickle_body fault)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    trickle: float = 0.0  # seconds between the bytes of the status line and headers
    trickle_body: float = 0.0  # seconds between the body's chunks (BODY_CHUNK bytes)

    def payload(self) -> object:
        """The JSON body (for transforms and direct calls); ``None`` when empty."""
        return json.loads(self.body) if self.body else None


def json_response(
    status: int, payload: object, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, "application/json", dict(headers or {}))


def empty_response(status: int = 204) -> Response:
    return Response(status, b"", None)


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return ERROR_TYPES.get(status, "invalid_request_error")


def error_response(
    status: int, message: str, *, code: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """The spec's error body for ``status``."""
    error = {
        "message": message,
        "type": error_type(status),
        "code": code or ERROR_CODES.get(status, "error"),
    }
    return json_response(status, {"error": error}, headers)
