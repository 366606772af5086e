"""
Reactor time of one /connz page (100 clients, sorted by bytes_received)
with 2,000 and 10,000 clients in an in-memory hub, as the operations port
answers it (the page, its document, its compact JSON): the page is sorted
by keys read where they live, and only the page is snapshotted.

    .venv/bin/python bench/connz_cost.py
"""

from __future__ import annotations

import json
import time

from tcphub.ops import views
from tcphub.testing import MemoryHub


def main() -> None:
    for count in (2000, 10000):
        hub = MemoryHub(max_connections=20000)
        clients = [hub.connect(host=f"127.0.{n // 250}.{n % 250 + 1}")[0] for n in range(count)]
        for n, client in enumerate(clients[: count // 2]):
            client.dataReceived(b"x" * (n % 50) + b"\n")

        def page() -> bytes:
            total, snapshots = hub.factory.page("bytes_received", True, 0, 100)
            return json.dumps(views.connz(snapshots, hub.factory.closed_connections(), total=total, now=0.0,
                                          sort="bytes_received", order="desc")).encode()

        page()
        runs = 20
        began = time.perf_counter()
        for _ in range(runs):
            page()
        print(f"{count} clients: {(time.perf_counter() - began) / runs * 1000:.2f} ms per /connz page")
        hub.close()


if __name__ == "__main__":
    main()
