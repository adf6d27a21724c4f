"""Lookup latency as the register grows: 100k, 1M and 10M certificates on PostgreSQL.

    .venv/bin/python -m bench.scale [--sizes 100000,1000000,10000000] [--lookups 3000]

Fills its own database (certbench_scale) step by step with set-based INSERT ...
SELECT generate_series, then times the lookup service (app.services.lookup.verify,
the query behind /verify and the API, without HTTP) for random numbers at each
size. About 4.6 GB of disk at 10M rows (PostgreSQL 15).
"""

from __future__ import annotations

import argparse
import random
import time

import sqlalchemy as sa

from bench.common import ID_HASH_KEY, ID_NUMBER_KEY, create_postgres_database, machine, migrate, name_of, number_of, scratch_instance, seed, today

DATABASE = "certbench_scale"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(url: str, instance, rows: int, lookups: int) -> dict:
    import os

    os.environ.update(
        {"CERT_INSTANCE_PATH": str(instance), "CERT_SQLALCHEMY_DATABASE_URI": url, "CERT_RATELIMIT_ENABLED": "false"}
    )
    from app import create_app
    from app.services import lookup

    app = create_app(
        {"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, "ID_NUMBER_KEY": ID_NUMBER_KEY, "ID_HASH_KEY": ID_HASH_KEY}
    )
    chooser = random.Random(rows)
    timings = []
    with app.app_context():
        for index in range(lookups + 300):
            g = chooser.randint(1, rows)
            started = time.perf_counter()
            result = lookup.verify(number_of(g), name_of(g))
            elapsed = (time.perf_counter() - started) * 1000
            if result.result != lookup.VALID:
                raise SystemExit(f"lookup of row {g} returned {result.result}")
            if index >= 300:  # the first 300 warm the caches
                timings.append(elapsed)
        from app.extensions import db

        plan = db.session.execute(
            sa.text("EXPLAIN SELECT * FROM certificate WHERE number = :number"), {"number": number_of(1)}
        ).scalars().all()
        size = db.session.scalar(sa.text("SELECT pg_size_pretty(pg_total_relation_size('certificate'))"))
        db.engine.dispose()
    return {
        "rows": rows,
        "p50": percentile(timings, 0.5),
        "p99": percentile(timings, 0.99),
        "mean": sum(timings) / len(timings),
        "plan": plan[0].strip(),
        "size": size,
    }


def _loaded_rows(url: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text("SELECT count(*) FROM certificate"))
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def _vacuum(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE certificate"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="register sizes to measure, ascending")
    parser.add_argument("--lookups", type=int, default=3000, help="timed lookups per size")
    parser.add_argument("--database", default=DATABASE, help="name of the benchmark's own PostgreSQL database")
    parser.add_argument(
        "--reuse", action="store_true", help="keep the database a previous run filled and measure only sizes >= its rows"
    )
    args = parser.parse_args()

    instance = scratch_instance()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{args.database}"
    loaded = _loaded_rows(url) if args.reuse else None
    if loaded is None:
        url = create_postgres_database(args.database)
        migrate(url, instance)
        loaded = 0
    results = []
    for size in (int(value) for value in args.sizes.split(",")):
        if size < loaded:
            continue
        if size == loaded:
            _vacuum(url)
        seconds = seed(url, loaded + 1, size) if size > loaded else 0.0
        print(f"loaded rows {loaded + 1:,}..{size:,} in {seconds:.0f} s", flush=True)
        loaded = size
        results.append(measure(url, instance, size, args.lookups) | {"load_seconds": seconds})
        print(results[-1], flush=True)

    print(f"\nMachine: {machine()}; date {today()}; PostgreSQL, {args.lookups} random lookups per size\n")
    print("| certificates | table + indexes | p50 (ms) | p99 (ms) | mean (ms) | ratio of p50 to the smallest |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results:
        ratio = row["p50"] / results[0]["p50"]
        print(f"| {row['rows']:,} | {row['size']} | {row['p50']:.2f} | {row['p99']:.2f} | {row['mean']:.2f} | {ratio:.2f} |")
    print(f"\nQuery plan at {results[-1]['rows']:,}: {results[-1]['plan']}")


if __name__ == "__main__":
    main()
