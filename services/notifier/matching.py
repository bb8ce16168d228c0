"""Matching dataset events to subscriptions: the notices each event makes, and the event in the 30 days' history,
recorded in the consumer's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.notifier import storage
from services.notifier.levels import LevelOrder
from services.notifier.schedule import next_delivery
from skyport.events import CloudEvent, DatasetEvent


class Matcher:
    """Turns a batch of dataset events into pending notices, one per (subscription, event)."""

    def __init__(self, levels: LevelOrder) -> None:
        self.levels = levels

    async def record(self, conn: asyncpg.Connection, events: Sequence[CloudEvent[DatasetEvent]]) -> int:
        """Record the notices ``events`` make (inside the caller's transaction); returns how many fast ones."""
        now = datetime.now(UTC)
        await storage.record_history(conn, [past_event(e) for e in events])
        matched = [
            storage.MatchedEvent(
                mission=e.data.mission.upper(),
                propid=e.data.propid,
                type=e.data.type,
                obsets=_obsets(e.data),
                levels_at_or_below=self.levels.at_or_below(e.data.mission, e.data.level),
                archive_ids=sorted({f.archive_id for f in e.data.files}),
            )
            for e in events
        ]
        notices = []
        fast = 0
        for m in await storage.match(conn, matched):
            event = events[m.event_index]
            data = _narrowed(event.data, obset=m.obset, archive_id=m.archive_id)
            due = next_delivery(m.frequency, m.time_of_day, m.time_zone, now)  # type: ignore[arg-type]
            fast += m.frequency == "fast"
            notices.append(
                storage.NewNotice(
                    subscription_id=m.subscription_id,
                    event_id=event.id,
                    event_type=event.type,
                    event_time=event.time,
                    mission=event.data.mission.upper(),
                    propid=event.data.propid,
                    level=event.data.level,
                    data=data,
                    due_at=due,
                )
            )
        await storage.insert_notices(conn, notices)
        return fast


def past_event(event: CloudEvent[DatasetEvent]) -> storage.PastEvent:
    """The event as the 30 days' history keeps it, for previews."""
    return storage.PastEvent(
        event_id=event.id,
        event_time=event.time,
        type=event.data.type,
        mission=event.data.mission.upper(),
        propid=event.data.propid,
        level=event.data.level,
        obsets=_obsets(event.data),
        archive_ids=sorted({f.archive_id for f in event.data.files}),
        files=len(event.data.files),
    )


def _obsets(data: DatasetEvent) -> list[str]:
    return sorted(set(data.obsets) | {f.obset for f in data.files if f.obset is not None})


def _narrowed(data: DatasetEvent, *, obset: str | None, archive_id: str | None) -> dict[str, Any]:
    """The event's data with its files narrowed to those an obset or a file subscription asked about."""
    body = data.model_dump(mode="json")
    if archive_id is not None:
        body["files"] = [f for f in body["files"] if f["archive_id"] == archive_id]
    elif obset is not None:
        # Files that say their obset are narrowed to it; an event whose files do not say is the obset's as a whole.
        if any(f.get("obset") is not None for f in body["files"]):
            body["files"] = [f for f in body["files"] if f.get("obset") == obset]
        body["obsets"] = [obset]
    return body
