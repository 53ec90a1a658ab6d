"""Summaries of the loads, the tables the bench prints, and the issue's targets checked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

REFERENCE = "reference"


def percentile(samples: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Row:
    """One server in one scenario, pooled over the rounds it ran."""

    server: str
    clients: int
    turns: int
    rounds: int
    turns_ok: int
    errors: int
    wall_seconds: float
    events: int
    server_cpu_seconds: float
    client_cpu_seconds: float
    first_event_p50: float | None
    first_event_p99: float | None
    first_delta_p50: float | None
    first_delta_p99: float | None
    # turns/s of each round: their spread shows how steady the machine was.
    round_turns_per_s: list[float]

    @property
    def turns_per_s(self) -> float:
        return self.turns_ok / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def cpu_us_per_event(self) -> float:
        return self.server_cpu_seconds / self.events * 1e6 if self.events else 0.0

    @property
    def client_busy(self) -> float:
        """The load process's CPU share of the window: near 1.0 means the client, not the
        server, set the pace, and the row understates the server."""
        return self.client_cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "turns_per_s": self.turns_per_s,
            "events_per_s": self.events_per_s,
            "cpu_us_per_event": self.cpu_us_per_event,
            "client_busy": self.client_busy,
        }


def pool(server: str, loads: Sequence[dict[str, Any]]) -> Row:
    first_event = [s for load in loads for s in load["first_event"]]
    first_delta = [s for load in loads for s in load["first_delta"]]
    spec = loads[0]["spec"]
    return Row(
        server=server,
        clients=spec["clients"],
        turns=spec["turns"],
        rounds=len(loads),
        turns_ok=sum(load["turns_ok"] for load in loads),
        errors=sum(load["turns_failed"] for load in loads),
        wall_seconds=sum(load["wall_seconds"] for load in loads),
        events=sum(load["events"] for load in loads),
        server_cpu_seconds=sum(load["server_cpu_seconds"] for load in loads),
        client_cpu_seconds=sum(load["client_cpu_seconds"] for load in loads),
        first_event_p50=percentile(first_event, 50),
        first_event_p99=percentile(first_event, 99),
        first_delta_p50=percentile(first_delta, 50),
        first_delta_p99=percentile(first_delta, 99),
        round_turns_per_s=[load["turns_ok"] / load["wall_seconds"] for load in loads],
    )


@dataclass
class PaceRow:
    server: str
    clients: int
    turns: int
    turns_ok: int
    errors: int
    first_event_p50: float | None
    first_event_p99: float | None
    first_delta_p50: float | None
    first_delta_p99: float | None
    get_by_id_p50: float | None
    get_by_id_p99: float | None
    readyz_p50: float | None
    readyz_p99: float | None
    probes: int
    probe_errors: list[str]
    cpu_us_per_event: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def pace_row(server: str, load: dict[str, Any], probe: dict[str, Any]) -> PaceRow:
    spec = load["spec"]
    return PaceRow(
        server=server,
        clients=spec["clients"],
        turns=spec["turns"],
        turns_ok=load["turns_ok"],
        errors=load["turns_failed"],
        first_event_p50=percentile(load["first_event"], 50),
        first_event_p99=percentile(load["first_event"], 99),
        first_delta_p50=percentile(load["first_delta"], 50),
        first_delta_p99=percentile(load["first_delta"], 99),
        get_by_id_p50=percentile(probe["get_by_id"], 50),
        get_by_id_p99=percentile(probe["get_by_id"], 99),
        readyz_p50=percentile(probe["readyz"], 50),
        readyz_p99=percentile(probe["readyz"], 99),
        probes=len(probe["get_by_id"]) + len(probe["readyz"]),
        probe_errors=probe["errors"][:10],
        cpu_us_per_event=load["server_cpu_seconds"] / load["events"] * 1e6 if load["events"] else 0,
    )


@dataclass
class CostRow:
    """CPU per turn = fixed + marginal x events, from a short-turn and a long-turn load."""

    server: str
    events_per_turn: tuple[float, float]
    cpu_ms_per_turn: tuple[float, float]
    fixed_ms_per_turn: float
    marginal_us_per_event: float


def cost_row(server: str, short: dict[str, Any], long: dict[str, Any]) -> CostRow:
    def per_turn(load: dict[str, Any]) -> tuple[float, float]:
        turns = max(load["turns_ok"] + load["turns_failed"], 1)
        return load["events"] / turns, load["server_cpu_seconds"] / turns * 1000

    (e1, c1), (e2, c2) = per_turn(short), per_turn(long)
    marginal_ms = (c2 - c1) / (e2 - e1) if e2 != e1 else 0.0
    return CostRow(
        server=server,
        events_per_turn=(e1, e2),
        cpu_ms_per_turn=(c1, c2),
        fixed_ms_per_turn=c1 - marginal_ms * e1,
        marginal_us_per_event=marginal_ms * 1000,
    )


# -- tables ------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _ratio(row: Any, ref: Any, name: str) -> str:
    """`row.name` as a multiple of the reference's, or "-" where there is none."""
    value = getattr(row, name)
    reference = getattr(ref, name) if ref is not None else None
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def throughput_table(rows: Sequence[Row]) -> str:
    """One block per client count; every ratio is to the reference in the same block."""
    lines: list[str] = []
    header = (
        f"{'server':<16}{'turns/s':>9}{'x ref':>7}{'events/s':>10}{'x ref':>7}"
        f"{'1st ev p50 ms':>14}{'x ref':>7}{'p99 ms':>9}{'x ref':>7}"
        f"{'CPU us/ev':>10}{'x ref':>7}{'1st delta p50':>14}{'errors':>7}{'client':>7}"
        f"{'rounds turns/s':>17}"
    )
    for clients in sorted({r.clients for r in rows}):
        block = [r for r in rows if r.clients == clients]
        ref = next((r for r in block if r.server == REFERENCE), None)
        first = block[0]
        lines.append(f"\n{clients} client(s) x {first.turns} turns, {first.rounds} round(s) pooled")
        lines.append(header)
        lines.append("-" * len(header))
        for r in block:
            lines.append(
                f"{r.server:<16}{r.turns_per_s:>9.1f}{_ratio(r, ref, 'turns_per_s'):>7}"
                f"{r.events_per_s:>10,.0f}{_ratio(r, ref, 'events_per_s'):>7}"
                f"{_ms(r.first_event_p50):>14}{_ratio(r, ref, 'first_event_p50'):>7}"
                f"{_ms(r.first_event_p99):>9}{_ratio(r, ref, 'first_event_p99'):>7}"
                f"{r.cpu_us_per_event:>10.1f}{_ratio(r, ref, 'cpu_us_per_event'):>7}"
                f"{_ms(r.first_delta_p50):>14}{r.errors:>7}{r.client_busy:>7.0%}"
                f"{'  ' + ' '.join(f'{t:.0f}' for t in r.round_turns_per_s):<17}"
            )
    return "\n".join(lines)


