"""Time values on the wire and in files: epoch seconds, ISO 8601 text, durations.

Everywhere inside Apsis a time is a float of UTC seconds since the epoch; text
appears only at the edges (job files, API JSON, CLI).
"""

from __future__ import annotations

import datetime
import math
import re

from apsis_common.errors import BadInput

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*")


def parse_duration(value: object) -> float:
    """Seconds from `300`, `1.5`, `"30s"`, `"10 min"`, `"1.5h"`, `"1 day"` or `"1h 30m"`."""
    if isinstance(value, bool):
        raise BadInput(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        seconds, pos = 0.0, 0
        text = value.strip().lower()
        while pos < len(text):
            match = _DURATION.match(text, pos)
            if match is None or match.end() == pos:
                raise BadInput(f"expected a duration like '30s' or '10 min', got {value!r}")
            number, unit = match.groups()
            if unit and unit not in _UNITS:
                raise BadInput(f"unknown duration unit {unit!r} in {value!r}")
            seconds += float(number) * _UNITS.get(unit, 1.0)
            pos = match.end()
    else:
        raise BadInput(f"expected a duration, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise BadInput(f"expected a non-negative duration, got {value!r}")
    return seconds


def format_time(t: float | None) -> str | None:
    """ISO 8601 text in UTC with microseconds, or None."""
    if t is None:
        return None
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: object) -> float:
    """Epoch seconds from ISO 8601 text (a zone is required unless it is 'Z') or a number."""
    if isinstance(value, bool):
        raise BadInput(f"expected a time, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise BadInput(f"time {value!s} has no time zone")
        return value.timestamp()
    if not isinstance(value, str):
        raise BadInput(f"expected a time, got {value!r}")
    try:
        dt = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"expected an ISO 8601 time like 2027-01-01T00:00:00Z, got {value!r}"
        ) from None
    if dt.tzinfo is None:
        raise BadInput(f"time {value!r} has no time zone (add Z or +HH:MM)")
    return dt.timestamp()
