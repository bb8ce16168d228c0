"""Preview: what a subscription's settings would have sent over the last 30 days, before it is saved.

It replays the notifier's own 30 days' history of dataset events (``event_history``, written by the consumer for
every event) through the same rules delivery uses: the mission's level order (:class:`LevelOrder`), the triggers,
``schedule.next_delivery`` for digests, and for ``fast`` the coalescing window and the hourly cap as
``storage.after_fast_send`` applies them. Only events the person may see now count (the catalog's one rule, asked
once: :meth:`CatalogClient.visible`).

What it approximates: the history is of events, not of files, so access is judged per event (by its first file,
or by its program when it lists none); an email digest counts this subscription's own digests, where delivery
folds all of a person's digest subscriptions into one email per period; fast emails are timed by the events'
times, where delivery follows the bus and its poll interval (a second or so later).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from services.notifier import storage
from services.notifier.catalog_client import CatalogClient
from services.notifier.levels import LevelOrder
from services.notifier.models import TRIGGERS, Preview, SubscriptionRequest
from services.notifier.schedule import next_delivery
from skyport.db import Database

DAYS = 30
HISTORY_DAYS = DAYS + 1  # kept a day longer than previewed, so a preview's first day is whole
_HOUR = timedelta(hours=1)


def wants(levels: LevelOrder, request: SubscriptionRequest, event: storage.PastEvent) -> bool:
    """Whether a subscription with these settings matches ``event``: ``storage.match``'s rule, for one event."""
    if event.type not in request.triggers:
        return False
    if request.archive_id is not None:
        if request.archive_id not in event.archive_ids:
            return False
        if request.mission is not None and (request.mission, request.propid) != (event.mission, event.propid):
            return False
    elif (request.mission, request.propid) != (event.mission, event.propid):
        return False
    if request.obset is not None and request.obset not in event.obsets:
        return False
    if request.min_level is None:
        return True
    at_or_below = levels.at_or_below(event.mission, event.level)
    return request.min_level in at_or_below if request.or_above else request.min_level == at_or_below[-1]


def fast_sends(times: Sequence[datetime], window: timedelta, per_hour: int, until: datetime) -> list[datetime]:
    """When a fast subscription's emails go for notices arriving at ``times`` (sorted): the first of a burst at
    once; what comes within ``window`` of a send waits for the window's end and goes as one; after ``per_hour``
    sends within an hour the next waits for that hour to end (``storage.after_fast_send``)."""
    sends: list[datetime] = []
    next_at: datetime | None = None
    waiting = False

    def send(at: datetime) -> datetime:
        sends.append(at)
        recent = [s for s in sends if s > at - _HOUR]
        following = at + window
        if len(recent) >= per_hour:
            following = max(following, min(recent) + _HOUR)
        return following

    for t in times:
        if waiting and next_at is not None and next_at <= t:
            next_at, waiting = send(next_at), False
        if next_at is None or t >= next_at:
            next_at = send(t)
        else:
            waiting = True
    if waiting and next_at is not None and next_at <= until:
        send(next_at)
    return sends


def digest_sends(request: SubscriptionRequest, times: Sequence[datetime], until: datetime) -> list[datetime]:
    """When a digest subscription's messages go for notices arriving at ``times``: one per period end reached."""
    due = {next_delivery(request.frequency, request.local_time, request.time_zone, t) for t in times}
    return sorted(d for d in due if d <= until)


def summarise(
    levels: LevelOrder,
    request: SubscriptionRequest,
    events: Sequence[storage.PastEvent],
    *,
    now: datetime,
    coalesce_window: float,
    fast_per_hour: int,
) -> Preview:
    """The preview of ``request`` over ``events`` (those the person may see), as of ``now``."""
    kept = [e for e in events if wants(levels, request, e)]
    times = [e.event_time for e in kept]
    if request.frequency == "fast":
        sends = fast_sends(times, timedelta(seconds=coalesce_window), fast_per_hour, now)
    else:
        sends = digest_sends(request, times, now)
    by_trigger = Counter(e.type for e in kept)
    return Preview(
        days=DAYS,
        events=len(events),
        notices=len(kept),
        messages=len(sends),
        by_trigger={trigger: by_trigger[trigger] for trigger in TRIGGERS},
        first=times[0] if times else None,
        last=times[-1] if times else None,
    )


async def visible_events(
    catalog: CatalogClient, username: str, events: Sequence[storage.PastEvent]
) -> list[storage.PastEvent]:
    """The events ``username`` may see now: public ones, those whose (first) file they see, those of programs
    whose proprietary data they see. One question to the catalog."""
    if not events:
        return []
    first_files = sorted({e.archive_ids[0] for e in events if e.archive_ids})
    programs = sorted({(e.mission, e.propid) for e in events})
    answer = await catalog.visible(username, first_files, programs)
    files = set(answer.archive_ids)
    members = {(p.mission, p.propid) for p in answer.programs}
    return [
        e
        for e in events
        if e.type == "public" or (e.mission, e.propid) in members or (bool(e.archive_ids) and e.archive_ids[0] in files)
    ]


async def preview(
    db: Database,
    catalog: CatalogClient,
    levels: LevelOrder,
    username: str,
    request: SubscriptionRequest,
    *,
    now: datetime,
    coalesce_window: float,
    fast_per_hour: int,
) -> Preview:
    """What ``request`` (already :func:`subscriptions.checked`) would have sent ``username`` in the last 30 days."""
    async with db.transaction() as conn:
        past = await storage.history(
            conn,
            now - timedelta(days=DAYS),
            mission=request.mission,
            propid=request.propid,
            archive_id=request.archive_id,
        )
    # Asked with no connection held: the catalog's answer may take a while, the pool is for everyone.
    seen = await visible_events(catalog, username, past)
    return summarise(levels, request, seen, now=now, coalesce_window=coalesce_window, fast_per_hour=fast_per_hour)
