"""``--log-format json``: one JSON object per line, for log collectors.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``text``
(the event rendered by ``twisted.logger.formatEvent``), the event's own
fields under ``fields`` (values JSON cannot hold as their ``repr``), and
``traceback`` when the event carries a failure. It goes where twistd would
have written its text lines: ``--logfile`` (rotated the same way), or
standard output under ``-n`` without one.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

import attrs
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile

LOG_FORMATS = ("text", "json")

# Keys of legacy (twisted.python.log) events that repeat what the record says.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure"})


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def event_as_json_line(event: LogEvent) -> str:
    """One event as one line of JSON (ASCII: control characters and lone
    surrogates in the text are escaped, so no event can forge another line)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", event.get("system", "-")),
        "text": formatEvent(event),
        "fields": {
            key: _jsonable(value)
            for key, value in event.items()
            if not key.startswith("log_") and key not in _LEGACY_KEYS
        },
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a broken failure must not lose the record
            record["traceback"] = repr(failure)
    return json.dumps(record) + "\n"


def json_file_observer(out: IO[Any]) -> ILogObserver:
    """An observer writing ``event_as_json_line`` records to ``out``."""
    return FileLogObserver(out, event_as_json_line)


@attrs.define
class TwistdJsonObserver:
    """The observer factory twistd calls (``--logger`` names it): JSON lines
    to where twistd's text lines would have gone."""

    logfile: str = ""
    nodaemon: bool = False

    def __call__(self) -> ILogObserver:
        if self.logfile == "-" or (self.nodaemon and not self.logfile):
            return json_file_observer(sys.stdout)
        return json_file_observer(LogFile.fromFullPath(self.logfile or "twistd.log"))


#: twistd's ``--logger`` takes a dotted name, so the factory is a module
#: attribute, set up by ``install_log_format``.
twistd_observer = TwistdJsonObserver()


def install_log_format(log_format: str, twistd_options: Any) -> None:
    """Make twistd log in ``log_format``: for json, point its ``--logger``
    option at ``twistd_observer`` (unless a logger was given, or
    ``--syslog``), set up to write where twistd's own would."""
    if log_format != "json" or twistd_options.get("logger") or twistd_options.get("syslog"):
        return
    twistd_observer.logfile = twistd_options.get("logfile") or ""
    twistd_observer.nodaemon = bool(twistd_options.get("nodaemon"))
    twistd_options["logger"] = f"{__name__}.twistd_observer"
