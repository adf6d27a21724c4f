"""Fuzz the roster reader with mutated and truncated copies of the sample rosters.

Usage: .venv/bin/python -m bench.fuzz_rosters [--count 20000] [--seed 1]

Each file goes through the same service call as `roster import --dry-run`
(store, read, judge every row, roll back) against a temporary SQLite database.
A file must either import or raise RosterFileError with a message; anything
else is counted as a failure and printed. tests/test_security_uploads.py runs
1,000 of these files in CI.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROSTER_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "rosters"
# Small samples keep each run fast; both formats and the faulty-data workbook are covered.
SOURCES = [
    "二级建造师_问题数据样例.xlsx",
    "2024年度增报专业考试合格证明名单.xlsx",
    "2023年度二级造价工程师考试合格人员.csv",
]
XML_PAYLOADS = [
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><x>&b;</x>',
    b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    b"<worksheet><sheetData><row><c t=\"s\"><v>999999</v></c></row></sheetData></worksheet>",
    b"",
    b"\x00\xff\xfe garbage",
]
CSV_INSERTS = ["\x00", '"', "\r", "\u202e", "=cmd|' /C calc'!A0", "<b>x</b>", "," * 500, "姓名" * 2000, "\ufeff"]


def _source_bytes() -> list[tuple[str, bytes]]:
    return [(name, (ROSTER_DIR / name).read_bytes()) for name in SOURCES]


def _flip_bytes(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    return bytes(buffer)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def _mutate_member(rng: random.Random, data: bytes) -> bytes:
    """Rewrite the workbook with one XML part damaged, replaced or removed."""
    source = zipfile.ZipFile(io.BytesIO(data))
    names = source.namelist()
    target = rng.choice(names)
    action = rng.choice(["flip", "truncate", "payload", "drop"])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            content = source.read(name)
            if name == target:
                if action == "drop":
                    continue
                if action == "flip" and content:
                    content = _flip_bytes(rng, content)
                elif action == "truncate" and content:
                    content = _truncate(rng, content)
                elif action == "payload":
                    content = rng.choice(XML_PAYLOADS)
            archive.writestr(name, content)
    return out.getvalue()


def _mutate_csv(rng: random.Random, data: bytes) -> bytes:
    text = data.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()[: rng.randint(1, 40)]
    for _ in range(rng.randint(1, 5)):
        index = rng.randrange(len(lines))
        position = rng.randint(0, len(lines[index]))
        lines[index] = lines[index][:position] + rng.choice(CSV_INSERTS) + lines[index][position:]
    encoding = rng.choice(["utf-8", "utf-8-sig", "gb18030", "utf-16"])
    return "\n".join(lines).encode(encoding, errors="replace")


def mutated_files(count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Yield (upload name, content) pairs; the same seed always gives the same files."""
    rng = random.Random(seed)
    sources = _source_bytes()
    for index in range(count):
        name, data = rng.choice(sources)
        suffix = Path(name).suffix
        if suffix == ".xlsx":
            mutation = rng.choice([_flip_bytes, _truncate, _mutate_member, _mutate_member])
        else:
            mutation = rng.choice([_flip_bytes, _truncate, _mutate_csv, _mutate_csv])
        mutated = mutation(rng, data)
        # Now and then the upload name lies about the content.
        if rng.random() < 0.1:
            suffix = ".csv" if suffix == ".xlsx" else ".xlsx"
        yield f"fuzz-{index:05d}{suffix}", mutated


def check_file(path: Path) -> str:
    """Run one file through the dry-run import and return "imported" or "rejected"; raise on anything else."""
    from app.domain.roster import RosterFileError
    from app.services import batches

    try:
        batches.import_file(path, exam="二级建造师", kind="certificate", actor="fuzz", dry_run=True)
    except RosterFileError as error:
        if not str(error).strip():
            raise AssertionError(f"{path.name}: RosterFileError without a message") from error
        return "rejected"
    return "imported"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="number of mutated files")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    args = parser.parse_args(argv)

    from flask_migrate import upgrade

    from app import create_app

    with tempfile.TemporaryDirectory() as folder:
        app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder}/fuzz.db", "SECRET_KEY": "fuzz"})
        app.instance_path = folder
        outcomes: Counter[str] = Counter()
        start = time.perf_counter()
        with app.app_context():
            upgrade()
            for name, data in mutated_files(args.count, args.seed):
                path = Path(folder) / name
                path.write_bytes(data)
                try:
                    outcomes[check_file(path)] += 1
                except Exception as error:  # noqa: BLE001 (the point is to catch anything unexpected)
                    outcomes["failed"] += 1
                    print(f"{name}: {type(error).__name__}: {error}", file=sys.stderr)
                finally:
                    path.unlink()
        elapsed = time.perf_counter() - start
    print(f"{args.count} files, seed {args.seed}: {dict(outcomes)} in {elapsed:.1f} s ({args.count / elapsed:.0f} files/s)")
    return 1 if outcomes["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
