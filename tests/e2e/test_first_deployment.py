"""A first deployment loses nothing: a command published before its consumer ever ran waits for it."""

from __future__ import annotations

import asyncpg

from skyport.instruments import InstrumentCatalog
from skyport.simulator import Simulator
from tests.support.flow import Flow
from tests.support.waiting import eventually


async def published_transfers(flow: Flow) -> int:
    conn = await asyncpg.connect(flow.database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM receiver.outbox WHERE event_type = 'transfer.received' AND sent_at IS NOT NULL"
            )
        )
    finally:
        await conn.close()


async def test_a_transfer_received_before_the_ingestor_ever_ran_is_archived_when_it_starts(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    # The flow's vhost is new and only `skyport migrate` has run: no ingestor has ever declared its queue.
    await flow.start("receiver")
    await flow.start("monitor")
    sim = Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31)
    written = sim.write_file("HIRES", size_bytes=100_000)

    async def published() -> bool:
        return await published_transfers(flow) == 1

    # Confirmed by the broker and marked sent, with no consumer anywhere: before, the broker dropped it here.
    await eventually(published, timeout=60, what="the receiver to publish transfer.received")
    await flow.start("ingestor")

    async def archived() -> bool:
        return written.archive_id in {row["archive_id"] for row in await flow.archived()}

    await eventually(archived, timeout=60, what="the file archived by the ingestor started afterwards")
