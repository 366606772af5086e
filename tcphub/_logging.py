"""
The plugins' C{--log-level} and C{--log-format}: the observer twistd would
have used, filtered by level, or the same destination written as JSON lines.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any, Mapping, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from tcphub._upstream.twisted_parts import twistd_destination

__all__ = ["FORMATS", "LEVELS", "JsonLines", "twistd_observer"]

LEVELS = {level.name: level for level in LogLevel.iterconstants()}
FORMATS = ("text", "json")
# Fields of an event that are the logging system's own, not the event's.
_RESERVED = frozenset({"format", "message", "isError", "system", "time", "why", "failure", "printed"})


@implementer(ILogObserver)
class JsonLines:
    """One JSON object per line: C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{message} (the event formatted), C{traceback} if it
    carries a failure, and the event's own fields (as text when JSON has no
    type for them)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: Mapping[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc).isoformat(),
            "level": level.name if isinstance(level, type(LogLevel.info)) else None,
            "namespace": event.get("log_namespace"),
            "message": formatEvent(dict(event)),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        for key, value in event.items():
            if key.startswith("log_") or key in _RESERVED or key in record:
                continue
            record[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()


def twistd_observer(server_options: Mapping[str, Any], log_format: str, level: str) -> ILogObserver:
    """
    What twistd would log to for C{server_options} (C{--logfile},
    C{--nodaemon}, C{--syslog}), in C{log_format}, at C{level} and above.
    """
    destination: ILogObserver
    if log_format == "json":
        destination = JsonLines(_log_stream(server_options))
    else:
        destination = twistd_destination(server_options)
    return FilteringLogObserver(destination, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])])


def _log_stream(server_options: Mapping[str, Any]) -> IO[str]:
    logfile = server_options.get("logfile") or ""
    if logfile == "-" or (server_options.get("nodaemon") and not logfile):
        return sys.stdout
    return cast(IO[str], LogFile.fromFullPath(logfile or "twistd.log"))