def cost_table(rows: Sequence[CostRow], words: Sequence[int]) -> str:
    if not rows:
        return ""
    ref = next((r for r in rows if r.server == REFERENCE), None)
    header = (
        f"{'server':<16}{'fixed CPU ms/turn':>18}{'x ref':>7}{'marginal us/event':>18}"
        f"{'x ref':>7}{'CPU ms/turn short, long':>25}"
    )
    lines = [
        f"\ncost model: CPU per turn = fixed + marginal x events ({words[0]}- and "
        f"{words[1]}-word turns)",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r.server:<16}{r.fixed_ms_per_turn:>18.2f}{_ratio(r, ref, 'fixed_ms_per_turn'):>7}"
            f"{r.marginal_us_per_event:>18.1f}{_ratio(r, ref, 'marginal_us_per_event'):>7}"
            f"{r.cpu_ms_per_turn[0]:>15.2f}, {r.cpu_ms_per_turn[1]:.2f}"
        )
    return "\n".join(lines)


def pace_table(rows: Sequence[PaceRow], delay: float, words: int, ramp: float) -> str:
    if not rows:
        return ""
    first = rows[0]
    header = (
        f"{'server':<16}{'1st ev p50':>11}{'p99':>8}{'1st delta p50':>14}{'p99':>8}"
        f"{'get_by_id p50':>14}{'p99':>8}{'readyz p50':>11}{'p99':>8}"
        f"{'probes':>7}{'errors':>7}{'CPU us/ev':>10}"
    )
    lines = [
        f"\nmodel's pace: {first.clients} clients x {first.turns} turns x {words} deltas, "
        f"{delay * 1000:.0f} ms between deltas, "
        + (f"first turns spread over {ramp:g} s" if ramp else "all clients starting at once")
        + " (all times ms)",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r.server:<16}{_ms(r.first_event_p50):>11}{_ms(r.first_event_p99):>8}"
            f"{_ms(r.first_delta_p50):>14}{_ms(r.first_delta_p99):>8}"
            f"{_ms(r.get_by_id_p50):>14}{_ms(r.get_by_id_p99):>8}"
            f"{_ms(r.readyz_p50):>11}{_ms(r.readyz_p99):>8}"
            f"{r.probes:>7}{r.errors + len(r.probe_errors):>7}{r.cpu_us_per_event:>10.1f}"
        )
    return "\n".join(lines)


