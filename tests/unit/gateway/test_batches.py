"""Bursts to many clients: changes read together go out in catalog order, as few messages, with exact cursors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import CollectorRegistry

from services.gateway.catalog_client import Membership, Page, User
from services.gateway.streams import (
    FILES_PER_MESSAGE,
    FIRST_PAGE_SIZE,
    PAGE_SIZE,
    CatalogFeed,
    Change,
    ChangeBatch,
    GatewayMetrics,
    Hub,
    send_backlog,
)
from skyport.cursor import decode_cursor, encode_cursor
from tests.unit.gateway.test_streams import OTHER, PROGRAM, batch, product, queued, stream

THIRD = ("KECK", "2026B_U3")
CAROL = User(
    "carol",
    False,
    (Membership("KECK", "2026B_U1", "coi", None), Membership("KECK", "2026B_U2", "collaborator", None)),
)


def files_of(messages: list[dict[str, Any]]) -> list[str]:
    """The cursors of every file the messages carry, in the order a client reads them."""
    cursors = []
    for message in messages:
        if message["type"] == "file":
            cursors.append(message["cursor"])
        elif message["type"] == "files":
            cursors += [item["cursor"] for item in message["files"]]
    return cursors


async def test_a_burst_reaches_a_protocol_2_client_as_few_messages_in_order_each_with_its_last_cursor() -> None:
    s, _ = stream(limit=1000, protocol=2)
    s.go_live(0)
    queued(s)
    burst = [product(seq) for seq in range(1, 251)]
    s.offer(batch(*burst))
    messages = queued(s)
    assert [m["type"] for m in messages] == ["files"] * 3
    assert [len(m["files"]) for m in messages] == [FILES_PER_MESSAGE, FILES_PER_MESSAGE, 50]
    assert files_of(messages) == [p.cursor for p in burst]  # the catalog order, none left out or twice
    for message in messages:
        assert message["backlog"] is False
        assert message["cursor"] == message["files"][-1]["cursor"]  # resume here: everything up to it is had
    assert messages[0]["files"][0]["file"]["archive_id"] == burst[0].archive_id
    assert messages[0]["files"][0]["file"]["download_url"].startswith("/v1/files/")


async def test_a_protocol_1_client_gets_the_same_burst_as_one_file_message_per_change() -> None:
    s, _ = stream(limit=1000, protocol=1)
    s.go_live(0)
    queued(s)
    burst = [product(seq) for seq in range(1, 6)]
    s.offer(batch(*burst))
    messages = queued(s)
    assert [m["type"] for m in messages] == ["file"] * 5
    assert [m["cursor"] for m in messages] == [p.cursor for p in burst]
    assert all(m["backlog"] is False and m["file"]["archive_id"] for m in messages)


async def test_the_cursor_after_a_burst_is_its_last_change_even_one_the_client_may_not_see() -> None:
    s, _ = stream(limit=1000, protocol=2)
    s.go_live(0)
    queued(s)
    s.offer(batch(product(1), product(2), product(3, OTHER)))
    [message] = queued(s)
    assert files_of([message]) == [encode_cursor(1), encode_cursor(2)]
    assert message["cursor"] == encode_cursor(2)
    s.heartbeat()
    [beat] = queued(s)
    assert beat["cursor"] == encode_cursor(3)  # the position moved past the change of another program


async def test_a_client_of_several_programs_gets_the_changes_of_each_in_catalog_order_and_no_other() -> None:
    carol, _ = stream(limit=1000, protocol=2, user=CAROL)
    alice, _ = stream(limit=1000, protocol=2)  # a member of PROGRAM only
    for s in (carol, alice):
        s.go_live(0)
        queued(s)
    programs = [PROGRAM, OTHER, THIRD, OTHER, PROGRAM, THIRD, PROGRAM, OTHER]
    burst = [product(seq, program) for seq, program in enumerate(programs, start=1)]
    together = batch(*burst)
    carol.offer(together)
    alice.offer(together)
    expected = [p.cursor for p in burst if (p.mission, p.propid) != THIRD]
    assert files_of(queued(carol)) == expected
    assert files_of(queued(alice)) == [p.cursor for p in burst if (p.mission, p.propid) == PROGRAM]


async def test_clients_with_the_same_share_are_sent_the_same_bytes_built_once() -> None:
    first, _ = stream(limit=1000, protocol=2)
    second, _ = stream(limit=1000, protocol=2)
    for s in (first, second):
        s.go_live(0)
        s.queue.get_nowait()
    together = batch(*(product(seq) for seq in range(1, 4)))
    first.offer(together)
    second.offer(together)
    assert first.queue.get_nowait() is second.queue.get_nowait()


async def test_a_burst_held_during_the_backlog_goes_out_from_the_change_after_the_backlog() -> None:
    s, _ = stream(limit=1000, protocol=2)
    s.offer(batch(*(product(seq) for seq in range(3, 9))))  # read by the feed while the backlog (to 5) is read
    assert queued(s) == []
    s.go_live(5)
    live, files = queued(s)
    assert live["type"] == "live"
    assert files_of([files]) == [encode_cursor(6), encode_cursor(7), encode_cursor(8)]
    assert files["cursor"] == encode_cursor(8)
    s.offer(batch(product(8), product(9)))  # 8 was had: only 9 follows, as its own file message
    [message] = queued(s)
    assert (message["type"], message["cursor"]) == ("file", encode_cursor(9))


async def test_a_protocol_2_backlog_comes_as_files_messages_too() -> None:
    s, _ = stream(limit=1000, protocol=2)

    class Catalog:
        async def search(self, token: str, params: list[tuple[str, str]]) -> Page:
            return Page([product(1), product(2, OTHER), product(3), product(4), product(7)], encode_cursor(7), False)

    await send_backlog(Catalog(), s, up_to=5)  # type: ignore[arg-type]
    [message] = queued(s)
    assert message["type"] == "files"
    assert message["backlog"] is True
    assert files_of([message]) == [encode_cursor(1), encode_cursor(3), encode_cursor(4)]  # up to 5, alice's
    assert message["cursor"] == encode_cursor(4)


class ChangingCatalog:
    """The catalog order as the feed reads it: ``count`` changes of PROGRAM; remembers the pages asked for."""

    def __init__(self, count: int) -> None:
        self.products = [product(seq) for seq in range(1, count + 1)]
        self.asked: list[tuple[int, int]] = []

    async def changes(self, cursor: str, limit: int) -> Page:
        after = decode_cursor(cursor)
        self.asked.append((after, limit))
        await asyncio.sleep(0)  # an answer comes later, as from the catalog's process
        found = [p for p in self.products if decode_cursor(p.cursor) > after][: limit + 1]
        page = found[:limit]
        return Page(page, page[-1].cursor if page else cursor, len(found) > limit)


class RecordingHub(Hub):
    def __init__(self) -> None:
        super().__init__(None, GatewayMetrics(CollectorRegistry()))  # type: ignore[arg-type]
        self.published: list[list[Change]] = []

    async def publish(self, changes: Any) -> None:
        self.published.append(list(changes))
        await super().publish(changes)


async def test_the_feed_reads_a_small_first_page_then_big_ones_and_publishes_every_change_once_in_order() -> None:
    catalog = ChangingCatalog(FIRST_PAGE_SIZE + PAGE_SIZE + 7)
    hub = RecordingHub()
    feed = CatalogFeed(catalog, hub, poll_interval=60)  # type: ignore[arg-type]
    feed.position = 0
    await feed.catch_up()
    published = [change.seq for page in hub.published for change in page]
    assert published == [decode_cursor(p.cursor) for p in catalog.products]
    assert [len(page) for page in hub.published] == [FIRST_PAGE_SIZE, PAGE_SIZE, 7]
    assert catalog.asked == [
        (0, FIRST_PAGE_SIZE),
        (FIRST_PAGE_SIZE, PAGE_SIZE),
        (FIRST_PAGE_SIZE + PAGE_SIZE, PAGE_SIZE),
    ]
    assert feed.position == len(catalog.products)
    await feed.catch_up()  # nothing new: nothing published again
    assert sum(len(page) for page in hub.published) == len(catalog.products)


def test_a_change_is_serialised_once_and_its_file_message_is_the_protocol_1_message() -> None:
    change = Change.of(product(4))
    message = json.loads(change.live_message)
    assert list(message) == ["type", "backlog", "cursor", "file"]
    assert message["cursor"] == encode_cursor(4)
    assert json.loads(change.item) == {"cursor": message["cursor"], "file": message["file"]}
    assert ChangeBatch([change]).messages(frozenset({PROGRAM}), 0, batched=True) == ("file", [change.live_message])
