"""Lookup latency at fixed arrival rates (open loop), and the rate where p99 passes 20 ms.

    .venv/bin/python -m bench.latency [--db postgresql|sqlite] [--rows 1000000] [--rates 50,100,200,300,400,500] [--seconds 10]

Requests to /api/v1/verify are started on schedule (one every 1/rate s) whether
or not earlier ones have answered, and each latency is measured from its
scheduled start, so a stalled server shows up in the percentiles instead of
slowing the client down (no coordinated omission). The client is Python
asyncio with aiohttp and shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import urllib.parse

import aiohttp

from bench.common import gunicorn, machine, name_of, number_of, scratch_instance, today
from bench.setup_db import prepare

PORT = 18091
P99_LIMIT_MS = 20.0
# Requests still open when a rate step ends get this long to finish before they count as errors.
DRAIN_SECONDS = 10
MAX_OPEN_REQUESTS = 512


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def run_rate(base: str, rate: float, seconds: int, rows: int, seed: int) -> dict:
    chooser = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    limit = asyncio.Semaphore(MAX_OPEN_REQUESTS)
    connector = aiohttp.TCPConnector(limit=MAX_OPEN_REQUESTS)
    timeout = aiohttp.ClientTimeout(total=seconds + DRAIN_SECONDS)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(scheduled: float, g: int) -> None:
            nonlocal errors
            query = urllib.parse.urlencode({"number": number_of(g), "name": name_of(g)})
            async with limit:
                try:
                    async with session.get(f"{base}/api/v1/verify?{query}") as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1
                    return
            latencies.append((time.perf_counter() - scheduled) * 1000)

        started = time.perf_counter()
        total = int(rate * seconds)
        tasks = []
        for index in range(total):
            scheduled = started + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled, chooser.randint(1, rows))))
        await asyncio.gather(*tasks)
        achieved = total / (time.perf_counter() - started)

    return {
        "rate": rate,
        "sent": total,
        "achieved": achieved,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql", help="database engine")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic certificates in the register")
    parser.add_argument("--rates", default="50,100,200,300,400,500", help="arrival rates to try, requests per second")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each rate step, in seconds")
    parser.add_argument("--database", default="certbench_http",
                        help="PostgreSQL database, or SQLite file /tmp/NAME.db, recreated unless it contains --rows certificates")
    parser.add_argument("--port", type=int, default=PORT, help="port of the gunicorn server on 127.0.0.1")
    args = parser.parse_args()

    instance = scratch_instance()
    url = prepare(args.db, args.rows, instance, name=args.database)
    results = []
    with gunicorn(url, instance, args.port) as base:
        asyncio.run(run_rate(base, 20, 3, args.rows, seed=0))  # warm-up
        for step, rate in enumerate(float(value) for value in args.rates.split(",")):
            results.append(asyncio.run(run_rate(base, rate, args.seconds, args.rows, seed=step + 1)))
            print(results[-1], flush=True)

    print(f"\nMachine: {machine()}; date {today()}; database {args.db}, {args.rows:,} certificates;")
    print(f"open-loop aiohttp client, {args.seconds} s per rate, gunicorn deploy/gunicorn.conf.py\n")
    print("| target rate (req/s) | completed (req/s) | p50 (ms) | p99 (ms) | errors |\n| ---: | ---: | ---: | ---: | ---: |")
    for row in results:
        print(f"| {row['rate']:.0f} | {row['achieved']:.0f} | {row['p50']:.1f} | {row['p99']:.1f} | {row['errors']} |")
    over = [row["rate"] for row in results if row["p99"] > P99_LIMIT_MS]
    if over:
        print(f"\np99 first passes {P99_LIMIT_MS:.0f} ms at {over[0]:.0f} requests/s.")
    else:
        print(f"\np99 stayed under {P99_LIMIT_MS:.0f} ms at every rate tried.")


if __name__ == "__main__":
    main()
