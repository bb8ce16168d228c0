"""Files written while the monitor was stopped are all found by its start-up scan, bad ones among them."""

from __future__ import annotations

from skyport.instruments import InstrumentCatalog
from skyport.simulator import SimulatedFile, Simulator
from tests.support.flow import Flow
from tests.support.waiting import eventually


def corrupt_nextend(simulated: SimulatedFile) -> None:
    """Write ``NEXTEND = abc`` raw into the header bytes: astropy raises VerifyError on reading the card."""
    data = bytearray(simulated.path.read_bytes())
    start = data.index(b"NEXTEND =")
    data[start : start + 80] = b"NEXTEND =                  abc / number of extensions".ljust(80)
    simulated.path.write_bytes(bytes(data))


async def test_files_written_while_the_monitor_was_down_are_all_found_past_a_corrupted_header_card(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    monitor = await flow.start("monitor", rescan_interval=600)  # only the start-up scan can find them
    await monitor.stop()
    sim = Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31)
    files = [sim.write_file("HIRES", size_bytes=60_000) for _ in range(20)]
    bad = files[7]
    corrupt_nextend(bad)

    monitor = await flow.start("monitor", rescan_interval=600)

    async def all_journaled() -> bool:
        counts = (await flow.monitor_status())["counts"]
        return bool(counts["ingested"] == len(files) - 1 and counts["invalid"] == 1)

    await eventually(all_journaled, timeout=60, what="every file journaled: 19 ingested, the bad one invalid")
    (problem,) = (await flow.monitor_status())["problems"]
    assert problem["path"] == bad.relative_path
    assert "NEXTEND card cannot be parsed" in problem["reason"]
    assert monitor.logged("loop died; restarting it") == []
