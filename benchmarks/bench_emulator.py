"""How fast the emulator lists keys, and whether page time grows with the store.

Seeds 10,000 keys, then times list pages of 100 over real HTTP: the first page, a middle page
(reached by following ``next_page_token``), the last page, and the only page of a 100-key
store. The four are timed in interleaved rounds so that warm-up and CPU boost favour none.
Prints ms per page (p50, p95) and the ratio of each 10,000-key page to the 100-key page,
which stays near 1 when a page costs O(page) rather than O(store).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import httpx

from vault_rotator.emulator import Emulator

MANAGEMENT_KEY = "lr_mgmt_bench_0123456789abcdef"
PATH = "/api/v1/keys"
PAGE = 100
ROUNDS = 300
WARM_UP = 10

Fetch = Callable[[], httpx.Response]


def _seeded(count: int) -> Emulator:
    emulator = Emulator(dialect="b", management_keys=[MANAGEMENT_KEY])
    for index in range(count):
        emulator.seed_key(f"bench-{index:05d}")
    return emulator.start()


def _client(emulator: Emulator) -> httpx.Client:
    headers = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    return httpx.Client(base_url=emulator.base_url, headers=headers)


def _params(token: str | None) -> dict[str, str | int]:
    params: dict[str, str | int] = {"page_size": PAGE}
    if token is not None:
        params["page_token"] = token
    return params


def _tokens(http: httpx.Client) -> list[str | None]:
    """The page token of every page, in order (None for the first page)."""
    tokens: list[str | None] = [None]
    while True:
        body = http.get(PATH, params=_params(tokens[-1])).json()
        if "next_page_token" not in body:
            return tokens
        tokens.append(body["next_page_token"])


def _fetcher(http: httpx.Client, token: str | None) -> Fetch:
    return lambda: http.get(PATH, params=_params(token))


def _timed(fetches: dict[str, Fetch]) -> dict[str, list[float]]:
    """Milliseconds per page for each fetch, over interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in fetches}
    for round_number in range(WARM_UP + ROUNDS):
        for name, fetch in fetches.items():
            started = time.perf_counter()
            response = fetch()
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200
            assert len(response.json()["data"]) == PAGE
            if round_number >= WARM_UP:
                times[name].append(elapsed)
    return times


def _p50_p95(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


def main() -> None:
    started = time.perf_counter()
    big = _seeded(10_000)
    print(f"seeded 10,000 keys in {time.perf_counter() - started:.2f} s")
    small = _seeded(PAGE)
    try:
        with _client(big) as big_http, _client(small) as small_http:
            tokens = _tokens(big_http)
            print(f"10,000 keys walk in {len(tokens)} pages of {PAGE}")
            times = _timed(
                {
                    "10,000 keys, first page": _fetcher(big_http, tokens[0]),
                    "10,000 keys, middle page": _fetcher(big_http, tokens[len(tokens) // 2]),
                    "10,000 keys, last page": _fetcher(big_http, tokens[-1]),
                    "100 keys, only page": _fetcher(small_http, None),
                }
            )
    finally:
        big.stop()
        small.stop()
    p50s = {}
    for name, series in times.items():
        p50, p95 = _p50_p95(series)
        p50s[name] = p50
        print(f"{name:<26} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   ({ROUNDS} pages)")
    baseline = p50s.pop("100 keys, only page")
    for name, p50 in p50s.items():
        print(f"ratio {name} / 100-key page: {p50 / baseline:.2f}")