# -- the issue's targets -----------------------------------------------------------------------


@dataclass
class Target:
    server: str
    target: str
    measured: str
    met: bool


def targets(rows: Iterable[Row], pace: Iterable[PaceRow]) -> list[Target]:
    rows, pace = list(rows), list(pace)
    checks: list[Target] = []
    refs = {r.clients: r for r in rows if r.server == REFERENCE}
    for r in rows:
        if not r.server.startswith("ours"):
            continue
        ref = refs.get(r.clients)
        if r.clients == 16 and ref is not None:
            ratio = r.turns_per_s / ref.turns_per_s if ref.turns_per_s else 0.0
            checks.append(
                Target(
                    r.server, "16 clients: turns/s >= 1.5x reference", f"{ratio:.2f}x", ratio >= 1.5
                )
            )
            checks.append(_latency(r, ref, 1.0, "16 clients: first-event p50 <= reference"))
        if r.clients == 1 and ref is not None:
            checks.append(_latency(r, ref, 2.0, "1 client: first-event p50 <= 2x reference"))
        if r.clients == max(refs, default=0):
            checks.append(
                Target(
                    r.server,
                    f"{r.clients} clients: no errors, every transcript complete",
                    f"{r.errors} failed of {r.turns_ok + r.errors}",
                    r.errors == 0,
                )
            )
    for p in pace:
        if not p.server.startswith("ours"):
            continue
        fe = p.first_event_p99
        checks.append(
            Target(
                p.server,
                f"pace, {p.clients} clients: first-event p99 < 250 ms",
                f"{_ms(fe)} ms",
                fe is not None and fe < 0.250,
            )
        )
        worst = max((v for v in (p.get_by_id_p99, p.readyz_p99) if v is not None), default=None)
        checks.append(
            Target(
                p.server,
                "pace: reads (get_by_id, /readyz) p99 < 50 ms",
                f"get_by_id {_ms(p.get_by_id_p99)} ms, readyz {_ms(p.readyz_p99)} ms",
                worst is not None and worst < 0.050 and not p.probe_errors,
            )
        )
    return checks


def _latency(row: Row, ref: Row, factor: float, name: str) -> Target:
    ours, theirs = row.first_event_p50, ref.first_event_p50
    met = ours is not None and theirs is not None and ours <= factor * theirs
    return Target(row.server, name, f"{_ms(ours)} ms vs {_ms(theirs)} ms", met)


def targets_table(checks: Sequence[Target]) -> str:
    return "\n".join(
        f"{c.server:<16}{c.target:<52}{c.measured:<34}{'met' if c.met else 'NOT met'}"
        for c in checks
    )
