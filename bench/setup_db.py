"""Create (or reuse) a benchmark database holding N synthetic certificates."""

from __future__ import annotations

import sqlalchemy as sa

from bench.common import create_postgres_database, migrate, seed


def prepare(db: str, rows: int, instance, name: str = "certbench_http") -> str:
    """Return the URL of a migrated database with exactly `rows` synthetic certificates, reusing a matching one."""
    if db == "postgresql":
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    else:
        url = f"sqlite:////tmp/{name}.db"
    if _existing_rows(url) == rows:
        return url
    if db == "postgresql":
        create_postgres_database(name)
    else:
        import os

        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"/tmp/{name}.db{suffix}"):
                os.remove(f"/tmp/{name}.db{suffix}")
    migrate(url, instance)
    seconds = seed(url, 1, rows)
    print(f"seeded {rows:,} certificates in {seconds:.0f} s")
    return url


def _existing_rows(url: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(sa.text("SELECT count(*) FROM certificate WHERE public_id LIKE 'bench-%'"))
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()
