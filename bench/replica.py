"""Lookups against a PostgreSQL primary and its streaming standby, and the replication lag between them.

    .venv/bin/python -m bench.replica [--rows 100000] [--calls 20000] [--rounds 3] [--seconds 10]
        [--connections 16] [--commits 200]

Starts its own primary and hot standby (`initdb`, then `pg_basebackup -R`) in
a temporary folder, on free 127.0.0.1 ports, and deletes both when it ends.
The machine's PostgreSQL server is not touched. Run as root, the servers run
as the `postgres` user. Three measurements, each interleaved primary/standby
(or async/remote_apply) round by round, so both sides see the same load from
other processes:

1. `lookup.verify` called in this process, once with the lookups on the
   primary and once with LOOKUP_DATABASE_URL on the standby: wall-clock and
   CPU time per call, this process and each server.
2. wrk against `/api/v1/verify` on two gunicorn servers, one per setting.
3. Replication lag: an UPDATE committed on the primary, then the standby
   polled until it returns the new value. Reported per commit: the time the
   commit took and the time from its return to the value showing on the
   standby, with the standby asynchronous and then synchronous
   (`synchronous_commit = remote_apply`).

`StandbyPair` is also used by tests/test_pg_standby.py.
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import psycopg

# application_name the standby connects with, which synchronous_standby_names on the primary names.
STANDBY_NAME = "standby"
DATABASE = "certificates"
# Non-root user the servers run as when this process is root (postgres refuses to run as root).
SERVER_USER = "postgres"


class SetupError(RuntimeError):
    """Raised when the scratch servers cannot be set up: missing binaries, no user to run them as, a failed command."""


def server_bindir() -> Path | None:
    """Return the folder holding initdb, pg_ctl and pg_basebackup, or None when the server binaries are not installed.

    Debian installs them under /usr/lib/postgresql/<version>/bin, outside PATH.
    The newest version there wins, and PATH is searched otherwise.
    """
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parent.parent.name))
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StandbyPair:
    """A scratch PostgreSQL primary and its hot standby, streaming over 127.0.0.1.

    `durable=False` turns fsync off, which makes setup faster for tests but
    would flatter commit times in a benchmark.
    """

    def __init__(self, *, durable: bool = True) -> None:
        self.durable = durable
        self.bindir = server_bindir()
        self.root: Path | None = None
        self.ports: dict[str, int] = {}
        self._started: list[str] = []

    # --- setup and teardown ------------------------------------------------

    def start(self) -> StandbyPair:
        """Create and start the primary, then clone the standby from it and start that. Stop both on any failure."""
        if self.bindir is None:
            raise SetupError(
                "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are not installed: apt-get install postgresql"
            )
        self._user = self._server_user()
        self.root = Path(tempfile.mkdtemp(prefix="cert-standby-"))
        try:
            if self._user is not None:
                os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
            self._run("initdb", "-D", self._dir("primary"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync", "--no-instructions")  # fmt: skip
            self._configure_primary()
            self._start_server("primary")
            with self.connect("primary", database="postgres") as connection:
                connection.execute(f"CREATE DATABASE {DATABASE}")
            conninfo = f"host=127.0.0.1 port={self.ports['primary']} user=postgres application_name={STANDBY_NAME}"
            self._run("pg_basebackup", "-D", self._dir("standby"), "-R", "-d", conninfo, "-c", "fast", "-X", "stream")
            self._start_server("standby")
            self._wait_for_streaming()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers (standby first) and delete their folder. Safe to call more than once."""
        for name in reversed(self._started):
            for mode in ("fast", "immediate"):
                result = self._run("pg_ctl", "-D", self._dir(name), "-m", mode, "-w", "-t", "20", "stop", check=False)
                if result.returncode == 0:
                    break
        self._started.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> StandbyPair:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _server_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise SetupError(
                f"running as root, and there is no {SERVER_USER!r} user to run the PostgreSQL servers as "
                "(postgres refuses to run as root): run as another user, or install the postgresql package"
            ) from None

    def _dir(self, name: str) -> str:
        return str(self.root / name)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / program), *args]
        user = {}
        if self._user is not None:
            user = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root), "LC_ALL": "C.UTF-8"}
        result = subprocess.run(command, cwd=self.root, env=env, capture_output=True, text=True, timeout=120, **user)
        if check and result.returncode != 0:
            raise SetupError(f"{program} failed with exit code {result.returncode}: {result.stderr.strip()[-2000:]}")
        return result

    def _configure_primary(self) -> None:
        """Append the settings both servers share, because pg_basebackup copies postgresql.conf to the standby."""
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "hot_standby": "on",
            "shared_buffers": "64MB",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on",
        }
        with open(self.root / "primary" / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# Scratch primary and standby of bench/replica.py\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        # Explicit entries, whatever initdb's defaults are: trust on loopback only, for queries and replication.
        (self.root / "primary" / "pg_hba.conf").write_text(
            "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n", encoding="utf-8"
        )

    def _start_server(self, name: str) -> None:
        """Start a server on a free port, picking another port if one is taken between the probe and the bind."""
        log = self.root / f"{name}.log"
        for _attempt in range(3):
            port = free_port()
            result = self._run("pg_ctl", "-D", self._dir(name), "-l", str(log), "-o", f"-c port={port}",
                               "-w", "-t", "30", "start", check=False)  # fmt: skip
            if result.returncode == 0:
                self.ports[name] = port
                self._started.append(name)
                return
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else result.stderr
            if "Address already in use" not in text:
                raise SetupError(f"pg_ctl start of the scratch {name} failed: {text.strip()[-2000:]}")
        raise SetupError(f"no free port for the scratch {name} after 3 attempts")

    def _wait_for_streaming(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        with self.connect("primary") as connection:
            while time.monotonic() < deadline:
                state = connection.execute(
                    "SELECT state FROM pg_stat_replication WHERE application_name = %s", (STANDBY_NAME,)
                ).fetchone()
                if state and state[0] == "streaming":
                    return
                time.sleep(0.05)
        log = (self.root / "standby.log").read_text(encoding="utf-8", errors="replace")
        raise SetupError(f"the scratch standby did not start streaming within {timeout:.0f} s: {log.strip()[-2000:]}")

    # --- use ----------------------------------------------------------------

    def url(self, name: str) -> str:
        """Return the SQLAlchemy URL of the `certificates` database on the primary or the standby."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.ports[name]}/{DATABASE}"

    @property
    def primary_url(self) -> str:
        return self.url("primary")

    @property
    def standby_url(self) -> str:
        return self.url("standby")

    def connect(self, name: str, database: str = DATABASE) -> psycopg.Connection:
        """Open an autocommit psycopg connection to the primary or the standby."""
        return psycopg.connect(host="127.0.0.1", port=self.ports[name], user="postgres", dbname=database, autocommit=True)

    def wait_for_replay(self, timeout: float = 15) -> None:
        """Wait until the standby has replayed everything the primary has written so far; raise TimeoutError if not."""
        with self.connect("primary") as primary, self.connect("standby") as standby:
            target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            deadline = time.monotonic() + timeout
            while True:
                replayed, caught_up = standby.execute(
                    "SELECT pg_last_wal_replay_lsn(), pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if caught_up:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby replayed WAL up to {replayed}, not {target}, within {timeout:.0f} s")
                time.sleep(0.01)

    def pause_replay(self) -> None:
        with self.connect("standby") as standby:
            standby.execute("SELECT pg_wal_replay_pause()")
            while standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
                time.sleep(0.01)

    def resume_replay(self) -> None:
        with self.connect("standby") as standby:
            standby.execute("SELECT pg_wal_replay_resume()")

    def set_synchronous(self, enabled: bool, timeout: float = 15) -> None:
        """Make the standby synchronous with remote_apply on the primary, or asynchronous again.

        Sessions pick the new settings up after pg_reload_conf(); sessions
        already open switch at their next command.
        """
        with self.connect("primary") as primary:
            if enabled:
                primary.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                primary.execute("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
            else:
                primary.execute("ALTER SYSTEM RESET synchronous_standby_names")
                primary.execute("ALTER SYSTEM RESET synchronous_commit")
            primary.execute("SELECT pg_reload_conf()")
            expected = "sync" if enabled else "async"
            deadline = time.monotonic() + timeout
            while True:
                state = primary.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", (STANDBY_NAME,)
                ).fetchone()
                if state and state[0] == expected:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the standby's sync_state is {state and state[0]!r}, not {expected!r}")
                time.sleep(0.01)
        # Wait until a new session reads the reloaded file.
        expected_setting = "remote_apply" if enabled else "on"
        while True:
            with self.connect("primary") as primary:
                if primary.execute("SHOW synchronous_commit").fetchone()[0] == expected_setting:
                    return
            time.sleep(0.01)

    def cluster_cpu_seconds(self, name: str) -> float:
        """Return the CPU seconds used so far by a server: its postmaster, its live processes and those it has reaped."""
        postmaster = (self.root / name / "postmaster.pid").read_text().split()[0]
        return _process_tree_cpu(postmaster)


def _process_tree_cpu(parent: str) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in (entry for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if pid == parent:
            total += sum(int(value) for value in fields[11:15]) / ticks
        elif fields[1] == parent:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# --- measurements -------------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _lookup_app(pair: StandbyPair, instance: Path, lookup_on: str):
    from app import create_app
    from bench.common import ID_HASH_KEY, ID_NUMBER_KEY, QR_KEY, SECRET_KEY

    config = {
        "SECRET_KEY": SECRET_KEY,
        "QR_TOKEN_KEYS": [QR_KEY],
        "ID_NUMBER_KEY": ID_NUMBER_KEY,
        "ID_HASH_KEY": ID_HASH_KEY,
        "SQLALCHEMY_DATABASE_URI": pair.primary_url,
        "RATELIMIT_ENABLED": False,
    }
    if lookup_on == "standby":
        config["LOOKUP_DATABASE_URL"] = pair.standby_url
    os.environ["CERT_INSTANCE_PATH"] = str(instance)
    return create_app(config)


def measure_lookups(pair: StandbyPair, instance: Path, rows: int, calls: int, rounds: int) -> dict[str, list[dict]]:
    """Call lookup.verify `calls` times per round on each side and return, by side, each round's µs per call."""
    from app.extensions import db
    from app.services import lookup
    from bench.common import name_of, number_of

    apps = {side: _lookup_app(pair, instance, side) for side in ("primary", "standby")}
    results: dict[str, list[dict]] = {"primary": [], "standby": []}
    for round_number in range(rounds):
        sides = ["primary", "standby"] if round_number % 2 == 0 else ["standby", "primary"]
        for side in sides:
            with apps[side].app_context():
                if lookup.lookup_engine().url.port != pair.ports[side]:
                    raise RuntimeError(f"lookups meant for the {side} read {lookup.lookup_engine().url}")
                keys = [random.randint(1, rows) for _ in range(calls)]
                for g in keys[:200]:  # warm the pool and the statement cache
                    lookup.verify(number_of(g), name_of(g))
                servers_before = {name: pair.cluster_cpu_seconds(name) for name in ("primary", "standby")}
                wall, cpu = time.perf_counter(), time.process_time()
                for g in keys:
                    if lookup.verify(number_of(g), name_of(g)).result != lookup.VALID:
                        raise RuntimeError(f"lookup of synthetic certificate {g} on the {side} did not return valid")
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                servers = {name: pair.cluster_cpu_seconds(name) - servers_before[name] for name in servers_before}
            results[side].append(
                {
                    "wall_us": wall / calls * 1e6,
                    "cpu_us": cpu / calls * 1e6,
                    "primary_cpu_us": servers["primary"] / calls * 1e6,
                    "standby_cpu_us": servers["standby"] / calls * 1e6,
                }
            )
    for flask_app in apps.values():
        with flask_app.app_context():
            for engine in db.engines.values():
                engine.dispose()
    return results


def measure_http(pair: StandbyPair, instance: Path, rows: int, seconds: int, rounds: int, connections: int) -> dict:
    """Run wrk against /api/v1/verify on a gunicorn reading the primary and one reading the standby, alternately.

    Both servers run at once, each with the workers deploy/gunicorn.conf.py
    gives it, but only one receives load at a time.
    """
    from bench.common import gunicorn, name_of, number_of, server_cpu_seconds, wrk, wrk_lookup_script

    script = wrk_lookup_script(instance / "lookup.lua", rows, "/api/v1/verify")
    results: dict[str, list[dict]] = {"primary": [], "standby": []}
    settings = {"primary": {}, "standby": {"CERT_LOOKUP_DATABASE_URL": pair.standby_url}}
    with ExitStack() as stack:
        bases = {
            side: stack.enter_context(gunicorn(pair.primary_url, instance, free_port(), settings=settings[side]))
            for side in ("primary", "standby")
        }
        query = urllib.parse.urlencode({"number": number_of(1), "name": name_of(1)})
        for side, base in bases.items():
            body = urllib.request.urlopen(f"{base}/api/v1/verify?{query}", timeout=10).read().decode()
            if '"valid"' not in body:
                raise RuntimeError(f"the {side} server did not return a valid lookup: {body[:200]}")
        for round_number in range(rounds):
            sides = ["primary", "standby"] if round_number % 2 == 0 else ["standby", "primary"]
            for side in sides:
                base = bases[side]
                servers_before = {name: pair.cluster_cpu_seconds(name) for name in ("primary", "standby")}
                app_before = server_cpu_seconds(base)
                rate = wrk(f"{base}/api/v1/verify", seconds=seconds, connections=connections, script=script)
                requests = rate * seconds
                servers = {name: pair.cluster_cpu_seconds(name) - servers_before[name] for name in servers_before}
                results[side].append(
                    {
                        "rate": rate,
                        "app_cpu_ms": (server_cpu_seconds(base) - app_before) / requests * 1e3,
                        "primary_cpu_ms": servers["primary"] / requests * 1e3,
                        "standby_cpu_ms": servers["standby"] / requests * 1e3,
                    }
                )
    return results


def measure_lag(pair: StandbyPair, commits: int, rounds: int) -> dict[str, list[tuple[float, float, int]]]:
    """Commit UPDATEs on the primary, poll the standby for each, and return (commit ms, visibility ms, polls) by mode.

    Visibility is timed from the commit's return to the first poll that reads
    the new value, so it includes that poll's round trip.
    """
    with pair.connect("primary") as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS bench_lag (id integer PRIMARY KEY, value bigint NOT NULL)")
        primary.execute("INSERT INTO bench_lag VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET value = 0")
    pair.wait_for_replay()
    samples: dict[str, list[tuple[float, float, int]]] = {"async": [], "remote_apply": []}
    value = 0
    for round_number in range(rounds):
        modes = ["async", "remote_apply"] if round_number % 2 == 0 else ["remote_apply", "async"]
        for mode in modes:
            pair.set_synchronous(mode == "remote_apply")
            with pair.connect("primary") as primary, pair.connect("standby") as standby:
                for _ in range(commits):
                    value += 1
                    started = time.perf_counter()
                    primary.execute("UPDATE bench_lag SET value = %s WHERE id = 1", (value,))
                    committed = time.perf_counter()
                    polls = 1
                    while standby.execute("SELECT value FROM bench_lag WHERE id = 1").fetchone()[0] != value:
                        polls += 1
                    visible = time.perf_counter()
                    samples[mode].append(((committed - started) * 1e3, (visible - committed) * 1e3, polls))
                    time.sleep(random.uniform(0.005, 0.02))
    pair.set_synchronous(False)
    return samples


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(entry[key] for entry in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic certificates in the register")
    parser.add_argument("--calls", type=int, default=20000, help="in-process lookup.verify calls per side and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement, sides alternating")
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per side and round, in seconds")
    parser.add_argument("--connections", type=int, default=16, help="wrk open connections")
    parser.add_argument("--commits", type=int, default=200, help="replication-lag commits per mode and round")
    parser.add_argument("--skip-http", action="store_true", help="skip the gunicorn and wrk measurement")
    args = parser.parse_args()

    from bench.common import load_average, machine, migrate, scratch_instance, seed, today

    instance = scratch_instance()
    loads = [load_average()]
    started = time.strftime("%H:%M UTC", time.gmtime())
    try:
        with StandbyPair(durable=True) as pair:
            server = subprocess.run([str(pair.bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
            migrate(pair.primary_url, instance)
            seconds = seed(pair.primary_url, 1, args.rows)
            pair.wait_for_replay(timeout=300)
            print(f"seeded {args.rows:,} certificates in {seconds:.0f} s; the standby has replayed them")

            lookups = measure_lookups(pair, instance, args.rows, args.calls, args.rounds)
            loads.append(load_average())
            http = None
            if not args.skip_http:
                http = measure_http(pair, instance, args.rows, args.seconds, args.rounds, args.connections)
                loads.append(load_average())
            lag = measure_lag(pair, args.commits, args.rounds)
            loads.append(load_average())
    finally:
        shutil.rmtree(instance, ignore_errors=True)

    print(f"\nMachine: {machine()}; {server}; date {today()}, started {started}.")
    print(f"Primary and standby on this machine, fsync on, {args.rows:,} certificates.")
    print(f"Load average (1, 5, 15 min) at start and after each measurement: {' | '.join(loads)}\n")

    print(f"lookup.verify in this process, {args.calls} calls per side and round, {args.rounds} rounds (median of rounds):\n")
    print("| lookups read | wall µs/call | CPU µs/call, this process | CPU µs/call, primary | CPU µs/call, standby | per-round wall µs |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for side, rounds in lookups.items():
        per_round = ", ".join(f"{entry['wall_us']:.0f}" for entry in rounds)
        print(
            f"| {side} | {_median(rounds, 'wall_us'):.0f} | {_median(rounds, 'cpu_us'):.0f} | "
            f"{_median(rounds, 'primary_cpu_us'):.0f} | {_median(rounds, 'standby_cpu_us'):.0f} | {per_round} |"
        )

    if http:
        print(f"\nwrk on /api/v1/verify, {args.connections} connections, {args.seconds} s per side and round (median of rounds):\n")
        print("| lookups read | requests/s | CPU ms/request, gunicorn | CPU ms/request, primary | CPU ms/request, standby | per-round requests/s |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for side, rounds in http.items():
            per_round = ", ".join(f"{entry['rate']:.0f}" for entry in rounds)
            print(
                f"| {side} | {_median(rounds, 'rate'):.0f} | {_median(rounds, 'app_cpu_ms'):.2f} | "
                f"{_median(rounds, 'primary_cpu_ms'):.2f} | {_median(rounds, 'standby_cpu_ms'):.2f} | {per_round} |"
            )

    print(f"\nReplication lag, {args.commits} single-row UPDATEs per mode and round, {args.rounds} rounds:\n")
    print(
        "| standby | commits | commit ms, median | p95 | max | commit return to visible on standby, ms, median | p95 | max "
        "| visible at the first poll |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, samples in lag.items():
        commit = [sample[0] for sample in samples]
        visible = [sample[1] for sample in samples]
        first_poll = sum(1 for sample in samples if sample[2] == 1)
        print(
            f"| {mode} | {len(samples)} | {statistics.median(commit):.2f} | {_percentile(commit, 0.95):.2f} | "
            f"{max(commit):.2f} | {statistics.median(visible):.2f} | {_percentile(visible, 0.95):.2f} | {max(visible):.2f} "
            f"| {first_poll} of {len(samples)} |"
        )


if __name__ == "__main__":
    main()
