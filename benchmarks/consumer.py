"""Simulated consumers for the scale benchmark: one per key, switching at once.

``python -m benchmarks.consumer URL`` reads key values from stdin, one per line, and makes one
inference call (``GET /v1/models``, which moves the key's ``last_used_at``) with each as soon
as it arrives: each line is a consumer of one key that switched to the value just published.
It counts the answers and prints ``consumer calls=N failed=M`` on stdout at end of input.
Values are never printed. It runs in its own process so that the daemon being measured pays
only for writing the line.
"""

from __future__ import annotations

import http.client
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

WORKERS = 8


def main() -> int:
    url = urlsplit(sys.argv[1])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    counts = {"calls": 0, "failed": 0}
    lock = threading.Lock()

    def call(value: str) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {value}"})
            status = connection.getresponse().status
        except OSError:
            status = 0
        finally:
            connection.close()
        with lock:
            counts["calls"] += 1
            counts["failed"] += status != 200

    with ThreadPoolExecutor(WORKERS) as pool:
        for line in sys.stdin:
            if value := line.strip():
                pool.submit(call, value)
    print(f"consumer calls={counts['calls']} failed={counts['failed']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
