"""The notifier's SQL: subscriptions, pending notices, deliveries and attempts. Store functions take a connection
and never commit; the caller (a handler, the consumer, the delivery loop, a command) owns the transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.notifier.models import Subscription, SubscriptionRequest


def _columns(table: str = "") -> str:
    """The columns of a :class:`Subscription`, of ``table`` (an alias) when the query joins others."""
    t = f"{table}." if table else ""
    names = [
        "subscription_id",
        "username",
        "email",
        "mission",
        "propid",
        "obset",
        "archive_id",
        "triggers",
        "min_level",
        "or_above",
        "frequency",
    ]
    tail = ["time_zone", "channel", "webhook_url", "active", "stopped_at", "stopped_reason", "created_at"]
    return ", ".join(
        [f"{t}{n}" for n in names] + [f"to_char({t}time_of_day, 'HH24:MI') AS time_of_day"] + [f"{t}{n}" for n in tail]
    )


_SUBSCRIPTION_COLUMNS = _columns()


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription.model_validate(dict(row))


# --- subscriptions ---------------------------------------------------------------------------------------


async def insert_subscription(
    conn: asyncpg.Connection, username: str, email: str, request: SubscriptionRequest, webhook_secret: str | None = None
) -> Subscription:
    row = await conn.fetchrow(
        "INSERT INTO subscriptions (username, email, mission, propid, obset, archive_id, triggers, min_level, "
        "frequency, time_of_day, time_zone, channel, webhook_url, webhook_secret, or_above) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
        f"RETURNING {_SUBSCRIPTION_COLUMNS}",
        username,
        email,
        request.mission,
        request.propid,
        request.obset,
        request.archive_id,
        list(request.triggers),
        request.min_level,
        request.frequency,
        request.local_time,
        request.time_zone,
        request.channel,
        request.webhook_url,
        webhook_secret,
        request.or_above,
    )
    return _subscription(row)


async def subscription(
    conn: asyncpg.Connection, subscription_id: int, *, username: str | None = None, lock: bool = False
) -> Subscription | None:
    """One subscription (only if it is ``username``'s, when given), locked for the transaction when ``lock``."""
    row = await conn.fetchrow(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE subscription_id = $1 "
        f"AND ($2::text IS NULL OR username = $2){' FOR UPDATE' if lock else ''}",
        subscription_id,
        username,
    )
    return None if row is None else _subscription(row)


async def update_subscription(
    conn: asyncpg.Connection,
    subscription_id: int,
    request: SubscriptionRequest,
    *,
    new_secret: str | None,
    clear_secret: bool,
    restart: bool,
) -> Subscription:
    """Keep a subscription's new settings; ``new_secret`` replaces its webhook secret, ``clear_secret`` drops it
    (no longer a webhook), ``restart`` clears a stopped channel (a new channel or receiver deserves a try)."""
    row = await conn.fetchrow(
        "UPDATE subscriptions SET triggers = $2, min_level = $3, or_above = $4, frequency = $5, time_of_day = $6, "
        "time_zone = $7, channel = $8, webhook_url = $9, "
        "webhook_secret = CASE WHEN $11 THEN NULL ELSE coalesce($10, webhook_secret) END, "
        "stopped_at = CASE WHEN $12 THEN NULL ELSE stopped_at END, "
        "stopped_reason = CASE WHEN $12 THEN NULL ELSE stopped_reason END "
        f"WHERE subscription_id = $1 RETURNING {_SUBSCRIPTION_COLUMNS}",
        subscription_id,
        list(request.triggers),
        request.min_level,
        request.or_above,
        request.frequency,
        request.local_time,
        request.time_zone,
        request.channel,
        request.webhook_url,
        new_secret,
        clear_secret,
        restart,
    )
    return _subscription(row)


async def set_webhook_secret(conn: asyncpg.Connection, subscription_id: int, secret: str) -> None:
    await conn.execute(
        "UPDATE subscriptions SET webhook_secret = $2 WHERE subscription_id = $1 AND channel = 'webhook'",
        subscription_id,
        secret,
    )


async def webhook_of(conn: asyncpg.Connection, subscription_id: int) -> tuple[str, str] | None:
    """A webhook subscription's receiver and secret; None if there is no such webhook subscription."""
    row = await conn.fetchrow(
        "SELECT webhook_url, webhook_secret FROM subscriptions WHERE subscription_id = $1 AND channel = 'webhook'",
        subscription_id,
    )
    return None if row is None else (row["webhook_url"], row["webhook_secret"])


async def waiting_notices(conn: asyncpg.Connection, subscription_id: int) -> list[tuple[int, datetime]]:
    """A subscription's pending notices and when each came (locked: the delivery loop skips them meanwhile)."""
    rows = await conn.fetch(
        "SELECT notice_id, created_at FROM pending_notices WHERE subscription_id = $1 AND state = 'pending' FOR UPDATE",
        subscription_id,
    )
    return [(row["notice_id"], row["created_at"]) for row in rows]


async def set_due(conn: asyncpg.Connection, due: dict[int, datetime]) -> None:
    if due:
        await conn.execute(
            "UPDATE pending_notices n SET due_at = d.due FROM unnest($1::bigint[], $2::timestamptz[]) AS d(id, due) "
            "WHERE n.notice_id = d.id",
            list(due),
            list(due.values()),
        )


async def subscriptions(conn: asyncpg.Connection, username: str | None = None) -> list[Subscription]:
    """A person's subscriptions (everyone's when ``username`` is None), oldest first."""
    rows = await conn.fetch(
        f"SELECT {_SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE $1::text IS NULL OR username = $1 "
        "ORDER BY subscription_id",
        username,
    )
    return [_subscription(row) for row in rows]


async def end_subscriptions(conn: asyncpg.Connection, subscription_ids: Sequence[int], reason: str) -> int:
    """Make subscriptions inactive; what they still had waiting is withheld with ``reason``. Returns how many ended."""
    ended = await conn.fetch(
        "UPDATE subscriptions SET active = false WHERE subscription_id = ANY($1::bigint[]) AND active "
        "RETURNING subscription_id",
        list(subscription_ids),
    )
    await _close_pending(conn, subscription_ids, "withheld")
    return len(ended)


async def delete_subscription(conn: asyncpg.Connection, subscription_id: int, username: str) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM subscriptions WHERE subscription_id = $1 AND username = $2 RETURNING true",
        subscription_id,
        username,
    )
    return bool(deleted)


