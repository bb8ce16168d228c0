"""The shipped instruments' completion rules against writers pausing between HDUs: archived once, never partial."""

from __future__ import annotations

import asyncio
import hashlib

from skyport.instruments import InstrumentCatalog
from skyport.simulator import Simulator
from tests.support.flow import Flow
from tests.support.waiting import eventually


async def test_files_of_writers_pausing_between_hdus_are_archived_once_and_whole(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    await flow.start("monitor")
    sim = Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31)
    # Each as its instrument writes: HIRES in place with NEXTEND ('fits'), KCWI's pipeline in place then a marker
    # ('marker'), NIRCam's under a temporary name ('rename'); KCWI and NIRCam without NEXTEND.
    writers = [
        asyncio.to_thread(sim.write_file, "HIRES", size_bytes=300_000, mode="inplace", hdu_delay=1.5),
        asyncio.to_thread(
            sim.write_file, "KCWI", "quicklook", size_bytes=300_000, mode="inplace", hdu_delay=1.5, nextend=False
        ),
        asyncio.to_thread(sim.write_file, "NIRCAM", "cal", size_bytes=300_000, hdu_delay=1.5, nextend=False),
    ]
    files = await asyncio.gather(*writers)

    async def all_ingested() -> bool:
        return bool((await flow.monitor_status())["counts"]["ingested"] == len(files))

    await eventually(all_ingested, timeout=60, what="every file ingested")
    archived = await flow.archived()
    assert len(archived) == len(files)  # one version each: nothing partial went first
    rows = {row["archive_id"]: row for row in archived}
    for simulated in files:
        row = rows[simulated.archive_id]
        assert row["version"] == 1
        assert row["sha256"] == hashlib.sha256(simulated.path.read_bytes()).hexdigest()
    history = (await flow.monitor_status())["history"]
    assert not [h for h in history if "changed after it was sent" in h["reason"]]
