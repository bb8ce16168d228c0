"""The notifier at the end of the whole path, as real processes: a file told once, a digest sent once through a kill.

Files are written at the observatory and travel monitor -> receiver -> ingestor -> catalog -> notifier -> SMTP, each
service its own ``skyport run`` process on the real RabbitMQ and PostgreSQL, the SMTP server a real aiosmtpd in
the test's process (``tests.support.smtp``).

A digest's time is brought by the subscription itself, not by a clock inside the notifier (a process started by
``skyport run`` has no injectable clock): each person subscribes daily at the UTC minute that comes a little over a
minute after the test starts (``schedule.next_delivery`` makes that today's delivery), and the files arrive before
it. The test therefore waits up to two minutes for the digest to fall due.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import aiohttp
import asyncpg
import pytest

from services.catalog import cli as catalog
from skyport.db import Database
from skyport.instruments import InstrumentCatalog
from skyport.simulator import SimulatedFile, Simulator
from tests.support.flow import Flow
from tests.support.smtp import Mailbox, smtp_server
from tests.support.waiting import eventually

PEOPLE = ("alice", "bob")  # the PI, and a collaborator she added


@pytest.fixture
def mailbox(flow: Flow) -> Iterator[Mailbox]:
    with smtp_server() as (box, port):
        flow.smtp_port = port
        yield box


@pytest.fixture
async def program(flow: Flow, unique: str) -> str:
    """A KECK program with alice as PI and bob as a collaborator, each with an email address."""
    propid = f"2026B_N{int(unique, 16) % 1000:03d}"
    db = await Database.connect(flow.database_url, "catalog", min_size=1, max_size=1)
    try:
        for name in PEOPLE:
            await catalog.add_user(db, name, email=f"{name}@example.org")
        await catalog.add_program(db, "KECK", propid, title="Exactly once", pi="alice")
        await catalog.grant_role(db, "KECK", propid, "bob")
    finally:
        await db.close()
    return propid


@pytest.fixture
async def notifier_db(flow: Flow) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(flow.database_url)
    yield conn
    await conn.close()


async def subscribe(flow: Flow, who: str, **body: Any) -> dict[str, Any]:
    """A subscription made as its owner makes it: the notifier's HTTP API with their catalog token."""
    token = await flow.user_token(who)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{flow.notifier_url}/v1/subscriptions", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response,
    ):
        answer = await response.json()
        assert response.status == 201, answer
        return dict(answer)


def simulator(flow: Flow, instruments: InstrumentCatalog, unique: str, propid: str) -> Simulator:
    return Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31, programs={"KECK": [propid]})


def attachment_of(message: EmailMessage) -> dict[str, Any]:
    [part] = [p for p in message.iter_attachments() if p.get_filename() == "skyport-notice.json"]
    return dict(json.loads(part.get_content()))


def files_of(message: EmailMessage) -> list[dict[str, Any]]:
    return [f for notice in attachment_of(message)["notices"] for f in notice["files"]]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def sha256(file: SimulatedFile) -> str:
    return hashlib.sha256(file.path.read_bytes()).hexdigest()


async def start_path(flow: Flow, **notifier: object) -> None:
    await flow.start("receiver", "ingestor", "catalog")
    await flow.start("notifier", **notifier)
    await flow.start("monitor")