async def drop_revoked(conn: asyncpg.Connection, username: str, mission: str, propid: str) -> int:
    """A person's waiting notices of a program whose membership they lost, withheld now (those of the data's
    going public excepted: anyone may be told of those); returns how many."""
    result: str = await conn.execute(
        "UPDATE pending_notices n SET state = 'withheld' FROM subscriptions s "
        "WHERE s.subscription_id = n.subscription_id AND s.username = $1 AND n.mission = $2 AND n.propid = $3 "
        "AND n.state = 'pending' AND n.event_type <> 'dataset.public'",
        username,
        mission,
        propid,
    )
    return int(result.split()[-1])


async def stop_channel(conn: asyncpg.Connection, subscription_ids: Sequence[int], reason: str) -> None:
    """The channel refused for good (SMTP 5xx, webhook 410): nothing more is tried until the subscriber or an
    operator acts."""
    await conn.execute(
        "UPDATE subscriptions SET stopped_at = now(), stopped_reason = $2 "
        "WHERE subscription_id = ANY($1::bigint[]) AND stopped_at IS NULL",
        list(subscription_ids),
        reason,
    )
    await _close_pending(conn, subscription_ids, "failed")


async def _close_pending(conn: asyncpg.Connection, subscription_ids: Sequence[int], state: str) -> None:
    await conn.execute(
        "UPDATE pending_notices SET state = $2 WHERE subscription_id = ANY($1::bigint[]) AND state = 'pending'",
        list(subscription_ids),
        state,
    )


# --- matching --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchedEvent:
    """One dataset event as matching reads it."""

    mission: str  # upper-case, as subscriptions keep it
    propid: str
    type: str
    obsets: Sequence[str]
    levels_at_or_below: Sequence[str]  # the mission's levels up to the event's (last), as the configuration spells
    archive_ids: Sequence[str]


@dataclass(frozen=True)
class Match:
    event_index: int
    subscription_id: int
    obset: str | None
    archive_id: str | None
    frequency: str
    time_of_day: Any
    time_zone: str


# "min_level or above": the event's level is one of the mission's levels up to it; "min_level only": it is that one.
_LEVEL_RULE = (
    "(s.min_level IS NULL OR CASE WHEN s.or_above THEN e.levels::jsonb ? s.min_level ELSE e.level = s.min_level END)"
)

