"""Lookup throughput against a bare Flask endpoint on the same gunicorn, measured with wrk.

    .venv/bin/python -m bench.throughput [--db postgresql|sqlite] [--rows 1000000] [--seconds 10] [--rounds 3]
        [--connections 32] [--limits-redis] [--redis-db 15] [--async-commit] [--database certbench_http]

Each round runs wrk against the bare endpoint, the JSON API, the htmx result
fragment of /verify and the full /verify page, one after the other, so all
four run under about the same load from other processes. Prints the median
requests/s of each endpoint over the rounds, the median of the per-round
ratios to the bare endpoint, and the CPU time per request that the gunicorn
workers and the database backends used. The CPU figures change less than
requests/s when other programs share the machine. The server and wrk run on
this machine and share its cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import urllib.parse
import urllib.request

from bench.common import (
    database_cpu_delta,
    database_cpu_seconds,
    gunicorn,
    load_average,
    machine,
    name_of,
    number_of,
    scratch_instance,
    server_cpu_seconds,
    today,
    wrk,
    wrk_lookup_script,
)
from bench.setup_db import prepare

PORT = 18090
DATABASE = "certbench_http"
BARE = "bare endpoint `/bench/bare`"
# Redis database for --limits-redis (emptied before the run), unless --redis-db names another.
LIMITS_REDIS_DB = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql", help="database engine")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic certificates in the register")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per endpoint and round, in seconds")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all endpoints")
    parser.add_argument("--connections", type=int, default=32, help="wrk open connections")
    parser.add_argument(
        "--limits-redis",
        action="store_true",
        help="diagnostic: rate limits and the miss counter on, stored in Redis (127.0.0.1:6379, database --redis-db), "
        "with limits high enough that no request is refused",
    )
    parser.add_argument(
        "--redis-db", type=int, default=LIMITS_REDIS_DB, help="Redis database number for --limits-redis; it is emptied first"
    )
    parser.add_argument(
        "--database", default=DATABASE, help="name of the PostgreSQL database (or of /tmp/NAME.db) holding the register"
    )
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="diagnostic: run the server with PostgreSQL synchronous_commit=off, to show what commit flushes cost",
    )
    args = parser.parse_args()

    instance = scratch_instance()
    url = prepare(args.db, args.rows, instance, name=args.database)
    settings = {}
    if args.async_commit:
        settings["CERT_SQLALCHEMY_ENGINE_OPTIONS"] = '{"connect_args": {"options": "-c synchronous_commit=off"}}'
    if args.limits_redis:
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=args.redis_db).flushdb()
        settings |= {
            "CERT_RATELIMIT_ENABLED": "true",
            "CERT_RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:6379/{args.redis_db}",
            "CERT_LOOKUP_RATE_LIMIT": "10000000 per minute",
            "CERT_LOOKUP_NUMBER_RATE_LIMIT": "10000000 per minute",
        }

    endpoints = {
        BARE: ("/bench/bare", None),
        "JSON API `/api/v1/verify`": ("/api/v1/verify", {}),
        "htmx result `/verify` (HX-Request)": ("/verify", {"HX-Request": "true"}),
        "form page `/verify`": ("/verify", {}),
    }
    rates: dict[str, list[float]] = {label: [] for label in endpoints}
    cpu: dict[str, list[tuple[float, float]]] = {label: [] for label in endpoints}
    loads = [load_average()]
    with gunicorn(url, instance, PORT, settings=settings) as base:
        query = urllib.parse.urlencode({"number": number_of(42), "name": name_of(42)})
        answer = json.load(urllib.request.urlopen(f"{base}/api/v1/verify?{query}", timeout=10))
        if answer["result"] != "valid":
            raise SystemExit(f"sample lookup did not return valid: {answer}")

        scripts = {}
        for index, (label, (path, headers)) in enumerate(endpoints.items()):
            if headers is not None:
                scripts[label] = wrk_lookup_script(instance / f"lookup{index}.lua", args.rows, path, headers)
            wrk(base + path, seconds=3, connections=args.connections, script=scripts.get(label))  # warm-up

        for _ in range(args.rounds):
            for label, (path, _headers) in endpoints.items():
                server_before, database_before = server_cpu_seconds(base), database_cpu_seconds(args.database)
                rate = wrk(base + path, seconds=args.seconds, connections=args.connections, script=scripts.get(label))
                requests = rate * args.seconds
                cpu[label].append(
                    (
                        (server_cpu_seconds(base) - server_before) / requests * 1000,
                        database_cpu_delta(database_before, database_cpu_seconds(args.database)) / requests * 1000,
                    )
                )
                rates[label].append(rate)
            loads.append(load_average())

    print(f"\nMachine: {machine()}; date {today()}; database {args.db}, {args.rows:,} certificates;")
    diagnostics = []
    if args.async_commit:
        diagnostics.append("synchronous_commit=off")
    diagnostics.append("rate limits on, in Redis" if args.limits_redis else "rate limits off")
    print(
        f"wrk -t2 -c{args.connections} -d{args.seconds}s, {args.rounds} interleaved rounds; "
        f"gunicorn deploy/gunicorn.conf.py (sync workers); {', '.join(diagnostics)}"
    )
    print(f"load average (1, 5, 15 min) before and after each round: {' | '.join(loads)}\n")
    print("| endpoint | requests/s (median) | ratio to bare (median of rounds) | per-round ratios | CPU ms/request, gunicorn | CPU ms/request, database |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for label in endpoints:
        ratios = [rate / bare for rate, bare in zip(rates[label], rates[BARE])]
        server_ms = statistics.median(value[0] for value in cpu[label])
        database_ms = statistics.median(value[1] for value in cpu[label])
        print(
            f"| {label} | {statistics.median(rates[label]):,.0f} | {statistics.median(ratios):.2f} | "
            f"{', '.join(f'{ratio:.2f}' for ratio in ratios)} | {server_ms:.2f} | {database_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
