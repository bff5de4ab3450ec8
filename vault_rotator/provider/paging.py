"""How a listing walks pages, as a pure flow: a generator yields the query of the next page to
fetch, is sent the page, and returns the records (the shape of httpx's auth flows). The client
does the I/O; this module decides, so paging is testable without a server.

Decisions where the spec is silent:

- ``next_page_token`` is followed while present. Once a server has sent a token, a page
  without one is the last (offset is never mixed in).
- Without tokens, ``offset`` paging goes on while a page comes back full (at least the page
  size asked for).
- Records are de-duplicated by id, first sighting wins: with offset paging a key created
  meanwhile shifts the next page by one. (A key deleted meanwhile can make another one skip a
  page; nothing but tokens can prevent that.) An item without a usable id is not a record: it
  is left out and its reason kept (:attr:`Listing.skipped`), once per distinct reason.
- A server that never ends is cut off at ``MAX_LISTED_KEYS / page_size + 10`` pages
  (100,000 keys: an account of 10,000 managed keys holds up to twice that mid-rotation). A
  repeated token, or a full offset page with no new id (a server ignoring ``offset``), is
  refused at once. So is a listing where items without a usable id outnumber the keys: that
  is a garbage answer (the wrong id field, every field mistyped), not an odd record, and
  nothing can be concluded from it. All four raise ProviderResponseError: a partial listing
  is never returned.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field

from vault_rotator.errors import ProviderResponseError
from vault_rotator.provider.dialects import Fields, Page, list_params, unaddressable

MAX_LISTED_KEYS = 100_000


@dataclass(slots=True)
class Listing:
    """What a walk over the pages found: the records by id, and what could not be one."""

    by_id: dict[str, Fields] = field(default_factory=dict)
    skipped: dict[str, None] = field(default_factory=dict)  # reasons, in order, each once
    unaddressable: int = 0  # items seen without a usable id (a repeat on a shifted page too)

    @property
    def records(self) -> list[Fields]:
        return list(self.by_id.values())


Flow = Generator[dict[str, str], Page, Listing]


def max_pages(page_size: int) -> int:
    """The most pages one listing may take."""
    return math.ceil(MAX_LISTED_KEYS / page_size) + 10


def listing(first: Page, *, page_size: int, id_field: str, endpoint: str) -> Flow:
    """Walk the pages after ``first``: yields each next query, returns what it found."""
    seen = Listing()
    tokens: set[str] = set()
    offset, fetched, page = 0, 1, first
    while True:
        added = _merge(seen, page, id_field)
        size = len(page.records) + len(page.skipped)
        offset += size
        token = page.next_page_token
        if token is not None:
            if token in tokens:
                raise _error(endpoint, "next_page_token repeats an earlier one")
            tokens.add(token)
            query = list_params(page_size, page_token=token)
        elif tokens or size < page_size:
            return _whole(seen, endpoint)
        elif added == 0 and fetched > 1:
            raise _error(endpoint, "a full page had no new keys (is offset ignored?)")
        else:
            query = list_params(page_size, offset=offset)
        fetched += 1
        if fetched > max_pages(page_size):
            raise _error(endpoint, f"more than {max_pages(page_size)} pages; giving up")
        page = yield query


def _merge(seen: Listing, page: Page, id_field: str) -> int:
    """Add a page's records to ``seen`` by id; return how many were new."""
    before = len(seen.by_id)
    seen.skipped.update(dict.fromkeys(page.skipped))
    seen.unaddressable += len(page.skipped)
    for record in page.records:
        if (why := unaddressable(record, id_field)) is not None:
            seen.skipped[why] = None
            seen.unaddressable += 1
        else:
            seen.by_id.setdefault(record.key_id(id_field), record)
    return len(seen.by_id) - before


def _whole(seen: Listing, endpoint: str) -> Listing:
    """``seen``, unless items without a usable id outnumber the keys (a garbage answer)."""
    if seen.unaddressable > len(seen.by_id):
        first = next(iter(seen.skipped)).removeprefix(f"{endpoint}: ")
        raise _error(
            endpoint,
            f"{seen.unaddressable} listed items have no usable id, more than the "
            f"{len(seen.by_id)} keys that do ({first})",
        )
    return seen


def _error(endpoint: str, problem: str) -> ProviderResponseError:
    return ProviderResponseError(f"{endpoint}: {problem}", endpoint=endpoint)
