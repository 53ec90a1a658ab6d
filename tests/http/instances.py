"""Real server processes (`chatserver serve`, the echo responder at its own pace: 0.05 s a
word) sharing one PostgreSQL database, as a deployment behind a load balancer runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

TOKEN = "tok-alice"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        self.clients.append(client)
        return client

    def kill(self) -> None:
        """kill -9: no shutdown, no cleanup; the database drops its connections."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    async def stop(self) -> None:
        for client in self.clients:
            await client.aclose()
        if self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 15)


def _spawn(database_url: str, settings: dict[str, Any]) -> Instance:
    port = free_port()
    env = {
        **os.environ,
        "CHATSERVER_BEARER_TOKENS": f"{TOKEN}:alice",
        "CHATSERVER_RESPONDER": "echo",
        "CHATSERVER_LOG_LEVEL": "WARNING",
        **{f"CHATSERVER_{name.upper()}": str(value) for name, value in settings.items()},
    }
    command = [sys.executable, "-m", "chatserver", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--database-url", database_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Instance(process, f"http://127.0.0.1:{port}", env)


async def _ready(instance: Instance) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(f"{instance.url}/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert instance.process.poll() is None, "server exited during start-up"
            assert time.monotonic() < deadline, "server did not become ready"
            await asyncio.sleep(0.1)


async def start(database_url: str, **settings: Any) -> Instance:
    """One more instance on the database (CHATSERVER_<NAME> for each setting given)."""
    instance = _spawn(database_url, settings)
    try:
        await _ready(instance)
    except BaseException:
        await instance.stop()
        raise
    return instance


@asynccontextmanager
async def instances(
    database_url: str, count: int, **settings: Any
) -> AsyncIterator[list[Instance]]:
    started = [_spawn(database_url, settings) for _ in range(count)]
    try:
        await asyncio.gather(*(_ready(instance) for instance in started))
        yield started
    finally:
        for instance in started:
            await instance.stop()
