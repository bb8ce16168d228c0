"""A file still being written is never taken: each completion rule against a writer that pauses between HDUs."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from astropy.io import fits

from services.monitor import cli
from services.monitor.completion import Look, decide
from services.monitor.journal import FileState, Journal
from skyport.fits import Structure
from skyport.instruments import load_instruments
from skyport.instruments.models import CompletionRule
from skyport.simulator import SimulatedFile, Simulator
from tests.support.observatory import Observatory, instruments_with, observatory
from tests.support.waiting import eventually

# HIRES writes a primary header and three CCD extensions: three pauses of 1.5 s, each leaving valid FITS behind.
PAUSE = 1.5

RULES = {
    "rename": ('[completion]\nrule = "rename"', "rename"),
    "marker": ('[completion]\nrule = "marker"', "inplace"),
    "signal": ('[completion]\nrule = "signal"', "inplace"),
    "fits": ('[completion]\nrule = "fits"', "inplace"),
    "quiet": ('[completion]\nrule = "quiet"\nquiet_seconds = 4', "inplace"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def write_pausing(site: Observatory, mode: str, *, nextend: bool) -> SimulatedFile:
    sim = Simulator(load_instruments(site.instruments_dir), site.root, seed=7)
    return await asyncio.to_thread(
        sim.write_file, "HIRES", size_bytes=300_000, mode=mode, hdu_delay=PAUSE, nextend=nextend
    )


async def signal_closed(site: Observatory, simulated: SimulatedFile, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the instrument's software does: ``skyport monitor closed PATH``."""
    monkeypatch.setenv("SKYPORT_WATCH_ROOT", str(site.root))
    monkeypatch.setenv("SKYPORT_JOURNAL_PATH", str(site.journal_path))
    assert await asyncio.to_thread(cli._closed, argparse.Namespace(paths=[str(simulated.path)])) == 0


