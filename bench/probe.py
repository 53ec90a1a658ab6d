"""The prober: how long reads take while the load streams, from a process of its own.

    python -m bench.probe '<ProbeSpec as JSON>'

Creates a thread of its own (a short turn), prints `ready`, then keeps asking, each on its own
keep-alive connection, one request at a time with a short pause between: `threads.get_by_id`
of that thread, and `GET /readyz`. On SIGTERM it prints the latencies as JSON and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.client import Connection
from bench.load import create_body, new_event_loop, token


@dataclass
class ProbeSpec:
    host: str
    port: int
    user: int
    interval: float = 0.05


@dataclass
class ProbeResult:
    get_by_id: list[float] = field(default_factory=list)
    readyz: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _loop(
    name: str,
    request: tuple[str, str, bytes],
    conn: Connection,
    samples: list[float],
    errors: list[str],
    interval: float,
    stop: asyncio.Event,
) -> None:
    method, path, body = request
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = await conn.request(method, path, body)
            if response.status != 200:
                errors.append(f"{name}: HTTP {response.status}")
            else:
                samples.append(time.perf_counter() - started)
        except Exception as exc:
            errors.append(f"{name}: {exc!r}")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
    await conn.close()


async def probe(spec: ProbeSpec) -> ProbeResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    headers = {"Authorization": f"Bearer {token(spec.user)}"}
    setup = Connection(spec.host, spec.port, headers)
    created = await setup.request("POST", "/chatkit", create_body("probe this thread"))
    await setup.close()
    thread_id = next(
        (json.loads(e.data)["thread"]["id"] for e in created.events if "thread.created" in e.data),
        None,
    )
    if thread_id is None:
        raise SystemExit(f"the prober could not create its thread: HTTP {created.status}")
    get_body = json.dumps({"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
    session = created.headers.get("x-session-id")
    if session is not None:
        headers["X-Session-Id"] = session
    result = ProbeResult()
    print("ready", flush=True)
    await asyncio.gather(
        _loop(
            "threads.get_by_id",
            ("POST", "/chatkit", get_body.encode()),
            Connection(spec.host, spec.port, headers),
            result.get_by_id,
            result.errors,
            spec.interval,
            stop,
        ),
        _loop(
            "readyz",
            ("GET", "/readyz", b""),
            Connection(spec.host, spec.port, headers),
            result.readyz,
            result.errors,
            spec.interval,
            stop,
        ),
    )
    return result


def main() -> None:
    spec = ProbeSpec(**json.loads(sys.argv[1]))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        result = runner.run(probe(spec))
    json.dump(asdict(result), sys.stdout)
    print()


if __name__ == "__main__":
    main()
