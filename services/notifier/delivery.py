"""Sending what is due: a fast subscription's notices, or a person's digest, as one email each, once.

**Claim, send, record in one transaction.** A round locks the group's due notices (``FOR UPDATE SKIP LOCKED``:
another notifier skips them), asks the catalog what the subscriber may see now, hands the email to the SMTP
server, and records the outcome (the delivery, the attempt with the server's answer, the notices' new state) in
the transaction that claimed them; it commits only after the server's answer. A notifier killed before the
commit leaves the notices pending, as if never claimed, and the next round sends them again.

SMTP gives no way to make "accepted by the server" and "recorded here" one atomic step, so the delivery is at
least once: a kill in the instant between the server's 250 and the commit sends the email again. The second
copy carries the same Message-ID (made from the first notice claimed and its resend count, the same in the
retried round), so mail systems and people can recognise it as the same message. Anything else (a kill before
the 250, a temporary failure, a crash after the commit) sends each email exactly once.

A webhook subscription's notices go the same way, to its receiver (``webhooks.py``): the same claim, the same
question to the catalog, the same ledger (each attempt with its HTTP status), and the same window: a kill between
the receiver's 2xx and the commit posts the body again, with the same ``Idempotency-Key`` (the delivery's key),
so the receiver can drop the copy and then has each notice exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter

from services.notifier import storage
from services.notifier.catalog_client import CatalogClient, CatalogUnavailable, Seen, Titles
from services.notifier.mail import Composer, NoticeItem, sections_of, subject_of
from services.notifier.mailer import Mailer
from services.notifier.preview import HISTORY_DAYS
from services.notifier.webhooks import HookResult, WebhookSender
from skyport.db import Database

log = structlog.get_logger("skyport.notifier")

MAX_RETRY_DELAY = 3600.0


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.emails = Counter(
            "skyport_notifier_emails_total",
            "Emails handled, by outcome (sent, withheld, temporary, failed).",
            ["outcome"],
            registry=registry,
        )
        self.webhooks = Counter(
            "skyport_notifier_webhooks_total",
            "Webhook deliveries handled, by outcome (sent, withheld, temporary, failed).",
            ["outcome"],
            registry=registry,
        )
        self.pages = Counter(
            "skyport_notifier_page_deliveries_total",
            "In-page deliveries handled, by outcome (sent: in the inbox, withheld).",
            ["outcome"],
            registry=registry,
        )

    def of(self, channel: str) -> Counter:
        return {"email": self.emails, "webhook": self.webhooks}.get(channel, self.pages)


def message_key(group: storage.DueGroup, notices: Sequence[storage.ClaimedNotice]) -> str:
    """The name of an email: its kind, its first notice and how often an operator had it resent."""
    return f"{group.kind}-{notices[0].notice_id}-r{max(n.resends for n in notices)}"


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` temporary failures: 30 s doubling, at most an hour."""
    return float(min(MAX_RETRY_DELAY, 30.0 * 2 ** min(attempts, 16)))


