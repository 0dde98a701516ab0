"""Durations written as settings are written: `365d`, `90s`, `12h`, `30m`."""

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use a number and s, m, h or d, e.g. '365d' or '90s')")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


def parse_duration_list(text: str) -> list[timedelta]:
    """`90d,30d,7d` -> durations, longest first; an empty string means none."""
    parts = [part for part in str(text).split(",") if part.strip()]
    return sorted((parse_duration(part) for part in parts), reverse=True)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling, so `format_duration(parse_duration(x))` round-trips."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