async def deliveries(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch("SELECT kind, state, email FROM notifier.deliveries ORDER BY delivery_id")
    return [(row["kind"], row["state"], row["email"]) for row in rows]


async def nothing_pending(conn: asyncpg.Connection) -> bool:
    return int(await conn.fetchval("SELECT count(*) FROM notifier.pending_notices WHERE state = 'pending'")) == 0


async def test_a_file_archived_for_a_subscribed_program_makes_exactly_one_fast_email(
    flow: Flow, instruments: InstrumentCatalog, mailbox: Mailbox, program: str, notifier_db: Any, unique: str
) -> None:
    # A short coalescing window, so that a second email, if the path made one, would come within the test.
    await start_path(flow, notifier_coalesce_window=1)
    await subscribe(flow, "alice", mission="KECK", propid=program, triggers=["new"], frequency="fast")
    file = simulator(flow, instruments, unique, program).write_file("HIRES", size_bytes=300_000)

    await eventually(lambda: len(mailbox.messages) >= 1, timeout=90, what="alice's fast email")
    await eventually(lambda: nothing_pending(notifier_db), what="no notice left pending")
    await asyncio.sleep(3)  # past the coalescing window: anything folded would have gone by now
    [message] = mailbox.messages
    assert message["To"] == "alice@example.org"
    [listed] = files_of(message)
    assert listed["archive_id"] == file.archive_id
    assert listed["sha256"] == sha256(file)
    assert attachment_of(message)["notices"][0]["propid"] == program
    text = text_of(message)
    assert f"sha256 {sha256(file)}" in text
    assert listed["url"] in text
    # The link is the file: alice downloads it with her token and gets the bytes written at the observatory.
    token = await flow.user_token("alice")
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http, http.get(listed["url"], headers=headers) as response:
        assert response.status == 200
        assert hashlib.sha256(await response.read()).hexdigest() == sha256(file)
    assert await deliveries(notifier_db) == [("fast", "sent", "alice@example.org")]


def digest_minute(after: datetime) -> datetime:
    """The first whole UTC minute at least 60 s after ``after``: time for the files to travel the path first."""
    return (after + timedelta(seconds=60 + 59)).replace(second=0, microsecond=0)


@pytest.mark.timeout(300)  # the digest's minute comes one to two minutes after the start
async def test_a_notifier_killed_mid_digest_and_restarted_sends_each_persons_digest_exactly_once(
    flow: Flow, instruments: InstrumentCatalog, mailbox: Mailbox, program: str, notifier_db: Any, unique: str
) -> None:
    await flow.start("receiver", "ingestor", "catalog")
    notifier = await flow.start("notifier")
    await flow.start("monitor")
    due = digest_minute(datetime.now(UTC))
    for who in PEOPLE:
        await subscribe(flow, who, mission="KECK", propid=program, frequency="daily", time_of_day=f"{due:%H:%M}")
    sim = simulator(flow, instruments, unique, program)
    files = [sim.write_file("HIRES", size_bytes=200_000) for _ in range(3)]
    ids = sorted(str(f.archive_id) for f in files)

    async def waiting_for_the_digest() -> bool:
        rows = await notifier_db.fetch(
            "SELECT s.username, n.data, n.due_at FROM notifier.pending_notices n "
            "JOIN notifier.subscriptions s USING (subscription_id) WHERE n.state = 'pending' AND n.event_type = "
            "'dataset.new'"
        )
        assert all(row["due_at"] == due for row in rows), "the files came after the digest's minute: too slow"
        return all(
            sorted(f["archive_id"] for row in rows if row["username"] == who for f in json.loads(row["data"])["files"])
            == ids
            for who in PEOPLE
        )

    await eventually(waiting_for_the_digest, timeout=70, what="both digests' notices, due at the same minute")
    assert mailbox.messages == []  # not yet due

    mailbox.stall = True  # the server takes the first digest's DATA and does not answer
    wait = (due - datetime.now(UTC)).total_seconds() + 60
    await eventually(lambda: mailbox.stalled >= 1, timeout=wait, what="a digest handed to the stalled server")
    await notifier.kill()  # SIGKILL mid-send: no answer came, no commit was made
    mailbox.stall = False
    assert mailbox.messages == []

    await flow.start("notifier")
    await eventually(lambda: len(mailbox.messages) >= 2, timeout=60, what="both digests after the restart")
    await eventually(lambda: nothing_pending(notifier_db), what="no notice left pending")
    await asyncio.sleep(2)  # ten polls of the delivery loop: a second copy would be here by now

    by_person: dict[str, list[EmailMessage]] = {}
    for message in mailbox.messages:
        by_person.setdefault(str(message["To"]), []).append(message)
    assert sorted(by_person) == [f"{who}@example.org" for who in PEOPLE]
    for who, messages in by_person.items():
        assert len(messages) == 1, f"{who} received {len(messages)} digests"
        assert "digest" in str(messages[0]["Subject"]).lower()
        # Each file once per notice that names it (dataset.new, and dataset.first for the obset's first).
        assert {f["archive_id"] for f in files_of(messages[0])} == set(ids)
    message_ids = [str(m["Message-ID"]) for m in mailbox.messages]
    assert len(set(message_ids)) == len(message_ids) == 2
    contents = {json.dumps(files_of(m), sort_keys=True) + str(m["To"]) for m in mailbox.messages}
    assert len(contents) == 2
    assert sorted(await deliveries(notifier_db)) == [("digest", "sent", f"{who}@example.org") for who in PEOPLE]
