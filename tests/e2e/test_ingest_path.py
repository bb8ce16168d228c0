"""Files written at the observatory end up archived, verified, once: through faults and past bad files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
from astropy.io import fits

from skyport.instruments import InstrumentCatalog
from skyport.simulator import BadKind, SimulatedFile, Simulator
from tests.e2e.conftest import Archived
from tests.support.flow import Flow
from tests.support.proxy import FreezableProxy
from tests.support.waiting import eventually


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def simulator(flow: Flow, instruments: InstrumentCatalog, unique: str) -> Simulator:
    return Simulator(instruments, flow.watch_root, seed=int(unique, 16) % 2**31)


async def archived_ids(flow: Flow) -> dict[str, list[int]]:
    versions: dict[str, list[int]] = {}
    for row in await flow.archived():
        versions.setdefault(row["archive_id"], []).append(row["version"])
    return versions


async def wait_archived(flow: Flow, files: list[SimulatedFile], timeout: float = 60) -> None:
    wanted = {f.archive_id for f in files}

    async def done() -> bool:
        return wanted <= set(await archived_ids(flow))

    await eventually(done, timeout=timeout, what=f"{len(wanted)} files in the archive")


def assert_stored(flow: Flow, files: list[SimulatedFile], rows: list[Any]) -> None:
    by_id = {row["archive_id"]: row for row in rows}
    for simulated in files:
        row = by_id[simulated.archive_id]
        stored = flow.storage / row["storage_path"]
        assert stored.name == simulated.path.name
        assert sha256(stored) == sha256(simulated.path) == row["sha256"]
        assert row["level"] == simulated.level
        assert row["version"] == 1


async def test_every_instruments_files_reach_the_archive_verified(
    flow: Flow, instruments: InstrumentCatalog, archived_events: Archived, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    await flow.start("monitor")
    sim = simulator(flow, instruments, unique)
    files = [sim.write_file(m.instrument, m.product, size_bytes=300_000) for m in sim.products()]
    files += [sim.write_file(m.instrument, m.product, size_bytes=3_000_000, mode="inplace") for m in sim.products()]
    assert {(f.mission, f.instrument, f.level) for f in files} >= {
        ("KECK", "HIRES", "0"),
        ("KECK", "KCWI", "0"),
        ("KECK", "KCWI", "1"),
        ("JWST", "NIRCAM", "1b"),
        ("JWST", "NIRCAM", "2b"),
    }
    await wait_archived(flow, files)
    rows = await flow.archived()
    assert len(rows) == len(files)
    assert_stored(flow, files, rows)

    await eventually(lambda: len(archived_events.events) >= len(files), what="every file.archived event")
    events = archived_events.by_archive_id()
    for simulated in files:
        (event,) = events[simulated.archive_id]
        assert (event.level, event.propid, event.version) == (simulated.level, simulated.propid, 1)
        assert event.sha256 == sha256(simulated.path)
        assert event.obset == simulated.obset
        assert event.metadata.observed_at is not None

    async def all_ingested() -> bool:
        return (await flow.monitor_status())["counts"]["ingested"] == len(files)

    await eventually(all_ingested, what="the monitor to learn that every file is ingested")


async def test_the_receiver_down_for_a_while_loses_nothing(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    ingestor = await flow.start("ingestor")
    await flow.start("monitor")
    sim = simulator(flow, instruments, unique)
    files = [sim.write_file("HIRES", size_bytes=200_000) for _ in range(3)]

    async def retrying() -> bool:
        problems = (await flow.monitor_status())["problems"]
        return len(problems) == 3 and all("archive unreachable" in p["reason"] for p in problems)

    await eventually(retrying, what="the monitor to report the archive unreachable and keep retrying")
    files += [sim.write_file("KCWI", "raw", size_bytes=200_000)]
    await flow.start("receiver")
    await wait_archived(flow, files)
    assert_stored(flow, files, await flow.archived())
    assert ingestor.proc.returncode is None


async def test_a_monitor_killed_mid_upload_resumes_after_restart(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    monitor = await flow.start("monitor", upload_concurrency=1)
    sim = simulator(flow, instruments, unique)
    big = sim.write_file("NIRCAM", "uncal", size_bytes=150_000_000)
    incoming = flow.staging / ".incoming"

    def uploading() -> bool:
        return incoming.is_dir() and any(p.stat().st_size > 0 for p in incoming.iterdir())

    await eventually(uploading, what="the upload to be under way")
    await monitor.kill()
    small = sim.write_file("HIRES", size_bytes=100_000)  # written while the monitor is down
    await flow.start("monitor")
    await wait_archived(flow, [big, small], timeout=120)
    assert_stored(flow, [big, small], await flow.archived())
    assert not any(p.suffix == ".part" for p in incoming.iterdir())


async def test_an_ingestor_killed_mid_file_finishes_after_restart(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    receiver = await flow.start("receiver")
    ingestor = await flow.start("ingestor", ingest_concurrency=1)
    await flow.start("monitor", upload_concurrency=1)
    sim = simulator(flow, instruments, unique)
    files = [sim.write_file("KCWI", "raw", size_bytes=100_000_000)]

    async def ingesting() -> bool:
        # The receiver has handed a file over, and the ingestor has it (it does not read the bytes again: the
        # receiver's hash proved them, so it is quick, and may be done with it by the kill).
        return await flow.transfers_in_state("received") >= 1

    await eventually(ingesting, timeout=60, what="the ingestor to be working on a file")
    await ingestor.kill()
    archived_at_kill = len(await flow.archived())
    # Two more while it is down: their transfers wait for it, whatever state the first was left in.
    files += [sim.write_file("KCWI", "raw", size_bytes=100_000_000) for _ in range(2)]
    await flow.start("ingestor")
    await wait_archived(flow, files, timeout=120)
    rows = await flow.archived()
    assert len(rows) == len(files)  # nothing stored twice
    assert_stored(flow, files, rows)
    assert archived_at_kill < len(files)  # killed with work in hand or to come
    assert receiver.proc.returncode is None


async def test_shared_filesystem_mode_archives_the_file_without_copying_it(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor", shared_dir=flow.watch_root)
    await flow.start("monitor", shared_filesystem=True)
    sim = simulator(flow, instruments, unique)
    files = [sim.write_file("HIRES", size_bytes=2_000_000), sim.write_file("NIRCAM", "cal", size_bytes=2_000_000)]
    await wait_archived(flow, files)
    rows = await flow.archived()
    assert_stored(flow, files, rows)
    for simulated, row in zip(
        files, sorted(rows, key=lambda r: [f.archive_id for f in files].index(r["archive_id"])), strict=True
    ):
        # One inode from the instrument's folder to archive storage: only the manifest travelled.
        assert (flow.storage / row["storage_path"]).stat().st_ino == simulated.path.stat().st_ino


async def test_a_file_sent_again_is_not_stored_twice_and_changed_content_replaces_what_was_sent(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    await flow.start("monitor")
    sim = simulator(flow, instruments, unique)
    original = sim.write_file("HIRES", size_bytes=200_000)
    await wait_archived(flow, [original])

    # The operator sends the same file again: the archive recognises the transfer, nothing new is stored.
    await flow.skyport("monitor", "retry", original.relative_path)
    await eventually(lambda: _sent(flow, original.relative_path) == 2, what="the monitor to send the file again")
    # The instrument writes the same bytes again under the same name: nothing new, nothing sent.
    content = original.path.read_bytes()
    original.path.unlink()
    original.path.write_bytes(content)

    async def restamped() -> bool:
        entry = await flow.journal_entry(original.relative_path)
        return bool(entry["mtime_ns"] == original.path.stat().st_mtime_ns and entry["state"] == "ingested")

    await eventually(restamped, what="the rewritten file recognised")
    assert _sent(flow, original.relative_path) == 2
    assert await archived_ids(flow) == {original.archive_id: [1]}

    # Another site sends the same bytes (a new transfer): the ingestor sees a duplicate and stores nothing.
    other_token = (await flow.skyport("receiver", "add-site", f"{flow.site}_backup")).strip()
    entry = await flow.journal_entry(original.relative_path)
    base = f"http://127.0.0.1:{flow.receiver_port}/v1/transfers"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {other_token}"}) as http:
        async with http.post(base, data=entry["manifest"], headers={"Content-Type": "application/json"}) as response:
            assert response.status == 201
            transfer_id = (await response.json())["transfer_id"]
        async with http.put(f"{base}/{transfer_id}/content", data=content) as response:
            assert response.status == 200

        async def duplicate_acknowledged() -> bool:
            async with http.get(f"{base}/{transfer_id}") as response:
                status = await response.json()
            return bool(status["state"] == "ingested" and status["duplicate"] and status["version"] == 1)

        await eventually(duplicate_acknowledged, what="the duplicate to be acknowledged")
    assert await archived_ids(flow) == {original.archive_id: [1]}

    # New content under the same name is never a new version by itself: HIRES's completion rule ('fits') is the
    # monitor's own judgement, so the file was taken too early; the complete file takes the place of the old one.
    with fits.open(original.path, mode="update") as hdul:
        hdul[0].header["HISTORY"] = "reprocessed"
        hdul[0].add_checksum()
    complete = hashlib.sha256(original.path.read_bytes()).hexdigest()

    async def replaced() -> bool:
        rows = await flow.archived()
        return [(r["version"], r["sha256"]) for r in rows] == [(1, complete)]

    await eventually(replaced, what="version 1 replaced by the complete file")
    (row,) = await flow.archived()
    stored = flow.storage / row["storage_path"]
    assert stored.parent.name == "v1"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == complete
    history = (await flow.monitor_status())["history"]
    assert any("the complete file replaces the partial one" in h["reason"] for h in history)

    # The operator sends the file again after all: the same bytes, nothing new.
    await flow.skyport("monitor", "retry", original.relative_path)
    await eventually(lambda: _sent(flow, original.relative_path) == 4, what="the monitor to send the file again")
    await eventually(lambda: _state(flow, original.relative_path, "ingested"), what="acknowledged")
    assert await archived_ids(flow) == {original.archive_id: [1]}


async def _state(flow: Flow, path: str, state: str) -> bool:
    return bool((await flow.journal_entry(path))["state"] == state)


def _sent(flow: Flow, path: str) -> int:
    return sum(line["path"] == path for process in flow.processes for line in process.logged("file sent"))


async def _versions(flow: Flow, archive_id: str, expected: list[int]) -> bool:
    return (await archived_ids(flow)).get(archive_id) == expected


async def test_bad_files_are_reported_with_their_reason_and_the_files_behind_go_through(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    await flow.start("monitor", incomplete_timeout=1.5)
    sim = simulator(flow, instruments, unique)
    bad = [sim.write_bad_file(kind, "HIRES") for kind in BadKind]
    good = [sim.write_file("HIRES", size_bytes=100_000), sim.write_file("NIRCAM", "cal", size_bytes=100_000)]
    await wait_archived(flow, good)

    async def all_invalid() -> bool:
        return (await flow.monitor_status())["counts"]["invalid"] == len(bad)

    await eventually(all_invalid, timeout=30, what="every bad file reported invalid")
    problems = {p["path"]: p for p in (await flow.monitor_status())["problems"]}
    for simulated in bad:
        problem = problems[simulated.relative_path]
        assert problem["state"] == "invalid"
        assert simulated.expected_reason is not None
        assert simulated.expected_reason.lower() in problem["reason"].lower(), (simulated.bad, problem["reason"])
    assert len(await flow.archived()) == len(good)


async def test_corruption_in_transit_is_caught_by_the_checksum_and_the_upload_retried(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor")
    proxy = FreezableProxy("127.0.0.1", flow.receiver_port, corrupt_at=150_000)
    await proxy.start()
    try:
        await flow.start("monitor", receiver_url=f"http://127.0.0.1:{proxy.port}")
        sim = simulator(flow, instruments, unique)
        victim = sim.write_file("HIRES", size_bytes=400_000)
        follower = sim.write_file("KCWI", "raw", size_bytes=100_000)
        await wait_archived(flow, [victim, follower])
    finally:
        await proxy.close()
    assert proxy.corrupted
    assert_stored(flow, [victim, follower], await flow.archived())  # the good bytes, after a retry
    history = (await flow.monitor_status())["history"]
    (mismatch,) = [h for h in history if h["path"] == victim.relative_path]
    size = victim.path.stat().st_size
    assert mismatch["reason"].startswith(f"checksum mismatch: received {size} bytes with sha256 ")
    assert mismatch["reason"].endswith(f"the manifest says {size} bytes with sha256 {sha256(victim.path)}")


async def test_an_upload_over_the_limit_fails_with_the_reason(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", "ingestor", max_upload_bytes=1_000_000)
    await flow.start("monitor")
    sim = simulator(flow, instruments, unique)
    large = sim.write_file("HIRES", size_bytes=3_000_000)
    small = sim.write_file("HIRES", size_bytes=100_000)
    await wait_archived(flow, [small])

    async def failed() -> bool:
        problems = (await flow.monitor_status())["problems"]
        return any(p["path"] == large.relative_path and p["state"] == "failed" for p in problems)

    await eventually(failed, what="the large file failed")
    (problem,) = [p for p in (await flow.monitor_status())["problems"] if p["path"] == large.relative_path]
    assert "HTTP 413" in problem["reason"]
    assert "at most 1000000" in problem["reason"]


async def test_the_transfer_api_refuses_bad_requests_with_clear_errors(
    flow: Flow, instruments: InstrumentCatalog, unique: str
) -> None:
    await flow.start("receiver", max_upload_bytes=1_000_000)
    base = f"http://127.0.0.1:{flow.receiver_port}/v1/transfers"
    auth = {"Authorization": f"Bearer {flow.token}"}
    manifest = {
        "archive_id": f"HI.TEST.{unique}",
        "original_filename": "hires0001.fits",
        "size_bytes": 2880,
        "sha256": hashlib.sha256(b"\0" * 2880).hexdigest(),
        "mission": "KECK",
        "instrument": "HIRES",
        "level": "0",
        "propid": "2026B_U123",
        "written_at": "2026-03-15T08:00:00Z",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(base, json=manifest) as response:
            assert response.status == 401
            assert "Authorization: Bearer" in (await response.json())["error"]
        async with http.post(base, json=manifest, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "the credential is not valid for any site"
        for name in ("../../etc/passwd", "a\x00b.fits", "dir/file.fits", ".."):
            async with http.post(base, json={**manifest, "original_filename": name}, headers=auth) as response:
                assert response.status == 422
                body = await response.json()
                assert body["errors"][0]["field"] == "original_filename"
        async with http.post(base, json={**manifest, "size_bytes": 2_000_000}, headers=auth) as response:
            assert response.status == 413
            assert "at most 1000000" in (await response.json())["error"]
        async with http.post(base, data=b"{not json", headers=auth) as response:
            assert response.status == 422

        async with http.post(base, json=manifest, headers=auth) as response:
            assert response.status == 201
            transfer = await response.json()
        async with http.post(base, json=manifest, headers=auth) as response:
            assert response.status == 200  # the same manifest again is the same transfer
            assert (await response.json())["transfer_id"] == transfer["transfer_id"]
        content = f"{base}/{transfer['transfer_id']}/content"
        async with http.put(content, data=b"\1" * 2880, headers=auth) as response:
            assert response.status == 422
            assert (await response.json())["error"].startswith("checksum mismatch")
        async with http.get(f"{base}/{transfer['transfer_id']}", headers=auth) as response:
            assert (await response.json())["state"] == "created"
        async with http.put(content, data=b"\1" * 5000, headers=auth) as response:
            assert response.status == 422
            assert "Content-Length is 5000" in (await response.json())["error"]
        async with http.get(f"{base}/{transfer['transfer_id']}", headers={"Authorization": "Bearer x"}) as response:
            assert response.status == 401
    assert list((flow.staging / ".incoming").iterdir()) == []

    # A monitor with a wrong credential keeps the file and says why.
    await flow.start("monitor", site_token="not-the-token")
    sim = simulator(flow, instruments, unique)
    kept = sim.write_file("HIRES", size_bytes=100_000)

    async def refused() -> bool:
        problems = (await flow.monitor_status())["problems"]
        return any(
            p["path"] == kept.relative_path and "refused this site's credential" in p["reason"] for p in problems
        )

    await eventually(refused, what="the monitor to report the refused credential")