# Two indexed lookups (by program, by archive ID) rather than one join with an OR, which no index serves.
_MATCH = f"""
WITH e AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $9::text[])
        AS e(idx, mission, propid, type, obsets, levels, level)
)
SELECT e.idx, s.subscription_id, s.obset, NULL::text AS archive_id, s.frequency, s.time_of_day, s.time_zone
FROM e JOIN subscriptions s ON s.mission = e.mission AND s.propid = e.propid
WHERE s.archive_id IS NULL AND s.active AND s.stopped_at IS NULL
  AND e.type = ANY(s.triggers)
  AND {_LEVEL_RULE}
  AND (s.obset IS NULL OR e.obsets::jsonb ? s.obset)
UNION ALL
SELECT e.idx, s.subscription_id, NULL, s.archive_id, s.frequency, s.time_of_day, s.time_zone
FROM unnest($7::int[], $8::text[]) AS f(idx, archive_id)
JOIN e ON e.idx = f.idx
JOIN subscriptions s ON s.archive_id = f.archive_id
WHERE s.active AND s.stopped_at IS NULL
  AND e.type = ANY(s.triggers)
  AND (s.mission IS NULL OR (s.mission = e.mission AND s.propid = e.propid))
  AND {_LEVEL_RULE}
"""


async def match(conn: asyncpg.Connection, events: Sequence[MatchedEvent]) -> list[Match]:
    """The active subscriptions each event concerns, in one statement for the whole batch."""
    file_index = [i for i, event in enumerate(events) for _ in event.archive_ids]
    file_ids = [archive_id for event in events for archive_id in event.archive_ids]
    rows = await conn.fetch(
        _MATCH,
        list(range(len(events))),
        [e.mission for e in events],
        [e.propid for e in events],
        [e.type for e in events],
        [json.dumps(list(e.obsets)) for e in events],
        [json.dumps(list(e.levels_at_or_below)) for e in events],
        file_index,
        file_ids,
        [e.levels_at_or_below[-1] for e in events],
    )
    return [
        Match(
            row["idx"],
            row["subscription_id"],
            row["obset"],
            row["archive_id"],
            row["frequency"],
            row["time_of_day"],
            row["time_zone"],
        )
        for row in rows
    ]


@dataclass(frozen=True)
class NewNotice:
    subscription_id: int
    event_id: str
    event_type: str
    event_time: datetime
    mission: str
    propid: str
    level: str
    data: dict[str, Any]
    due_at: datetime


async def insert_notices(conn: asyncpg.Connection, notices: Sequence[NewNotice]) -> int:
    """Record notices (once per subscription and event, however often the event comes); returns how many are new."""
    if not notices:
        return 0
    rows = await conn.fetch(
        "INSERT INTO pending_notices (subscription_id, event_id, event_type, event_time, mission, propid, level, "
        "data, due_at) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], "
        "$6::text[], $7::text[], $8::jsonb[], $9::timestamptz[]) "
        "ON CONFLICT (subscription_id, event_id) DO NOTHING RETURNING notice_id",
        [n.subscription_id for n in notices],
        [n.event_id for n in notices],
        [n.event_type for n in notices],
        [n.event_time for n in notices],
        [n.mission for n in notices],
        [n.propid for n in notices],
        [n.level for n in notices],
        [json.dumps(n.data) for n in notices],
        [n.due_at for n in notices],
    )
    return len(rows)


# --- the 30 days' history (previews) ------------------------------------------------------------------------


@dataclass(frozen=True)
class PastEvent:
    """A dataset event as the history keeps it: enough to match it and schedule it again, no more."""

    event_id: str
    event_time: datetime
    type: str
    mission: str
    propid: str
    level: str
    obsets: Sequence[str]
    archive_ids: Sequence[str]
    files: int


