"""httpx against aiohttp for the Graph source (issue 17): `$value` GETs from the Graph imitation.

    .venv/bin/python bench/http_client.py                  # 1,000 GETs of ~50 kB, 3 rounds
    .venv/bin/python bench/http_client.py --count 200 --rounds 1

The Graph imitation (tests/support/servers/graph_server.py, HTTPS from a private CA,
HTTP/1.1 keep-alive)
runs in its own process, so its threads do not share the GIL with the client measured. Each
client and mode runs in a fresh process: wall time, CPU time of the client process per
request (user + system), and peak RSS (ru_maxrss) beside the RSS right after import.

Both clients do what the Graph layer does on every request: a bearer token, ``Prefer:
IdType="ImmutableId"``, a total deadline (asyncio.timeout), the body streamed in chunks and
counted against a size cap, one connection pool per mailbox with at most 4 connections.
"""

# ruff: noqa: PLC0415  (each process imports only what it measures)
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAILBOX = "bench@contoso.test"
CAP = 1 << 20


def _mail(number: int, size: int) -> bytes:
    line = (f"Line {number:06d} of a customer's mail about order {number * 7:08d}. " * 2)[:76]
    body = "\r\n".join(line for _ in range(size // 78))
    head = (f"From: Customer {number} <c{number}@example.test>\r\nTo: support@contoso.test\r\n"
            f"Subject: Order {number}\r\nMessage-ID: <{number}@bench.test>\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n")  # fmt: skip
    return head.encode() + body.encode()


def _serve(count: int, size: int, pipe: Any) -> None:
    from tests.support.servers.graph_server import GraphServer

    with GraphServer(Path(tempfile.mkdtemp(prefix="graph-bench-"))) as server:
        server.add_mailbox(MAILBOX)
        ids = [server.append(MAILBOX, "inbox", _mail(n, size)) for n in range(count)]
        pipe.send((server.endpoint, str(server.ca_file), server.issue_token(), ids))
        pipe.recv()  # until the parent says stop


async def _httpx(urls: list[str], headers: dict[str, str], ca: str, parallel: int) -> int:
    import httpx

    context = ssl.create_default_context(cafile=ca)
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(verify=context, limits=limits, headers=headers) as client:

        async def one(url: str) -> int:
            total = 0
            async with asyncio.timeout(30), client.stream("GET", url) as response:
                async for chunk in response.aiter_raw():
                    total += len(chunk)
                    if total > CAP:
                        raise ValueError("too large")
            return total

        return await _drive(urls, one, parallel)


async def _aiohttp(urls: list[str], headers: dict[str, str], ca: str, parallel: int) -> int:
    import aiohttp

    context = ssl.create_default_context(cafile=ca)
    connector = aiohttp.TCPConnector(ssl=context, limit=4, limit_per_host=4)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(url: str) -> int:
            total = 0
            async with asyncio.timeout(30), session.get(url) as response:
                async for chunk in response.content.iter_chunked(65536):
                    total += len(chunk)
                    if total > CAP:
                        raise ValueError("too large")
            return total

        return await _drive(urls, one, parallel)


async def _drive(urls: list[str], one: Any, parallel: int) -> int:
    gate = asyncio.Semaphore(parallel)

    async def gated(url: str) -> int:
        async with gate:
            return int(await one(url))

    sizes = await asyncio.gather(*(gated(u) for u in urls))
    return sum(sizes)


def _measure(name: str, urls: list[str], headers: dict[str, str], ca: str, parallel: int,
             out: Any) -> None:  # fmt: skip
    import aiohttp  # noqa: F401  (both imported, so the baseline RSS is comparable)
    import httpx  # noqa: F401

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = _httpx if name == "httpx" else _aiohttp
    cpu, wall = time.process_time(), time.perf_counter()
    total = asyncio.run(run(urls, headers, ca, parallel))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.send({"client": name, "parallel": parallel, "wall_s": wall, "cpu_s": cpu,
              "bytes": total, "rss_base_kb": base_rss, "rss_peak_kb": peak})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(args.count, args.size, child), daemon=True)
    server.start()
    endpoint, ca, token, ids = parent.recv()
    urls = [f"{endpoint}/users/{MAILBOX}/messages/{i}/$value" for i in ids]
    headers = {"Authorization": f"Bearer {token}", "Prefer": 'IdType="ImmutableId"'}
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for name in ("httpx", "aiohttp"):
            for parallel in (1, 4):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=_measure, args=(name, urls, headers, ca, parallel, theirs)
                )
                proc.start()
                results.append(mine.recv())
                proc.join()
    parent.send("stop")
    server.join(5)
    print(f"{args.count} GETs of {args.size / 1000:.0f} kB, median of {args.rounds} rounds")
    print(
        f"{'client':8} {'conc':>4} {'req/s':>7} {'CPU us/req':>10} {'RSS base':>9} {'RSS peak':>9}"
    )
    for name in ("httpx", "aiohttp"):
        for parallel in (1, 4):
            rows = [r for r in results if r["client"] == name and r["parallel"] == parallel]
            rate = statistics.median(args.count / r["wall_s"] for r in rows)
            cpu = statistics.median(r["cpu_s"] / args.count * 1e6 for r in rows)
            base = statistics.median(r["rss_base_kb"] for r in rows) / 1024
            peak = statistics.median(r["rss_peak_kb"] for r in rows) / 1024
            print(f"{name:8} {parallel:4} {rate:7.0f} {cpu:10.0f} {base:7.1f}MB {peak:7.1f}MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
