"""End-to-end benchmark: our server against an `openai-chatkit` reference and a bare echo.

    python -m bench                  # everything, ~7 min on 2 cores
    python -m bench --quick          # a 1-2 minute smoke of the same
    python -m bench --profile DIR    # + py-spy of our server under the 16-client load

Starts each server in a process of its own (ours on SQLite and on a fresh PostgreSQL
database, the reference, the bare echo), drives them one at a time with the same clients
(`bench.load`, a process of its own), in rounds that rotate the servers' order, and prints
turns/s, events/s, first-event p50/p99 and server CPU per event as ratios to the reference.
Then the model's pace: servers restarted with a delay between words, many clients, and a
prober measuring reads meanwhile. Every transcript is checked. Writes JSON to bench/results/.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402

DEFAULT_POSTGRES_URL = os.environ.get(
    "CHATSERVER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
SERVERS = ("reference", "ours-sqlite", "ours-postgresql", "bare")
# Turns per client for each client count: 16 x 10 as in issue 12.
FULL_TURNS = {1: 20, 16: 10, 64: 5}
QUICK_TURNS = {1: 5, 16: 3, 64: 2}
STARTUP_SECONDS = 60.0
STOP_SECONDS = 15.0


class BenchError(Exception):
    pass


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    kind: str
    database_url: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT: uvicorn's graceful shutdown, so each server closes its database.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, database_url: str, word_delay: float, users: int, logs: Path) -> Server:
    kind = name.split("-", 1)[0]
    log = logs / f"{name}-{word_delay:g}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.serve",
            kind,
            "--database-url",
            database_url,
            "--word-delay",
            str(word_delay),
            "--users",
            str(users),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
    line = process.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        process.kill()
        raise BenchError(f"{name} did not start:\n{_tail(log)}")
    return Server(name, kind, database_url, process, int(line), log)


def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    url = f"http://127.0.0.1:{server.port}/healthz"
    while True:
        if server.process.poll() is not None:
            raise BenchError(f"{server.name} exited:\n{_tail(server.log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} never became healthy:\n{_tail(server.log)}")
        time.sleep(0.1)


@contextmanager
def servers(
    names: Sequence[str], urls: dict[str, str], word_delay: float, users: int, logs: Path
) -> Iterator[dict[str, Server]]:
    running: dict[str, Server] = {}
    try:
        for name in names:
            running[name] = start_server(name, urls[name], word_delay, users, logs)
        for server in running.values():
            wait_healthy(server)
        yield running
    finally:
        for server in running.values():
            server.stop()


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- databases -------------------------------------------------------------------------------


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of `admin_url`, dropped at the end."""
    import psycopg
    import sqlalchemy as sa

    url = sa.make_url(admin_url)
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"chatserver_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- loads -----------------------------------------------------------------------------------


def run_load(
    server: Server,
    clients: int,
    turns: int,
    words: int,
    *,
    first_user: int = 0,
    turn_timeout: float = 60.0,
    ramp_seconds: float = 0.0,
) -> dict[str, Any]:
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "kind": server.kind,
        "clients": clients,
        "turns": turns,
        "words": words,
        "server_pid": server.pid,
        "first_user": first_user,
        "turn_timeout": turn_timeout,
        "ramp_seconds": ramp_seconds,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        timeout=turns * turn_timeout + ramp_seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"load on {server.name} failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@contextmanager