async def record_history(conn: asyncpg.Connection, events: Sequence[PastEvent]) -> None:
    """Keep every consumed dataset event (once, however often it comes), in the consumer's transaction."""
    if not events:
        return
    await conn.execute(
        "INSERT INTO event_history (event_id, event_time, type, mission, propid, level, obsets, archive_ids, files) "
        "SELECT e.event_id, e.event_time, e.type, e.mission, e.propid, e.level, "
        "ARRAY(SELECT jsonb_array_elements_text(e.obsets)), ARRAY(SELECT jsonb_array_elements_text(e.archive_ids)), "
        "e.files FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], "
        "$7::jsonb[], $8::jsonb[], $9::int[]) "
        "AS e(event_id, event_time, type, mission, propid, level, obsets, archive_ids, files) "
        "ON CONFLICT (event_id) DO NOTHING",
        [e.event_id for e in events],
        [e.event_time for e in events],
        [e.type for e in events],
        [e.mission for e in events],
        [e.propid for e in events],
        [e.level for e in events],
        [json.dumps(list(e.obsets)) for e in events],
        [json.dumps(list(e.archive_ids)) for e in events],
        [e.files for e in events],
    )


async def history(
    conn: asyncpg.Connection,
    since: datetime,
    *,
    mission: str | None,
    propid: str | None,
    archive_id: str | None,
) -> list[PastEvent]:
    """The events since ``since`` of a program (``mission``, ``propid``) or of one file, oldest first."""
    if archive_id is not None:
        where = "archive_ids @> ARRAY[$2::text] AND ($3::text IS NULL OR (mission = $3 AND propid = $4))"
        args: tuple[Any, ...] = (archive_id, mission, propid)
    else:
        where = "mission = $2 AND propid = $3"
        args = (mission, propid)
    rows = await conn.fetch(
        "SELECT event_id, event_time, type, mission, propid, level, obsets, archive_ids, files FROM event_history "
        f"WHERE event_time > $1 AND {where} ORDER BY event_time, event_id",
        since,
        *args,
    )
    return [PastEvent(**dict(row)) for row in rows]


async def prune_history(conn: asyncpg.Connection, before: datetime) -> int:
    result: str = await conn.execute("DELETE FROM event_history WHERE event_time < $1", before)
    return int(result.split()[-1])


# --- the inbox (in-page notices) --------------------------------------------------------------------------


async def insert_inbox(
    conn: asyncpg.Connection,
    username: str,
    subscription_id: int | None,
    delivery_id: int,
    notices: Sequence[tuple[str, dict[str, Any]]],
    now: datetime,
) -> None:
    """One inbox row per (subject, content) of a delivery."""
    await conn.executemany(
        "INSERT INTO inbox (username, subscription_id, delivery_id, subject, content, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [(username, subscription_id, delivery_id, subject, json.dumps(content), now) for subject, content in notices],
    )


async def inbox(conn: asyncpg.Connection, username: str, limit: int, before: int | None) -> list[asyncpg.Record]:
    """A person's in-page notices, newest first (those older than notice ``before``, when given)."""
    rows = await conn.fetch(
        "SELECT inbox_id, created_at, read_at, subject, subscription_id, content FROM inbox "
        "WHERE username = $1 AND ($3::bigint IS NULL OR inbox_id < $3) ORDER BY inbox_id DESC LIMIT $2",
        username,
        limit,
        before,
    )
    return list(rows)


async def unread(conn: asyncpg.Connection, username: str) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM inbox WHERE username = $1 AND read_at IS NULL", username)
    return count


async def mark_read(conn: asyncpg.Connection, username: str, ids: Sequence[int] | None, now: datetime) -> int:
    """Mark ``ids`` (all when None) of ``username``'s notices read; another person's ids are left alone."""
    result: str = await conn.execute(
        "UPDATE inbox SET read_at = $3 WHERE username = $1 AND read_at IS NULL "
        "AND ($2::bigint[] IS NULL OR inbox_id = ANY($2::bigint[]))",
        username,
        None if ids is None else list(ids),
        now,
    )
    return int(result.split()[-1])


# --- delivery --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DueGroup:
    """Notices that go out together: a fast subscription's (``subscription_id``), a person's email digest, or a
    webhook or page subscription's (``subscription_id``: each has its own receiver, or its own inbox notices),
    fast or at the end of its period."""

    kind: str  # "fast" or "digest"
    username: str
    email: str
    subscription_id: int | None
    channel: str = "email"


