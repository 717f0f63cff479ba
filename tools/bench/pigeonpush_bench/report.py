"""Results: a table for people, a JSON document for machines, progress meanwhile.

A ``Report`` holds one scenario's figures for each system measured (the
subject, ``pigeonpush``, first; then the baselines), the ratio of the subject
to each baseline, the issue's targets with whether they were met, and the
parameters and machine that give the numbers their meaning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import IO, Any

import attrs
from twisted.internet.interfaces import IReactorTime

SUBJECT = "pigeonpush"

Number = float | int | None


@attrs.define(slots=True)
class Metric:
    key: str
    label: str
    unit: str
    values: dict[str, Number] = attrs.field(factory=dict)
    #: Whether a larger value is better (rates) or worse (memory, latency).
    higher_is_better: bool = True

    def ratio(self, baseline: str, subject: str = SUBJECT) -> float | None:
        """subject / baseline, when both exist and the baseline is not zero."""
        mine, theirs = self.values.get(subject), self.values.get(baseline)
        if mine is None or theirs is None or theirs == 0:
            return None
        return float(mine) / float(theirs)


@attrs.define(slots=True)
class Target:
    """One of the issue's targets: e.g. added RSS per connection <= 2x bare Twisted."""

    text: str
    met: bool | None  #: None when the run did not measure what it needs
    detail: str = ""


@attrs.define(slots=True)
class Report:
    scenario: str
    title: str
    parameters: dict[str, Any]
    systems: list[str]
    metrics: list[Metric] = attrs.field(factory=list)
    targets: list[Target] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    machine: dict[str, Any] = attrs.field(factory=dict)
    command: str = ""
    ok: bool = True
    #: (numerator, denominator) of each ratio column; None: the subject over
    #: each baseline
    comparisons: list[tuple[str, str]] | None = None

    def metric(self, key: str) -> Metric:
        for metric in self.metrics:
            if metric.key == key:
                return metric
        raise KeyError(key)

    def add(
        self,
        key: str,
        label: str,
        unit: str,
        values: Mapping[str, Number],
        *,
        higher_is_better: bool = True,
    ) -> Metric:
        metric = Metric(key, label, unit, dict(values), higher_is_better)
        self.metrics.append(metric)
        return metric

    @property
    def baselines(self) -> list[str]:
        return [system for system in self.systems if system != SUBJECT]

    @property
    def ratio_pairs(self) -> list[tuple[str, str]]:
        """The ratio columns: ``comparisons``, or the subject over each baseline."""
        if self.comparisons is not None:
            return self.comparisons
        return [(SUBJECT, baseline) for baseline in self.baselines]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "title": self.title,
            "ok": self.ok,
            "command": self.command,
            "parameters": self.parameters,
            "machine": self.machine,
            "systems": self.systems,
            "metrics": [
                {
                    "key": metric.key,
                    "label": metric.label,
                    "unit": metric.unit,
                    "higher_is_better": metric.higher_is_better,
                    "values": {system: _json_number(v) for system, v in metric.values.items()},
                    "ratios": {
                        _ratio_name(subject, baseline): _json_number(
                            metric.ratio(baseline, subject)
                        )
                        for subject, baseline in self.ratio_pairs
                        if metric.ratio(baseline, subject) is not None
                    },
                }
                for metric in self.metrics
            ],
            "targets": [
                {"text": target.text, "met": target.met, "detail": target.detail}
                for target in self.targets
            ],
            "notes": self.notes,
        }


def _ratio_name(subject: str, baseline: str) -> str:
    """A ratio's JSON key: the baseline's name for the subject's ratios, else
    ``subject/baseline``."""
    return baseline if subject == SUBJECT else f"{subject}/{baseline}"


def _json_number(value: Number) -> Number:
    if value is None or isinstance(value, int):
        return value
    if math.isnan(value) or math.isinf(value):
        return None
    return round(value, 6)


def format_number(value: Number) -> str:
    """Thousands separators, about four significant digits, "-" for nothing."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value) or math.isinf(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3g}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(report: Report) -> str:
    """The human table: one row per metric, a column per system, then ratios."""
    header = ["metric", *report.systems]
    header += [f"{subject}/{baseline}" for subject, baseline in report.ratio_pairs]
    rows: list[list[str]] = []
    for metric in report.metrics:
        label = f"{metric.label} ({metric.unit})" if metric.unit else metric.label
        row = [label]
        row += [format_number(metric.values.get(system)) for system in report.systems]
        row += [format_ratio(metric.ratio(b, subject)) for subject, b in report.ratio_pairs]
        rows.append(row)
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    out = [report.title, ""]
    if report.parameters:
        out.append(
            "parameters: " + ", ".join(f"{key}={value}" for key, value in report.parameters.items())
        )
    if report.machine:
        m = report.machine
        out.append(
            f"machine: {m.get('cpus')} CPUs ({m.get('cpu_model') or 'unknown'}), "
            f"{m.get('memory_gib')} GiB, fd limit {m.get('fd_limit')}, "
            f"Linux {m.get('kernel')}, Python {m.get('python')}, Twisted {m.get('twisted')}"
        )
    if report.command:
        out.append(f"command: {report.command}")
    out.append("")
    out.append(line(header))
    out.append(line(["-" * width for width in widths]))
    out.extend(line(row) for row in rows)
    if report.targets:
        out.append("")
        out.append("targets:")
        for target in report.targets:
            mark = {True: "met", False: "NOT MET", None: "not measured"}[target.met]
            detail = f" ({target.detail})" if target.detail else ""
            out.append(f"  [{mark}] {target.text}{detail}")
    if report.notes:
        out.append("")
        out.extend(f"note: {note}" for note in report.notes)
    return "\n".join(out) + "\n"


def format_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"


class Progress:
    """One status line on stderr: rewritten in place on a terminal, otherwise a
    line at most every ``interval`` seconds (logs stay readable)."""

    def __init__(
        self,
        stream: IO[str],
        clock: IReactorTime,
        *,
        interactive: bool | None = None,
        interval: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._interactive = stream.isatty() if interactive is None else interactive
        self._interval = interval
        self._enabled = enabled
        self._last_write = -math.inf
        self._width = 0
        self._started = clock.seconds()

    def update(self, text: str) -> None:
        if not self._enabled:
            return
        elapsed = self._clock.seconds() - self._started
        text = f"[{elapsed:6.1f}s] {text}"
        if self._interactive:
            padding = " " * max(0, self._width - len(text))
            self._stream.write("\r" + text + padding)
            self._width = len(text)
            self._stream.flush()
        elif self._clock.seconds() - self._last_write >= self._interval:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last_write = self._clock.seconds()

    def phase(self, text: str) -> None:
        """A new step: always shown, on its own line."""
        if not self._enabled:
            return
        self.clear()
        elapsed = self._clock.seconds() - self._started
        self._stream.write(f"[{elapsed:6.1f}s] {text}\n")
        self._stream.flush()
        self._last_write = -math.inf

    def clear(self) -> None:
        if self._enabled and self._interactive and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