def prober(server: Server, user: int) -> Iterator[list[dict[str, Any]]]:
    """A prober process for the duration of the block; its result is appended to the list."""
    spec = {"host": "127.0.0.1", "port": server.port, "user": user}
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.probe", json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
    if not ready or process.stdout.readline().strip() != b"ready":
        process.kill()
        raise BenchError(f"prober on {server.name} failed:\n{process.stderr.read().decode()}")
    found: list[dict[str, Any]] = []
    try:
        yield found
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=STOP_SECONDS)
        if process.returncode != 0:
            raise BenchError(f"prober on {server.name} failed:\n{err.decode()}")
        found.append(json.loads(out))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by "tid name" (Linux /proc)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        found[f"{task.name} {name}"] = (int(fields[11]) + int(fields[12])) / _TICKS
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def py_spy(server: Server, path: Path, rate: int) -> Iterator[dict[str, float]]:
    """py-spy record of `server` while the block runs: raw collapsed stacks (speedscope and
    `python -m bench.hotspots` read them) of the samples that hold the GIL, C frames included.
    Yields a dict that gets each thread's CPU seconds during the block."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(binary).exists():
        raise BenchError("py-spy is not installed: pip install -e '.[bench]'")
    process = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(server.pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--threads",
            "--gil",
            "--native",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attached before the load starts
    threads: dict[str, float] = {}
    before = thread_cpu(server.pid)
    try:
        yield threads
    finally:
        after = thread_cpu(server.pid)
        threads.update({t: after[t] - before.get(t, 0.0) for t in after})
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if not path.exists():
            raise BenchError(f"py-spy wrote no profile:\n{err.decode()[-2000:]}")


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Plan:
    servers: list[str]
    turns: dict[int, int]
    words: int
    rounds: int
    warmup_turns: int
    pace_servers: list[str]
    pace_clients: int
    pace_turns: int
    pace_words: int
    pace_delay: float
    pace_ramp: float
    profile: Path | None
    profile_rate: int
    # Words per turn of the cost model's short and long turns; () skips it.
    cost_words: tuple[int, ...]
    loads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def users(self) -> int:
        # Every client is its own user; the prober is one more.
        return max([*self.turns, self.pace_clients, 2]) + 1


def plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        turns, words, rounds, warmup = {1: 2, 4: 2}, 20, 1, 1
        pace, cost = (4, 1, 5), (5, 40)
    elif args.quick:
        turns, words, rounds, warmup = dict(QUICK_TURNS), args.words, 1, 2
        pace, cost = (100, 2, 40), (20, 400)
    else:
        turns, words, rounds, warmup = dict(FULL_TURNS), args.words, 3, 3
        pace, cost = (100, 5, args.words), (20, 400)
    if args.clients:
        wanted = [int(c) for c in args.clients.split(",")]
        turns = {c: args.turns or turns.get(c, 5) for c in wanted}
    elif args.turns:
        turns = dict.fromkeys(turns, args.turns)
    names = [s for s in SERVERS if s in args.servers.split(",")]
    if "postgresql" not in args.backends.split(","):
        names = [s for s in names if s != "ours-postgresql"]
    if "sqlite" not in args.backends.split(","):
        names = [s for s in names if s != "ours-sqlite"]
    pace_servers = [] if args.no_pace else [s for s in names if s != "bare"]
    return Plan(
        servers=names,
        turns=turns,
        words=words,
        rounds=args.rounds or rounds,
        warmup_turns=warmup,
        pace_servers=pace_servers,
        pace_clients=args.pace_clients or pace[0],
        pace_turns=args.pace_turns or pace[1],
        pace_words=args.pace_words or pace[2],
        pace_delay=args.pace_delay,
        pace_ramp=args.pace_ramp,
        profile=args.profile,
        profile_rate=args.profile_rate,
        cost_words=() if args.no_cost else cost,
    )


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def throughput(p: Plan, running: dict[str, Server], speed: list[float]) -> list[report.Row]:
    for server in running.values():
        # Warm-up: connections, statement caches, the first pages of every table.
        run_load(server, 2, p.warmup_turns, p.words)
    loads: dict[tuple[str, int], list[dict[str, Any]]] = {}
    order = list(running)
    for round_ in range(p.rounds):
        speed.append(machine_check())
        # A different server goes first each round, so a drift of the machine's speed
        # does not always hit the same one.
        shift = round_ % len(order)
        rotated = order[shift:] + order[:shift]
        for clients, turns in p.turns.items():
            for name in rotated:
                load = run_load(running[name], clients, turns, p.words)
                load["round"] = round_
                p.loads.append({"server": name, **load})
                loads.setdefault((name, clients), []).append(load)
                _note(
                    f"round {round_ + 1}/{p.rounds} {name:<16} {clients:>3} clients: "
                    f"{load['turns_ok'] / load['wall_seconds']:7.1f} turns/s, "
                    f"{load['turns_failed']} failed"
                )
    return [report.pool(name, loads[(name, c)]) for c in p.turns for name in order]


def profile(p: Plan, running: dict[str, Server]) -> list[dict[str, Any]]:
    """The 16-client load again (or the largest below it) under py-spy: our servers, and
    the reference to compare with."""
    from bench import hotspots

    assert p.profile is not None
    p.profile.mkdir(parents=True, exist_ok=True)
    clients = max((c for c in p.turns if c <= 16), default=min(p.turns))
    profiles = []
    for name in (n for n in running if n != "bare"):
        path = p.profile / f"{name}-{clients}clients.txt"
        with py_spy(running[name], path, p.profile_rate) as threads:
            load = run_load(running[name], clients, p.turns[clients], p.words)
        p.loads.append({"server": name, "profiled": True, **load})
        total = sum(threads.values())
        # The main thread's id is the process id.
        main = sum(v for t, v in threads.items() if t.split(" ", 1)[0] == str(running[name].pid))
        us_per_event = load["server_cpu_seconds"] / load["events"] * 1e6 if load["events"] else 0
        with path.open() as lines:
            breakdown = hotspots.analyze(lines)
        text = hotspots.render(breakdown, us_per_event, main / total if total else None)
        (path.with_suffix(".summary.txt")).write_text(text + "\n")
        profiles.append(
            {
                "server": name,
                "clients": clients,
                "raw": str(path),
                "cpu_us_per_event": us_per_event,
                "thread_cpu_seconds": threads,
                "by_area": dict(breakdown.by_area),
                "by_task": dict(breakdown.by_task.most_common(30)),
                "summary": text,
            }
        )
        _note(f"\nprofile of {name} at {clients} clients ({path}):\n{text}\n")
    return profiles


def cost_model(p: Plan, running: dict[str, Server]) -> list[report.CostRow]:
    """CPU per turn = fixed + marginal x events: the same clients with short and long turns.
    What a turn costs whatever its length, and what each event adds, apart."""
    clients = max((c for c in p.turns if c <= 16), default=min(p.turns))
    turns = p.turns[clients]
    rows = []
    for name, server in running.items():
        short = run_load(server, clients, turns, p.cost_words[0])
        long = run_load(server, clients, turns, p.cost_words[1])
        p.loads.extend(
            [{"server": name, "cost": True, **short}, {"server": name, "cost": True, **long}]
        )
        rows.append(report.cost_row(name, short, long))
    return rows


def pace(p: Plan, urls: dict[str, str], logs: Path) -> list[report.PaceRow]:
    rows = []
    with servers(p.pace_servers, urls, p.pace_delay, p.users, logs) as running:
        for name, server in running.items():
            run_load(server, 2, 1, 3)  # warm-up
            with prober(server, user=p.pace_clients) as probes:
                load = run_load(
                    server,
                    p.pace_clients,
                    p.pace_turns,
                    p.pace_words,
                    turn_timeout=60 + p.pace_words * p.pace_delay * 4,
                    ramp_seconds=p.pace_ramp,
                )
            p.loads.append({"server": name, "pace": True, **load, "probe": probes[0]})
            rows.append(report.pace_row(name, load, probes[0]))
            _note(f"pace {name:<16} {load['turns_ok']} turns ok, {load['turns_failed']} failed")
    return rows


def machine_check() -> float:
    """A fixed pure-Python workload: if it takes longer after the run than before, the
    machine slowed down meanwhile (other work on the cores); compare ratios, not absolutes."""
    started = time.perf_counter()
    payload = {"type": "thread.item.updated", "item_id": "itm_x", "update": {"delta": "word "}}
    for _ in range(50_000):
        json.loads(json.dumps(payload))
    return time.perf_counter() - started


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    for package in (
        "chatserver",
        "openai-chatkit",
        "starlette",
        "sse-starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "aiosqlite",
        "psycopg",
        "pydantic",
    ):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute smoke of the same")
    parser.add_argument("--smoke", action="store_true", help="the tiniest run (the test's)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--backends", default="sqlite,postgresql", help="for our server")
    parser.add_argument("--clients", help="client counts, e.g. 1,16,64")
    parser.add_argument("--turns", type=int, help="turns per client (every client count)")
    parser.add_argument("--words", type=int, default=200, help="deltas per turn")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (default 3)")
    parser.add_argument("--no-pace", action="store_true", help="skip the model's pace")
    parser.add_argument("--no-cost", action="store_true", help="skip the cost model")
    parser.add_argument("--pace-clients", type=int)
    parser.add_argument("--pace-turns", type=int)
    parser.add_argument("--pace-words", type=int)
    parser.add_argument("--pace-delay", type=float, default=0.05, help="seconds between deltas")
    parser.add_argument(
        "--pace-ramp",
        type=float,
        default=0.0,
        help="spread the clients' first turns over this many seconds (default 0: at once)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy our servers into this folder")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    p = plan(args)
    if not p.servers:
        parser.error("no server to run")

    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    speed = [machine_check()]
    load_before = os.getloadavg()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chatserver-e2e-")))
        urls = {
            "ours-sqlite": f"sqlite+aiosqlite:///{tmp / 'ours.db'}",
            "reference": f"sqlite+aiosqlite:///{tmp / 'reference.db'}",
            "bare": "",
        }
        if "ours-postgresql" in p.servers:
            urls["ours-postgresql"] = stack.enter_context(postgres_database(args.postgres_url))
        _note(f"servers: {', '.join(p.servers)}; logs in {tmp}")
        with servers(p.servers, urls, 0.0, p.users, tmp) as running:
            rows = throughput(p, running, speed)
            costs = cost_model(p, running) if p.cost_words else []
            profiles = profile(p, running) if p.profile else []
        pace_rows = pace(p, urls, tmp) if p.pace_servers else []
    speed.append(machine_check())
    checks = report.targets(rows, pace_rows)

    print(report.throughput_table(rows))
    print(report.cost_table(costs, p.cost_words))
    print(report.pace_table(pace_rows, p.pace_delay, p.pace_words, p.pace_ramp))
    print("\nissue 12 targets")
    print(report.targets_table(checks))
    print(
        f"\nmachine: {os.cpu_count()} cpus, load average {load_before[0]:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after; machine check (before, each round, after) "
        + " -> ".join(f"{s * 1000:.0f} ms" for s in speed)
        + f"; {time.monotonic() - started:.0f} s in all"
    )

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"e2e-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "created_at": stamp,
                "argv": list(argv if argv is not None else sys.argv[1:]),
                "plan": {
                    "servers": p.servers,
                    "turns": p.turns,
                    "words": p.words,
                    "rounds": p.rounds,
                    "pace_servers": p.pace_servers,
                    "pace_clients": p.pace_clients,
                    "pace_turns": p.pace_turns,
                    "pace_words": p.pace_words,
                    "pace_delay": p.pace_delay,
                    "pace_ramp": p.pace_ramp,
                    "cost_words": p.cost_words,
                },
                "environment": environment(),
                "load_average": {"before": load_before, "after": os.getloadavg()},
                "machine_check_s": speed,
                "seconds": time.monotonic() - started,
                "throughput": [r.as_json() for r in rows],
                "cost_model": [vars(r) for r in costs],
                "pace": [r.as_json() for r in pace_rows],
                "targets": [vars(c) for c in checks],
                "profiles": profiles,
                "loads": p.loads,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    failed = sum(r.errors for r in rows) + sum(r.errors + len(r.probe_errors) for r in pace_rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
