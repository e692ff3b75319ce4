"""Percentiles and times as the figures need them."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def epoch(text: str) -> float:
    """Epoch seconds from the API's ISO 8601 UTC text."""
    return datetime.datetime.fromisoformat(text).timestamp()


def iso(t: float) -> str:
    """The API's ISO 8601 UTC text for epoch seconds."""
    dt = datetime.datetime.fromtimestamp(t, datetime.UTC)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")
