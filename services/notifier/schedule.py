"""When a digest is due: the end of the subscriber's period, at their time of day in their time zone."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.notifier.models import Frequency


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not a time zone (an IANA name such as 'Pacific/Honolulu')") from exc


def next_delivery(frequency: Frequency, at: time, time_zone: str, after: datetime) -> datetime:
    """The first delivery time of a digest strictly after ``after`` (UTC), for notices that arrive at ``after``.

    - ``fast``: ``after`` itself (the delivery loop applies the coalescing window and the cap);
    - ``hourly``: the next hour at ``at``'s minute;
    - ``daily``: the next ``at`` in ``time_zone``;
    - ``weekly``: the next Monday at ``at``;
    - ``monthly``: the next first of a month at ``at``.

    Local times are built on the local calendar and then converted, so a daily digest stays at 08:00 across a
    change of summer time; a local time that a change skips is taken as the zone's rule places it (PEP 495).
    """
    if frequency == "fast":
        return after
    tz = zone(time_zone)
    local = after.astimezone(tz)
    if frequency == "hourly":
        candidate = local.replace(minute=at.minute, second=0, microsecond=0)
        while candidate <= local:
            candidate += timedelta(hours=1)
        return candidate.astimezone(UTC)
    day = local.date()
    while True:
        if frequency == "weekly" and day.weekday() != 0:
            day += timedelta(days=1)
            continue
        if frequency == "monthly" and day.day != 1:
            day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
            continue
        candidate = datetime.combine(day, at, tzinfo=tz)
        if candidate > local:
            return candidate.astimezone(UTC)
        day += timedelta(days=1)