async def due_groups(
    conn: asyncpg.Connection,
    now: datetime,
    limit: int = 200,
    channels: Sequence[str] = ("email", "webhook", "page"),
) -> list[DueGroup]:
    """The groups with something due at ``now`` (the delivery loop's clock, which tests drive), of ``channels``."""
    rows = await conn.fetch(
        "SELECT DISTINCT s.frequency = 'fast' AS fast, s.username, s.email, s.channel, "
        "CASE WHEN s.frequency = 'fast' OR s.channel <> 'email' THEN s.subscription_id END AS subscription_id "
        "FROM pending_notices n JOIN subscriptions s USING (subscription_id) "
        "WHERE n.state = 'pending' AND n.due_at <= $2 AND n.next_attempt_at <= $2 "
        "AND s.active AND s.stopped_at IS NULL AND s.channel = ANY($3::text[]) "
        "AND (s.frequency <> 'fast' OR s.fast_next_at IS NULL OR s.fast_next_at <= $2) "
        "LIMIT $1",
        limit,
        now,
        list(channels),
    )
    return [
        DueGroup(
            "fast" if row["fast"] else "digest", row["username"], row["email"], row["subscription_id"], row["channel"]
        )
        for row in rows
    ]


@dataclass(frozen=True)
class ClaimedNotice:
    notice_id: int
    subscription: Subscription
    event_id: str
    event_type: str
    event_time: datetime
    mission: str
    propid: str
    level: str
    data: dict[str, Any]
    attempts: int
    resends: int
    webhook_secret: str | None = None


async def claim(conn: asyncpg.Connection, group: DueGroup, now: datetime) -> list[ClaimedNotice]:
    """Lock the group's notices due at ``now`` for this transaction (others skip them), oldest first."""
    one = group.subscription_id is not None  # a fast subscription's, or a webhook's
    if one:
        condition = "n.subscription_id = $2 AND (s.fast_next_at IS NULL OR s.fast_next_at <= $1)"
        key: Any = group.subscription_id
    else:
        condition = "s.username = $2 AND s.email = $3 AND s.frequency <> 'fast' AND s.channel = 'email'"
        key = group.username
    rows = await conn.fetch(
        f"SELECT n.notice_id, n.event_id, n.event_type, n.event_time, n.mission AS n_mission, n.propid AS n_propid, "
        f"n.level, n.data, n.attempts, n.resends, s.webhook_secret, {_columns('s')} "
        "FROM pending_notices n JOIN subscriptions s ON s.subscription_id = n.subscription_id "
        "WHERE n.state = 'pending' AND n.due_at <= $1 AND n.next_attempt_at <= $1 "
        f"AND s.active AND s.stopped_at IS NULL AND {condition} "
        "ORDER BY n.notice_id FOR UPDATE OF n SKIP LOCKED",
        now,
        *((key,) if one else (key, group.email)),
    )
    claimed = []
    for row in rows:
        record = dict(row)
        sub = Subscription.model_validate(record)
        claimed.append(
            ClaimedNotice(
                notice_id=record["notice_id"],
                subscription=sub,
                event_id=record["event_id"],
                event_type=record["event_type"],
                event_time=record["event_time"],
                mission=record["n_mission"],
                propid=record["n_propid"],
                level=record["level"],
                data=json.loads(record["data"]),
                attempts=record["attempts"],
                resends=record["resends"],
                webhook_secret=record["webhook_secret"],
            )
        )
    return claimed


async def record_delivery(
    conn: asyncpg.Connection,
    group: DueGroup,
    subscription_ids: Sequence[int],
    message_key: str,
    state: str,
    reason: str | None,
    content: dict[str, Any] | None,
    now: datetime,
) -> int:
    delivery_id: int = await conn.fetchval(
        "INSERT INTO deliveries (username, email, kind, subscription_ids, message_key, state, reason, content, "
        "created_at, channel) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING delivery_id",
        group.username,
        group.email,
        group.kind,
        list(subscription_ids),
        message_key,
        state,
        reason,
        None if content is None else json.dumps(content),
        now,
        group.channel,
    )
    return delivery_id


async def record_attempt(
    conn: asyncpg.Connection,
    delivery_id: int | None,
    subscription_ids: Sequence[int],
    outcome: str,
    code: int | None,
    response: str,
    *,
    channel: str = "email",
) -> None:
    """One attempt and its answer: an SMTP reply code, or (``channel`` webhook) the receiver's HTTP status."""
    email = channel == "email"
    await conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, subscription_ids, outcome, smtp_code, smtp_response, channel, "
        "http_status) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        delivery_id,
        list(subscription_ids),
        outcome,
        code if email else None,
        response,
        channel,
        None if email else code,
    )


async def close_notices(conn: asyncpg.Connection, notice_ids: Sequence[int], state: str, delivery_id: int) -> None:
    await conn.execute(
        "UPDATE pending_notices SET state = $2, delivery_id = $3 WHERE notice_id = ANY($1::bigint[])",
        list(notice_ids),
        state,
        delivery_id,
    )


