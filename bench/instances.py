"""Start N server instances on one PostgreSQL database, as a deployment behind a load balancer
runs them; the fan-out benchmark uses it, and so can any load test of several instances.

    .venv/bin/python bench/instances.py --count 2 --database-url postgresql+psycopg://root@127.0.0.1:5432/test

It migrates the database, starts `chatserver serve` (or, with `--app module:factory` and
`--app-dir DIR`, `uvicorn --factory`) on consecutive ports from `--base-port`, waits until
every instance answers /readyz, prints their URLs one per line and runs until interrupted.
Settings come from the environment (CHATSERVER_*) and `--set NAME=VALUE`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def migrate(database_url: str) -> None:
    command = [sys.executable, "-m", "chatserver", "migrate", "--database-url", database_url]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def spawn(
    database_url: str,
    port: int,
    settings: Mapping[str, str],
    app: str | None = None,
    app_dir: str | None = None,
) -> Instance:
    env = {
        **os.environ,
        "CHATSERVER_DATABASE_URL": database_url,
        "CHATSERVER_LOG_LEVEL": "WARNING",
        **{f"CHATSERVER_{name.upper()}": value for name, value in settings.items()},
    }
    if app is None:
        command = [sys.executable, "-m", "chatserver", "serve", "--port", str(port)]
    else:
        command = [sys.executable, "-m", "uvicorn", "--factory", app, "--port", str(port)]
        command += ["--log-level", "warning", *(["--app-dir", app_dir] if app_dir else [])]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    return Instance(process, f"http://127.0.0.1:{port}")


async def ready(instance: Instance, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{instance.url}/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if instance.process.poll() is not None:
                raise RuntimeError(f"instance on {instance.url} exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance on {instance.url} did not become ready")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running(
    database_url: str,
    count: int,
    settings: Mapping[str, str] | None = None,
    *,
    base_port: int | None = None,
    app: str | None = None,
    app_dir: str | None = None,
) -> AsyncIterator[list[Instance]]:
    """`count` instances, ready; terminated (SIGTERM, then waited for) on exit."""
    ports = [base_port + n if base_port else free_port() for n in range(count)]
    started = [spawn(database_url, port, settings or {}, app, app_dir) for port in ports]
    try:
        await asyncio.gather(*(ready(instance) for instance in started))
        yield started
    finally:
        for instance in started:
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        for instance in started:
            instance.process.wait(timeout=30)


async def _serve(args: argparse.Namespace) -> None:
    settings = dict(item.split("=", 1) for item in args.set)
    async with running(
        args.database_url,
        args.count,
        settings,
        base_port=args.base_port,
        app=args.app,
        app_dir=args.app_dir,
    ) as started:
        for instance in started:
            print(instance.url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--base-port", type=int, default=8100)
    parser.add_argument("--app", help="module:factory served by uvicorn --factory instead")
    parser.add_argument("--app-dir", help="where --app's module is")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    migrate(args.database_url)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