@pytest.mark.parametrize("rule", list(RULES))
async def test_a_writer_pausing_between_hdus_is_archived_once_complete_never_partial(
    rule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    completion, mode = RULES[rule]
    async with observatory(tmp_path, instruments_with(tmp_path, "HIRES", completion)) as site:
        # Without NEXTEND (only the 'fits' rule needs it, and gets it here).
        simulated = await write_pausing(site, mode, nextend=rule == "fits")
        if rule == "signal":
            await signal_closed(site, simulated, monkeypatch)
        assert simulated.archive_id is not None

        await eventually(
            lambda: bool(site.archive.versions(simulated.archive_id or "")), timeout=20, what="the file archived"
        )
        await asyncio.sleep(1.0)  # a partial file sent late would show up as a second version here
        (archived,) = site.archive.versions(simulated.archive_id)
        assert archived.sha256 == sha256(simulated.path)
        assert archived.manifest.size_bytes == simulated.path.stat().st_size
        assert not [h for h in await site.journal.history() if "changed after it was sent" in str(h["reason"])]


async def test_the_fits_rule_waits_for_a_file_that_does_not_declare_its_extensions(tmp_path: Path) -> None:
    async with observatory(tmp_path) as site:  # HIRES ships with the 'fits' rule
        simulated = await write_pausing(site, "inplace", nextend=False)

        async def waiting() -> bool:
            entry = await site.entry(simulated.relative_path)
            return entry is not None and entry.state is FileState.WAITING and "NEXTEND" in (entry.reason or "")

        await eventually(waiting, timeout=20, what="the file reported waiting for want of NEXTEND")
        await site.monitor.rescan()
        await asyncio.sleep(0.5)
        assert site.archive.sent == []

        # The operator looks at it and sends it as it is.
        await site.journal.reset([simulated.relative_path])
        await eventually(lambda: len(site.archive.sent) == 1, what="the file sent after the operator's retry")
        assert site.archive.sent[0].sha256 == sha256(simulated.path)


async def test_a_file_signalled_closed_then_changed_waits_for_a_new_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    completion, _ = RULES["signal"]
    async with observatory(tmp_path, instruments_with(tmp_path, "HIRES", completion)) as site:
        sim = Simulator(load_instruments(site.instruments_dir), site.root, seed=8)
        simulated = await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000, mode="inplace")
        content = simulated.path.read_bytes()

        async def waiting_for(phrase: str) -> bool:
            entry = await site.entry(simulated.relative_path)
            return entry is not None and entry.state is FileState.WAITING and phrase in (entry.reason or "")

        await site.monitor.rescan()
        await eventually(lambda: waiting_for("'closed' signal"), what="the file waiting for its signal")
        # The instrument's software says "closed" too early: half the file is there, the rest follows.
        simulated.path.write_bytes(content[: len(content) // 2])
        await signal_closed(site, simulated, monkeypatch)
        simulated.path.write_bytes(content)
        await eventually(lambda: waiting_for("changed after the instrument said"), what="the stale signal refused")
        assert site.archive.sent == []

        await signal_closed(site, simulated, monkeypatch)
        await eventually(lambda: len(site.archive.sent) == 1, what="the file sent after the new signal")
        assert site.archive.sent[0].sha256 == sha256(simulated.path)


async def test_a_file_changed_after_it_was_sent_replaces_the_partial_one_and_the_problem_is_recorded(
    tmp_path: Path,
) -> None:
    async with observatory(tmp_path) as site:  # HIRES: the 'fits' rule, nothing says "finished again"
        sim = Simulator(load_instruments(site.instruments_dir), site.root, seed=9)
        simulated = await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000)
        await eventually(lambda: len(site.archive.sent) == 1, what="the file archived")
        await eventually(lambda: _state_is(site, simulated.relative_path, FileState.INGESTED), what="ingested")
        first = site.archive.sent[0]

        # The same bytes written again: nothing new.
        content = simulated.path.read_bytes()
        simulated.path.unlink()
        simulated.path.write_bytes(content)
        await site.monitor.rescan()
        # New content (twice): each time the complete file takes the place of what was sent, never a new version.
        for line in ("rewritten by hand", "and once more"):
            with fits.open(simulated.path, mode="update") as hdul:
                hdul[0].header["HISTORY"] = line
                hdul[0].add_checksum()
            expected = sha256(simulated.path)
            await eventually(
                lambda expected=expected: site.archive.sent[0].sha256 == expected,
                what="the new content sent to replace the old",
            )
            await eventually(lambda: _state_is(site, simulated.relative_path, FileState.INGESTED), what="ingested")
        assert [s.version for s in site.archive.sent] == [1]
        assert [s.sha256 for s in site.archive.replaced] == [first.sha256, site.archive.replaced[1].sha256]
        # What was sent before for the file, newest first: whichever the archive holds is replaced.
        assert [r.sha256 for r in site.archive.sent[0].manifest.replaces] == [
            s.sha256 for s in reversed(site.archive.replaced)
        ]
        reasons = [str(h["reason"]) for h in await site.journal.history()]
        assert len([r for r in reasons if "changed after it was sent" in r]) == 2
        assert all("the complete file replaces the partial one" in r for r in reasons if "changed after" in r)


async def test_a_file_finished_again_by_its_instrument_is_sent_again(tmp_path: Path) -> None:
    async with observatory(tmp_path) as site:  # KCWI: the 'marker' rule
        sim = Simulator(load_instruments(site.instruments_dir), site.root, seed=10)
        simulated = await asyncio.to_thread(sim.write_file, "KCWI", "raw", size_bytes=100_000)
        await eventually(lambda: _state_is(site, simulated.relative_path, FileState.INGESTED), what="ingested")
        marker = simulated.path.with_name(simulated.path.name + ".done")
        with fits.open(simulated.path, mode="update") as hdul:
            hdul[0].header["HISTORY"] = "reprocessed"
            hdul[0].add_checksum()
        await site.monitor.rescan()
        await asyncio.sleep(0.5)
        assert len(site.archive.sent) == 1  # the old marker is older than the new content: not finished yet
        marker.touch()
        await eventually(lambda: len(site.archive.sent) == 2, what="the new content sent after the new marker")
        reasons = [str(h["reason"]) for h in await site.journal.history()]
        assert any("the instrument finished it again" in reason for reason in reasons)


async def _state_is(site: Observatory, relative: str, state: FileState) -> bool:
    entry = await site.entry(relative)
    return entry is not None and entry.state is state


def _look(*, complete: bool = True, declared: bool = True, broken: str | None = None, marker: bool = False) -> Look:
    waiting = None if complete or broken else "the file is truncated"
    return Look(size=5760, mtime_ns=1, structure=Structure(complete, declared, broken, waiting), marker=marker)


@pytest.mark.parametrize(
    ("rule", "look", "unchanged_for", "closed_as", "take"),
    [
        # rename: a file under its final name is done once its bytes form whole FITS.
        (CompletionRule(rule="rename"), _look(declared=False), 0.0, None, True),
        (CompletionRule(rule="rename"), _look(complete=False, declared=False), 0.0, None, False),
        # marker: not without it, even when the bytes look whole.
        (CompletionRule(rule="marker"), _look(), 0.0, None, False),
        (CompletionRule(rule="marker"), _look(declared=False, marker=True), 0.0, None, True),
        # signal: the signal must describe the file as it is.
        (CompletionRule(rule="signal"), _look(), 0.0, None, False),
        (CompletionRule(rule="signal"), _look(), 0.0, (2880, 1), False),
        (CompletionRule(rule="signal"), _look(declared=False), 0.0, (5760, 1), True),
        # fits: whole and declared; a file cut at an HDU boundary without NEXTEND is not taken, ever.
        (CompletionRule(rule="fits"), _look(), 0.0, None, True),
        (CompletionRule(rule="fits"), _look(declared=False), 3600.0, None, False),
        # quiet: only after the period, and only whole.
        (CompletionRule(rule="quiet", quiet_seconds=5), _look(declared=False), 4.9, None, False),
        (CompletionRule(rule="quiet", quiet_seconds=5), _look(declared=False), 5.0, None, True),
        # A fault no writing can mend is taken for DEP to report; so is a file unchanged past the timeout.
        (CompletionRule(rule="fits"), _look(complete=False, declared=False, broken="not FITS"), 0.0, None, True),
        (CompletionRule(rule="fits"), _look(complete=False, declared=False), 60.0, None, True),
        (CompletionRule(rule="marker"), _look(complete=False, declared=False), 600.0, None, False),
    ],
)
def test_each_completion_rule_takes_a_file_only_when_its_writer_is_done(
    rule: CompletionRule, look: Look, unchanged_for: float, closed_as: tuple[int, int] | None, take: bool
) -> None:
    decision = decide(rule, look, unchanged_for, closed_as=closed_as, incomplete_timeout=60.0)
    assert decision.take is take
    assert decision.take or decision.reason


async def test_a_journal_holding_files_of_the_former_changed_state_sends_them_to_replace_what_was_sent(
    tmp_path: Path,
) -> None:
    # Before: a sent file that changed was held in the state 'changed' until an operator retried it.
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
            "written_at REAL NOT NULL, state TEXT NOT NULL, archive_id TEXT, manifest TEXT, transfer_id TEXT, "
            "reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, "
            "detected_at REAL NOT NULL, evaluated_at REAL, uploaded_at REAL, finished_at REAL, "
            "updated_at REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO files (path, size, mtime_ns, written_at, state, reason, detected_at, updated_at) "
            "VALUES ('hires/hires0001.fits', 20160, 5, 0, 'changed', 'changed after it was sent', 0, 0)"
        )
    journal = await Journal.open(path)
    try:
        entry = await journal.get("hires/hires0001.fits")
        assert entry is not None
        assert entry.state is FileState.INGESTED  # sent, as it was
        # ... with a stamp no file has, so that the next scan finds it changed and sends it to replace what was sent.
        assert (await journal.known())["hires/hires0001.fits"][:2] != (20160, 5)
        assert entry.replaces is None
    finally:
        await journal.close()