class Deliverer:
    def __init__(
        self,
        db: Database,
        catalog: CatalogClient,
        composer: Composer,
        mailer: Mailer,
        *,
        poll_interval: float,
        coalesce_window: float,
        fast_per_hour: int,
        max_attempts: int,
        metrics: DeliveryMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.composer = composer
        self.mailer = mailer
        self.poll_interval = poll_interval
        self.coalesce_window = coalesce_window
        self.fast_per_hour = fast_per_hour
        self.max_attempts = max_attempts
        self.metrics = metrics
        self.clock = clock
        """What time it is for the loop: when notices are due, windows and back-off (tests move it on)."""
        self.wake = asyncio.Event()
        self.webhooks = webhooks
        # A loop without a webhook sender (a test's, an email-only tool) leaves webhook notices to one that has one.
        self.channels = ("email", "page") if webhooks is None else ("email", "page", "webhook")

    async def run(self) -> None:
        """The supervised loop: send what is due; then wait for a fast notice (``wake``) or the poll interval.
        Once an hour it also forgets the events that previews no longer look at."""
        pruned: datetime | None = None
        while True:
            self.wake.clear()
            if pruned is None or self.clock() - pruned >= timedelta(hours=1):
                pruned = self.clock()
                await self.prune_history(pruned)
            await self.deliver_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_interval)

    async def prune_history(self, now: datetime) -> int:
        """Drop the history's events older than previews look (``preview.HISTORY_DAYS``)."""
        async with self.db.transaction() as conn:
            dropped = await storage.prune_history(conn, now - timedelta(days=HISTORY_DAYS))
        if dropped:
            log.info("old events forgotten", events=dropped)
        return dropped

    async def deliver_due(self) -> int:
        """One round over every group with something due; returns how many emails were decided."""
        async with self.db.pool.acquire() as conn:
            groups = await storage.due_groups(conn, self.clock(), channels=self.channels)
        decided = 0
        for group in groups:
            try:
                decided += await self.deliver(group) is not None
            except CatalogUnavailable as exc:
                # Nobody is told anything the catalog could not confirm: the notices wait for the next round.
                log.warning("catalog unavailable; notices wait", username=group.username, error=str(exc))
                return decided
        return decided

    async def deliver(self, group: storage.DueGroup) -> str | None:
        """Claim, decide, send and record one group's email; its outcome, or None if another took the notices."""
        titles = Titles(self.catalog)
        now = self.clock()
        async with self.db.transaction() as conn:
            notices = await storage.claim(conn, group, now)
            if not notices:
                return None
            seen = await self._seen(group.username, notices)  # asked now: access is decided when a notice is sent
            key = message_key(group, notices)
            subscription_ids = sorted({n.subscription.subscription_id for n in notices})
            items: list[NoticeItem] = []
            withheld: list[int] = []
            for notice in notices:
                item = await self._visible(notice, seen, titles)
                if item is None:
                    withheld.append(notice.notice_id)
                else:
                    items.append(item)
            if not items:
                delivery_id = await storage.record_delivery(
                    conn, group, subscription_ids, key, "withheld", "nothing the subscriber may see now", None, now
                )
                await storage.close_notices(conn, withheld, "withheld", delivery_id)
                self.metrics.of(group.channel).labels("withheld").inc()
                log.info("notices withheld", username=group.username, notices=len(withheld), key=key)
                return "withheld"
            if group.channel == "webhook":
                return await self._post(conn, group, notices, items, withheld, key, now)
            if group.channel == "page":
                return await self._to_inbox(conn, group, notices, items, withheld, key, now)
            message, content = self.composer.compose(group.kind, group.email, key, items)
            result = await self.mailer.send(message)
            sent_ids = [item_id for item_id in (n.notice_id for n in notices) if item_id not in set(withheld)]
            if result.outcome == "accepted":
                delivery_id = await storage.record_delivery(
                    conn, group, subscription_ids, key, "sent", None, content, now
                )
                await storage.record_attempt(
                    conn, delivery_id, subscription_ids, "accepted", result.code, result.response
                )
                await storage.close_notices(conn, sent_ids, "sent", delivery_id)
                if withheld:
                    await storage.close_notices(conn, withheld, "withheld", delivery_id)
                if group.kind == "fast" and group.subscription_id is not None:
                    await storage.after_fast_send(
                        conn, group.subscription_id, group.username, self.coalesce_window, self.fast_per_hour, now
                    )
                self.metrics.emails.labels("sent").inc()
                log.info(
                    "email sent",
                    kind=group.kind,
                    username=group.username,
                    notices=len(sent_ids),
                    files=sum(len(i.files) for i in items),
                    key=key,
                )
                return "sent"
            attempts = max(n.attempts for n in notices) + 1
            if result.outcome == "permanent" or attempts >= self.max_attempts:
                reason = (
                    f"SMTP server refused: {result.response}"
                    if result.outcome == "permanent"
                    else (f"gave up after {attempts} attempts: {result.response}")
                )
                delivery_id = await storage.record_delivery(
                    conn, group, subscription_ids, key, "failed", reason, content, now
                )
                await storage.record_attempt(
                    conn, delivery_id, subscription_ids, result.outcome, result.code, result.response
                )
                await storage.close_notices(conn, [n.notice_id for n in notices], "failed", delivery_id)
                if result.outcome == "permanent":
                    await storage.stop_channel(conn, subscription_ids, reason)
                self.metrics.emails.labels("failed").inc()
                log.error(
                    "email failed; channel stopped" if result.outcome == "permanent" else "email failed",
                    username=group.username,
                    email=group.email,
                    reason=reason,
                )
                return "failed"
            await storage.record_attempt(conn, None, subscription_ids, "temporary", result.code, result.response)
            await storage.postpone_notices(conn, [n.notice_id for n in notices], retry_delay(attempts), now)
            self.metrics.emails.labels("temporary").inc()
            log.warning(
                "email not taken; will try again",
                username=group.username,
                attempts=attempts,
                response=result.response,
                retry_in=retry_delay(attempts),
            )
            return "temporary"

    async def _post(
        self,
        conn: asyncpg.Connection,
        group: storage.DueGroup,
        notices: Sequence[storage.ClaimedNotice],
        items: Sequence[NoticeItem],
        withheld: Sequence[int],
        key: str,
        now: datetime,
    ) -> str:
        """A webhook subscription's notices, POSTed in the claiming transaction and recorded with the answer."""
        # due_groups gave this loop only the channels it has a sender for, and a webhook group is one subscription's
        assert self.webhooks is not None
        assert group.subscription_id is not None
        subscription = notices[0].subscription
        secret = notices[0].webhook_secret
        # the table's check: a webhook subscription has both
        assert subscription.webhook_url is not None
        assert secret is not None
        ids = [group.subscription_id]
        content = {"delivery": key, "subscription_id": group.subscription_id, **self.composer.attachment(items)}
        body = json.dumps(content, separators=(",", ":")).encode()
        result = await self.webhooks.post(subscription.webhook_url, secret, key, body)
        sent_ids = [n.notice_id for n in notices if n.notice_id not in set(withheld)]
        if result.outcome == "accepted":
            delivery_id = await storage.record_delivery(conn, group, ids, key, "sent", None, content, now)
            await self._attempt(conn, delivery_id, ids, result)
            await storage.close_notices(conn, sent_ids, "sent", delivery_id)
            if withheld:
                await storage.close_notices(conn, withheld, "withheld", delivery_id)
            if group.kind == "fast":
                await storage.after_fast_send(
                    conn, group.subscription_id, group.username, self.coalesce_window, self.fast_per_hour, now
                )
            self.metrics.webhooks.labels("sent").inc()
            log.info("webhook sent", subscription_id=group.subscription_id, notices=len(sent_ids), key=key)
            return "sent"
        attempts = max(n.attempts for n in notices) + 1
        if result.outcome != "temporary" or attempts >= self.max_attempts:
            if result.outcome == "permanent":
                reason = f"the webhook receiver is gone ({result.response}): channel stopped"
            elif result.outcome == "rejected" and result.status is None:
                reason = result.response  # refused here, not by the receiver (a host that is no longer public)
            elif result.outcome == "rejected":
                reason = f"the webhook receiver refused the notice: {result.response}"
            else:
                reason = f"gave up after {attempts} attempts: {result.response}"
            delivery_id = await storage.record_delivery(conn, group, ids, key, "failed", reason, content, now)
            await self._attempt(conn, delivery_id, ids, result)
            await storage.close_notices(conn, [n.notice_id for n in notices], "failed", delivery_id)
            if result.outcome == "permanent":
                await storage.stop_channel(conn, ids, reason)
            self.metrics.webhooks.labels("failed").inc()
            log.error(
                "webhook failed; channel stopped" if result.outcome == "permanent" else "webhook failed",
                subscription_id=group.subscription_id,
                reason=reason,
            )
            return "failed"
        # The receiver's Retry-After when it gave one (never beyond our longest wait), else our back-off.
        delay = retry_delay(attempts) if result.retry_after is None else min(MAX_RETRY_DELAY, result.retry_after)
        await self._attempt(conn, None, ids, result)
        await storage.postpone_notices(conn, [n.notice_id for n in notices], delay, now)
        self.metrics.webhooks.labels("temporary").inc()
        log.warning(
            "webhook not taken; will try again",
            subscription_id=group.subscription_id,
            attempts=attempts,
            response=result.response,
            retry_in=delay,
        )
        return "temporary"

    async def _to_inbox(
        self,
        conn: asyncpg.Connection,
        group: storage.DueGroup,
        notices: Sequence[storage.ClaimedNotice],
        items: Sequence[NoticeItem],
        withheld: Sequence[int],
        key: str,
        now: datetime,
    ) -> str:
        """A page subscription's notices, kept in its owner's inbox: one in-page notice per program, trigger and
        level (an email's section), in the claiming transaction; nothing can refuse them, so they are sent."""
        assert group.subscription_id is not None  # a page group is one subscription's
        ids = [group.subscription_id]
        content = self.composer.attachment(items)
        delivery_id = await storage.record_delivery(conn, group, ids, key, "sent", None, content, now)
        await storage.record_attempt(conn, delivery_id, ids, "accepted", None, "kept in the inbox", channel="page")
        await storage.insert_inbox(conn, group.username, group.subscription_id, delivery_id, inbox_notices(items), now)
        await storage.close_notices(
            conn, [n.notice_id for n in notices if n.notice_id not in set(withheld)], "sent", delivery_id
        )
        if withheld:
            await storage.close_notices(conn, withheld, "withheld", delivery_id)
        if group.kind == "fast":
            await storage.after_fast_send(
                conn, group.subscription_id, group.username, self.coalesce_window, self.fast_per_hour, now
            )
        self.metrics.pages.labels("sent").inc()
        log.info("in-page notices kept", subscription_id=group.subscription_id, notices=len(items), key=key)
        return "sent"

    @staticmethod
    async def _attempt(
        conn: asyncpg.Connection, delivery_id: int | None, ids: Sequence[int], result: HookResult
    ) -> None:
        await storage.record_attempt(
            conn, delivery_id, ids, result.outcome, result.status, result.response, channel="webhook"
        )

    async def _seen(self, username: str, notices: Sequence[storage.ClaimedNotice]) -> Seen:
        """One question to the catalog for the whole email: which of its files (and, for notices that list no
        files, which programs' proprietary data) the subscriber may see now."""
        archive_ids = {f["archive_id"] for n in notices for f in n.data.get("files", [])}
        programs = {(n.mission, n.propid) for n in notices if not n.data.get("files")}
        answer = await self.catalog.visible(username, sorted(archive_ids), sorted(programs))
        return Seen(frozenset(answer.archive_ids), frozenset((p.mission, p.propid) for p in answer.programs))

    async def _visible(self, notice: storage.ClaimedNotice, seen: Seen, titles: Titles) -> NoticeItem | None:
        """The notice as its subscriber may see it now, or None when they may see none of it."""
        data = notice.data
        files = seen.files(list(data.get("files", [])))
        if not files:
            # An event that lists no files (the legacy message) says only that there is data: to those who see
            # the program's proprietary data, and to anyone once it is public.
            told = not data.get("files") and (
                data.get("type") == "public" or (notice.mission, notice.propid) in seen.programs
            )
            if not told:
                return None
        return NoticeItem(
            subscription=notice.subscription,
            event_id=notice.event_id,
            event_time=notice.event_time,
            trigger=str(data.get("type", notice.event_type.removeprefix("dataset."))),
            mission=notice.mission,
            propid=notice.propid,
            title=await titles.of(notice.mission, notice.propid),
            level=notice.level,
            obsets=list(data.get("obsets", [])),
            files=files,
            repro=data.get("repro"),
        )


def inbox_notices(items: Sequence[NoticeItem]) -> list[tuple[str, dict[str, Any]]]:
    """The in-page notices of one delivery: one per program, trigger and level, with the subject an email of it
    alone would have, and its events as the email's JSON attachment holds them."""
    notices = []
    for section in sections_of(items):
        same = (section.mission, section.propid, section.trigger, section.level)
        events = [i.as_json() for i in items if (i.mission, i.propid, i.trigger, i.level) == same]
        content = {
            "trigger": section.trigger,
            "mission": section.mission,
            "propid": section.propid,
            "title": section.title,
            "level": section.level,
            "obsets": section.obsets,
            "files": section.files,
            "repro": section.repro,
            "notices": events,
        }
        notices.append((subject_of("fast", [section]), content))
    return notices
