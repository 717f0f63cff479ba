"""What each attack did and what became of the daemon, and the verdict.

An attack fails the run when the daemon died (or stopped answering its health
checks), when its RSS grew past the bound during the attack, or when the
legitimate client's notification took longer than the bound (or never came).
Everything else it saw (ERROR codes, closes, connections the server kept
open, log growth) is reported, not judged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

MB = 1024 * 1024
#: Logins an attack makes before the report gives the RSS kept per login.
MIN_LOGINS = 1000
#: Attacks whose log growth is judged against Limits.max_log_rate: they are
#: refusals only, which a daemon logs at a bounded rate.
LOG_RATE_JUDGED = frozenset({"log-injection"})
#: Logins an attack makes before the RSS kept per login is judged.
MIN_JUDGED_LOGINS = 10000


@attrs.frozen(slots=True)
class Limits:
    """The bounds a run is judged by."""

    #: peak RSS during the attack minus RSS before it, in bytes
    max_rss_growth: int = 64 * MB
    #: seconds from the API request to the legitimate client's callback
    max_latency: float = 1.0
    #: RSS after the attack minus before, per finished login (judged from
    #: MIN_JUDGED_LOGINS logins): what a closed session leaves behind
    max_rss_per_login: int = 256
    #: bytes a second the daemon's log may grow during the log-injection
    #: attack (refusals are logged at a bounded rate)
    max_log_rate: int = 64 * 1024


@attrs.define(slots=True)
class AttackResult:
    """One attack's record."""

    name: str
    description: str
    duration: float = 0.0
    #: counters of what the attacker sent ("connections", "frames", "bytes", ...)
    sent: dict[str, Any] = attrs.Factory(dict)
    #: counters of what came back ("ERROR TOO_LARGE", "closed by server", ...)
    observed: dict[str, Any] = attrs.Factory(dict)
    #: the daemon process was alive after the attack (None: pid unknown)
    alive: bool | None = None
    #: /health answered on both APIs after the attack
    healthy: bool = True
    rss_before: int | None = None
    rss_peak: int | None = None
    rss_after: int | None = None
    #: delivery latency of each probe during the attack; None: never came
    latencies: list[float | None] = attrs.Factory(list)
    #: bytes the daemon's log grew by during the attack (None: no log file)
    log_growth: int | None = None
    #: control characters (ESC, NUL, CR...; newline and tab aside) that the
    #: attack got into the daemon's log (None: not read)
    log_controls: int | None = None
    #: the attacker failed itself (its traceback or exit status)
    attacker_error: str | None = None
    problems: list[str] = attrs.Factory(list)

    @property
    def delivered(self) -> list[float]:
        return [latency for latency in self.latencies if latency is not None]

    @property
    def lost(self) -> int:
        return sum(1 for latency in self.latencies if latency is None)

    @property
    def max_latency(self) -> float | None:
        return max(self.delivered, default=None)

    @property
    def rss_growth(self) -> int | None:
        if self.rss_before is None or self.rss_peak is None:
            return None
        return self.rss_peak - self.rss_before

    @property
    def passed(self) -> bool:
        return not self.problems


def judge(result: AttackResult, limits: Limits) -> list[str]:
    """The problems of ``result`` under ``limits`` (also stored in it)."""
    problems: list[str] = []
    if result.alive is False:
        problems.append("the daemon died")
    elif not result.healthy:
        problems.append("the daemon did not answer /health after the attack")
    growth = result.rss_growth
    if growth is not None and growth > limits.max_rss_growth:
        problems.append(
            f"RSS grew by {growth / MB:.1f} MB during the attack "
            f"(bound {limits.max_rss_growth / MB:.0f} MB)"
        )
    if not result.latencies:
        problems.append("no legitimate delivery was attempted during the attack")
    if result.lost:
        problems.append(
            f"{result.lost} of {len(result.latencies)} legitimate notifications were not "
            "delivered in time"
        )
    slowest = result.max_latency
    if slowest is not None and slowest > limits.max_latency:
        slow = sum(1 for latency in result.delivered if latency > limits.max_latency)
        problems.append(
            f"legitimate delivery took up to {slowest:.2f} s ({slow} over {limits.max_latency:g} s)"
        )
    if result.log_controls:
        problems.append(
            f"{result.log_controls} control characters (ESC, NUL, CR...) reached the "
            "daemon's log verbatim"
        )
    if (
        result.name in LOG_RATE_JUDGED
        and result.log_growth is not None
        and result.duration > 0
        and result.log_growth / result.duration > limits.max_log_rate
    ):
        problems.append(
            f"the daemon's log grew by {result.log_growth / result.duration / 1024:.0f} KB/s "
            f"(bound {limits.max_log_rate / 1024:.0f} KB/s)"
        )
    retained = retained_per_login(result)
    logins = result.observed.get("logins", 0)
    if retained is not None and logins >= MIN_JUDGED_LOGINS and retained > limits.max_rss_per_login:
        problems.append(
            f"RSS kept {retained:.0f} bytes per login after {logins} logins "
            f"(bound {limits.max_rss_per_login} bytes)"
        )
    if result.attacker_error is not None:
        problems.append(f"the attack itself failed: {result.attacker_error}")
    result.problems = problems
    return problems


def retained_per_login(result: AttackResult) -> float | None:
    """RSS after minus before, per login the attack made (None: fewer than
    MIN_LOGINS, too few for the figure to mean anything)."""
    logins = result.observed.get("logins")
    if not logins or logins < MIN_LOGINS or result.rss_before is None or result.rss_after is None:
        return None
    return (result.rss_after - result.rss_before) / logins


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _counters(counters: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in counters.items()) or "-"


def table(results: Sequence[AttackResult]) -> str:
    """A plain-text report: one summary line per attack, then the details."""
    header = ("attack", "up", "RSS before/peak/after MB", "probes", "p-max s", "verdict")
    rows = [header]
    for result in results:
        up = {True: "yes", False: "NO", None: "?"}[result.alive]
        if result.alive is not False and not result.healthy:
            up = "unhealthy"
        rows.append(
            (
                result.name,
                up,
                f"{_mb(result.rss_before)}/{_mb(result.rss_peak)}/{_mb(result.rss_after)}",
                f"{len(result.delivered)}/{len(result.latencies)}",
                _seconds(result.max_latency),
                "ok" if result.passed else "FAIL",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    for result in results:
        lines.append("")
        lines.append(f"{result.name}: {result.description} ({result.duration:.1f} s)")
        lines.append(f"  sent:     {_counters(result.sent)}")
        lines.append(f"  observed: {_counters(result.observed)}")
        if result.log_growth is not None:
            lines.append(f"  daemon log grew by {result.log_growth} bytes")
        retained = retained_per_login(result)
        if retained is not None:
            lines.append(f"  RSS kept per login after the attack: {retained:.0f} bytes")
        for problem in result.problems:
            lines.append(f"  FAIL: {problem}")
    return "\n".join(lines)


def document(results: Sequence[AttackResult], limits: Limits, **run: Any) -> dict[str, Any]:
    """The whole run as JSON-ready data (``run`` adds fields such as the seed)."""
    return {
        **run,
        "limits": attrs.asdict(limits),
        "passed": all(result.passed for result in results),
        "attacks": [
            {
                **attrs.asdict(result),
                "rss_growth": result.rss_growth,
                "max_latency": result.max_latency,
                "lost": result.lost,
                "retained_per_login": retained_per_login(result),
                "passed": result.passed,
            }
            for result in results
        ],
    }


def dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
