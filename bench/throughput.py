"""Lookup throughput against a bare Flask endpoint on the same gunicorn, measured with wrk.

    .venv/bin/python -m bench.throughput [--db postgresql|sqlite] [--rows 1000000] [--seconds 15] [--connections 32]

Prints one Markdown table row per endpoint, with the ratio to the bare endpoint.
The server and wrk run on this machine and share its cores.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
import urllib.request

from bench.common import gunicorn, machine, name_of, number_of, scratch_instance, today, wrk, wrk_lookup_script
from bench.setup_db import prepare

PORT = 18090


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql", help="database engine")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic certificates in the register")
    parser.add_argument("--seconds", type=int, default=15, help="wrk duration per endpoint, in seconds")
    parser.add_argument("--connections", type=int, default=32, help="wrk open connections")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="diagnostic: run the server with PostgreSQL synchronous_commit=off, to show what commit flushes cost",
    )
    args = parser.parse_args()

    instance = scratch_instance()
    url = prepare(args.db, args.rows, instance)
    settings = {}
    if args.async_commit:
        settings["CERT_SQLALCHEMY_ENGINE_OPTIONS"] = '{"connect_args": {"options": "-c synchronous_commit=off"}}'
    with gunicorn(url, instance, PORT, settings=settings) as base:
        query = urllib.parse.urlencode({"number": number_of(42), "name": name_of(42)})
        answer = json.load(urllib.request.urlopen(f"{base}/api/v1/verify?{query}", timeout=10))
        if answer["result"] != "valid":
            raise SystemExit(f"sample lookup did not return valid: {answer}")

        wrk(f"{base}/bench/bare", seconds=3, connections=args.connections)  # warm-up
        results = {"bare endpoint `/bench/bare`": wrk(f"{base}/bench/bare", seconds=args.seconds, connections=args.connections)}
        for label, path in (("JSON API `/api/v1/verify`", "/api/v1/verify"), ("form page `/verify`", "/verify")):
            script = wrk_lookup_script(instance / f"lookup{path.replace('/', '_')}.lua", args.rows, path)
            results[label] = wrk(base + path, seconds=args.seconds, connections=args.connections, script=script)

    bare = results["bare endpoint `/bench/bare`"]
    print(f"\nMachine: {machine()}; date {today()}; database {args.db}, {args.rows:,} certificates;")
    commit = "synchronous_commit=off (diagnostic)" if args.async_commit else "default commit settings"
    print(f"wrk -t2 -c{args.connections} -d{args.seconds}s; gunicorn deploy/gunicorn.conf.py (sync workers); {commit}\n")
    print("| endpoint | requests/s | ratio to bare |\n| --- | ---: | ---: |")
    for label, rate in results.items():
        print(f"| {label} | {rate:,.0f} | {rate / bare:.2f} |")


if __name__ == "__main__":
    main()
