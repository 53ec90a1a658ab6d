"""One server of the bench in its own process, each kind under the same uvicorn settings.

    python -m bench.serve {ours,reference,bare} --database-url URL --word-delay S --users N

Binds a free port on 127.0.0.1 and prints it as the first line on stdout, then serves until
SIGINT/SIGTERM. The orchestrator (`bench.run`) reads the process's CPU time from /proc.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from starlette.applications import Starlette

KINDS = ("ours", "reference", "bare")


def bearer_tokens(users: int) -> dict[str, str]:
    """token -> user id of the bench's clients, the same on every server kind."""
    return {f"bench-token-{i}": f"bench-user-{i}" for i in range(users)}


def build(kind: str, database_url: str, word_delay: float, users: int) -> Starlette:
    # Each kind imports only its own stack: the reference's pulls in the Agents SDK.
    tokens = bearer_tokens(users)
    if kind == "ours":
        from bench import ours

        return ours.app(database_url, word_delay=word_delay, tokens=tokens)
    if kind == "reference":
        from bench import reference

        prefix = "sqlite+aiosqlite:///"
        if not database_url.startswith(prefix):
            raise SystemExit("the reference runs on SQLite: sqlite+aiosqlite:///PATH")
        return reference.app(
            database_url.removeprefix(prefix), word_delay=word_delay, tokens=tokens
        )
    from bench import bare

    return bare.app(word_delay=word_delay, tokens=tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--word-delay", type=float, default=0.0)
    parser.add_argument("--users", type=int, default=128)
    args = parser.parse_args()
    app = build(args.kind, args.database_url, args.word_delay, args.users)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    # Same for every kind: uvloop and httptools when installed, no access log, and a
    # backlog that takes the largest burst of clients connecting at once.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", backlog=2048)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