async def postpone_notices(
    conn: asyncpg.Connection, notice_ids: Sequence[int], delay_seconds: float, now: datetime
) -> None:
    """A temporary failure: try again ``delay_seconds`` after ``now``."""
    await conn.execute(
        "UPDATE pending_notices SET attempts = attempts + 1, "
        "next_attempt_at = $3::timestamptz + make_interval(secs => $2) WHERE notice_id = ANY($1::bigint[])",
        list(notice_ids),
        delay_seconds,
        now,
    )


async def after_fast_send(
    conn: asyncpg.Connection, subscription_id: int, username: str, window_seconds: float, per_hour: int, now: datetime
) -> None:
    """After a fast notice: the next waits out the coalescing window, or the hour when the cap is reached."""
    await conn.execute(
        """
        WITH recent AS (
            SELECT count(*) AS sent, min(created_at) AS oldest FROM deliveries
            WHERE username = $2 AND kind = 'fast' AND state = 'sent' AND $1 = ANY(subscription_ids)
              AND created_at > $5::timestamptz - interval '1 hour'
        )
        UPDATE subscriptions SET fast_next_at = greatest(
            $5::timestamptz + make_interval(secs => $3),
            CASE WHEN recent.sent >= $4 THEN recent.oldest + interval '1 hour' END
        )
        FROM recent WHERE subscription_id = $1
        """,
        subscription_id,
        username,
        window_seconds,
        per_hour,
        now,
    )


async def delivery_by_key(conn: asyncpg.Connection, message_key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT content FROM deliveries WHERE message_key = $1 AND state = 'sent' ORDER BY delivery_id DESC LIMIT 1",
        message_key,
    )
    return None if row is None or row["content"] is None else dict(json.loads(row["content"]))


# --- operators -------------------------------------------------------------------------------------------


async def status(conn: asyncpg.Connection, limit: int = 20) -> dict[str, Any]:
    """What waits, what went and what failed, with reasons: ``skyport notifier status``."""
    pending = await conn.fetch(
        "SELECT n.subscription_id, count(*) AS notices, min(n.due_at) AS due, max(n.attempts) AS attempts "
        "FROM pending_notices n WHERE state = 'pending' GROUP BY 1 ORDER BY 3 LIMIT $1",
        limit,
    )
    counts = await conn.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
    failed = await conn.fetch(
        "SELECT delivery_id, username, email, channel, subscription_ids, reason, created_at FROM deliveries "
        "WHERE state = 'failed' ORDER BY delivery_id DESC LIMIT $1",
        limit,
    )
    stopped = await conn.fetch(
        "SELECT subscription_id, username, email, channel, stopped_at, stopped_reason FROM subscriptions "
        "WHERE stopped_at IS NOT NULL ORDER BY stopped_at DESC LIMIT $1",
        limit,
    )
    temporary = await conn.fetch(
        "SELECT subscription_ids, attempted_at, channel, smtp_code, http_status, smtp_response FROM delivery_attempts "
        "WHERE outcome = 'temporary' ORDER BY attempt_id DESC LIMIT $1",
        limit,
    )
    return {
        "pending": [dict(row) for row in pending],
        "deliveries": {row["state"]: row["n"] for row in counts},
        "failed": [dict(row) for row in failed],
        "stopped": [dict(row) for row in stopped],
        "temporary_failures": [dict(row) for row in temporary],
    }


async def resend(conn: asyncpg.Connection, delivery_id: int) -> int:
    """Put a delivery's notices back to be sent again (its subscriptions' channel restarted); returns how many."""
    ids = await conn.fetchval("SELECT subscription_ids FROM deliveries WHERE delivery_id = $1", delivery_id)
    if ids is None:
        return 0
    await conn.execute(
        "UPDATE subscriptions SET stopped_at = NULL, stopped_reason = NULL, fast_next_at = NULL "
        "WHERE subscription_id = ANY($1::bigint[])",
        ids,
    )
    result: str = await conn.execute(
        "UPDATE pending_notices SET state = 'pending', attempts = 0, next_attempt_at = now(), due_at = now(), "
        "resends = resends + 1, delivery_id = NULL WHERE delivery_id = $1",
        delivery_id,
    )
    return int(result.split()[-1])
