"""The key-management routes of one dialect: auth, list, get, create, update, delete.

Decisions where the spec is silent:

- Management routes read only ``Authorization: Bearer``. No token, an unknown token or a
  deleted key's value: 401. A live API key: 403, unless ``allow_live_management`` (then only a
  disabled or expired one gets 403). Management keys are known by their SHA-256 only.
- Auth is checked before the body, so a bad body from a stranger is a 401, not a 400.
- Listing: in ``token`` paging a ``page_token`` wins over ``offset`` (which is then ignored);
  ``next_page_token`` is left out of the last page. In ``offset`` paging ``page_token`` is
  ignored and no token is ever sent.
"""

from __future__ import annotations

from collections.abc import Iterable

from vault_rotator.emulator.clock import Clock
from vault_rotator.emulator.dialects import Dialect
from vault_rotator.emulator.fields import encode_token, parse_create, parse_list_query, parse_update
from vault_rotator.emulator.model import value_hash
from vault_rotator.emulator.store import KeyStore
from vault_rotator.emulator.wire import (
    Request,
    Response,
    empty_response,
    error_response,
    json_response,
)


class ManagementKeys:
    """The management keys the emulator accepts, held as SHA-256 digests."""

    def __init__(self, values: Iterable[str]) -> None:
        self._digests = frozenset(value_hash(value) for value in values)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value_hash(value) in self._digests

    def add(self, value: str) -> None:
        """Accept another management key (a rotated one)."""
        self._digests = self._digests | {value_hash(value)}

    def revoke(self, value: str) -> None:
        """Stop accepting a management key: it gets 401 from now on."""
        self._digests = self._digests - {value_hash(value)}


class Management:
    """Handlers for the management routes; each takes the request and the item id."""

    def __init__(
        self,
        *,
        dialect: Dialect,
        store: KeyStore,
        keys: ManagementKeys,
        tokens: bool,
        allow_live: bool,
        clock: Clock,
    ) -> None:
        self._dialect = dialect
        self._store = store
        self._keys = keys
        self._tokens = tokens
        self._allow_live = allow_live
        self._clock = clock

    def authorize(self, request: Request) -> Response | None:
        """``None`` if the caller may manage keys, else the 401/403 answer."""
        token = request.bearer()
        if token is None:
            return error_response(401, "missing 'Authorization: Bearer' management key")
        if token in self._keys:
            return None
        key = self._store.find(token)
        if key is None or key.deleted:
            return error_response(401, "invalid management key")
        if not self._allow_live:
            return error_response(403, "API keys cannot manage keys; use a management key")
        if key.disabled or key.expired(self._clock()):
            return error_response(403, "this API key is disabled or expired")
        return None

    def list(self, request: Request, _key_id: str | None) -> Response:
        query = parse_list_query(request, tokens=self._tokens)
        page = self._store.page(
            include_disabled=query.include_disabled,
            size=query.size,
            offset=0 if query.after else query.offset,
            after=query.after,
        )
        body: dict[str, object] = {"data": [self._dialect.record(key) for key in page.keys]}
        if self._tokens and page.next_after is not None:
            body["next_page_token"] = encode_token(page.next_after)
        return json_response(200, body)

    def get(self, _request: Request, key_id: str | None) -> Response:
        return json_response(200, self._dialect.item_body(self._store.get(_id(key_id))))

    def create(self, request: Request, _key_id: str | None) -> Response:
        new = parse_create(request.json_object(), self._dialect.cap_field)
        key, value = self._store.create(new)
        return json_response(201, self._dialect.created_body(key, value))

    def update(self, request: Request, key_id: str | None) -> Response:
        changes = parse_update(request.json_object(), self._dialect.cap_field)
        key = self._store.update(_id(key_id), changes)
        return json_response(200, self._dialect.item_body(key))

    def delete(self, _request: Request, key_id: str | None) -> Response:
        self._store.delete(_id(key_id))
        body = self._dialect.deleted_body(_id(key_id))
        return empty_response(204) if body is None else json_response(200, body)


def _id(key_id: str | None) -> str:
    assert key_id is not None, "item routes always carry an id"
    return key_id
