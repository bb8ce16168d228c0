"""Nothing vanishes without a trace: odd files are recorded with their reason, and no file stops the monitor."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.monitor import completion
from services.monitor.journal import FileState
from skyport.instruments import load_instruments
from skyport.simulator import Simulator
from tests.support.flow import INSTRUMENTS, REPO
from tests.support.observatory import Observatory, observatory
from tests.support.waiting import eventually


def simulator(site: Observatory, seed: int = 11) -> Simulator:
    return Simulator(load_instruments(site.instruments_dir), site.root, seed=seed)


async def status(site: Observatory) -> dict[str, Any]:
    """``skyport monitor status --json`` as an operator runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SKYPORT_JOURNAL_PATH": str(site.journal_path)}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "skyport", "monitor", "status", "--json", "--limit", "100"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


async def test_unmatched_and_compressed_files_are_recorded_with_their_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observatory(tmp_path) as site:
        sim = simulator(site)
        good = await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000)
        folder = good.path.parent
        fits_bytes = good.path.read_bytes()
        (folder / "hires9001.fits.gz").write_bytes(gzip.compress(fits_bytes))
        (folder / "hires9002.fits.fz").write_bytes(fits_bytes)
        (folder / "-hires9003.fits").write_bytes(fits_bytes)
        (folder / "guider.log").write_text("written by another program\n")
        (folder / "hires9004.fits").write_bytes(gzip.compress(fits_bytes))  # gzip behind a .fits name
        (folder / "sub").mkdir()
        (folder / "sub" / "hires9005.fits").write_bytes(fits_bytes)
        # The writers' own files are neither taken nor reported: a temporary name, a KCWI marker.
        nircam = await asyncio.to_thread(sim.write_file, "NIRCAM", "cal", size_bytes=100_000)
        (nircam.path.parent / f"{nircam.path.name}.tmp").write_bytes(b"partial")
        kcwi = await asyncio.to_thread(sim.write_file, "KCWI", "raw", size_bytes=100_000)
        assert (kcwi.path.parent / f"{kcwi.path.name}.done").exists()

        expected = {
            "hires9001.fits.gz": ("ignored", "compressed FITS is not configured for this instrument"),
            "hires9002.fits.fz": ("ignored", "compressed FITS is not configured for this instrument"),
            "-hires9003.fits": ("ignored", "does not match HIRES's naming rule (hires[0-9]*.fits)"),
            "guider.log": ("ignored", "does not match HIRES's naming rule (hires[0-9]*.fits)"),
            "hires9004.fits": ("invalid", "gzip-compressed data (compressed FITS is not configured"),
            "sub/hires9005.fits": ("ignored", "in a subfolder of keck/hires/raw"),
        }
        prefix = good.relative_path.rsplit("/", 1)[0]

        async def all_recorded() -> bool:
            entries = [await site.entry(f"{prefix}/{name}") for name in expected]
            return all(
                e is not None and e.state.value == state
                for e, (state, _) in zip(entries, expected.values(), strict=False)
            )

        await eventually(all_recorded, what="every odd file recorded")
        await eventually(lambda: len(site.archive.sent) == 3, what="the good files archived")
        problems = {p["path"]: p for p in (await status(site))["problems"]}
        for name, (state, phrase) in expected.items():
            problem = problems[f"{prefix}/{name}"]
            assert (problem["state"], phrase in problem["reason"]) == (state, True), problem
        assert "does not match HIRES's naming rule" in problems[f"{prefix}/hires9001.fits.gz"]["reason"]
        assert set(problems) == {f"{prefix}/{name}" for name in expected}  # temporary names and markers: silence


async def test_the_rescan_finds_what_inotify_missed(tmp_path: Path) -> None:
    async with observatory(tmp_path, rescan_interval=0.5) as site:
        site.monitor.notice = lambda path: None  # type: ignore[method-assign]  # inotify misses every event
        sim = simulator(site)
        files = [await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000) for _ in range(3)]
        files.append(await asyncio.to_thread(sim.write_file, "KCWI", "raw", size_bytes=100_000))  # marker rule
        await eventually(lambda: len(site.archive.sent) == len(files), what="every file found by a rescan")


async def test_an_error_looking_at_one_file_is_that_files_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.monitor import monitor as monitor_module

    real_look_at = completion.look_at

    def look_at(path: Path, marker_suffix: str | None) -> Any:
        if path.name == "hires0002.fits":
            raise RuntimeError("the disk controller hiccuped")
        return real_look_at(path, marker_suffix)

    monkeypatch.setattr(monitor_module, "look_at", look_at)
    async with observatory(tmp_path) as site:
        sim = simulator(site)
        files = [await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000) for _ in range(3)]
        await eventually(lambda: len(site.archive.sent) == 2, what="the other files archived")
        entry = await site.entry(files[1].relative_path)
        assert entry is not None
        assert entry.state is FileState.WAITING
        assert "the disk controller hiccuped" in (entry.reason or "")
        monkeypatch.setattr(monitor_module, "look_at", real_look_at)
        await site.monitor.rescan()  # what the next periodic rescan does
        await eventually(lambda: len(site.archive.sent) == 3, what="the file taken once it can be read")


async def test_a_loop_that_keeps_dying_is_restarted_and_fails_readiness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observatory(tmp_path, rescan_interval=0.2) as site:
        assert await site.monitor.supervisor.ready()
        real_known = site.journal.known
        deaths = 0

        async def broken_known() -> Any:
            nonlocal deaths
            deaths += 1
            raise RuntimeError("journal index corrupt")

        monkeypatch.setattr(site.journal, "known", broken_known)
        await eventually(lambda: deaths >= 3, timeout=15, what="the rescan loop restarted after dying")

        async def unready() -> bool:
            return not await site.monitor.supervisor.ready()

        await eventually(unready, what="readiness to fail")
        monkeypatch.setattr(site.journal, "known", real_known)
        sim = simulator(site)
        site.monitor.notice = lambda path: None  # type: ignore[method-assign]  # only the rescan can find it
        await asyncio.to_thread(sim.write_file, "HIRES", size_bytes=100_000)
        await eventually(lambda: len(site.archive.sent) == 1, timeout=30, what="the restarted rescan at work")


def test_status_from_another_folder_names_the_missing_journal_and_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SKYPORT_JOURNAL_PATH"}
    env["PYTHONPATH"] = str(REPO)
    env["SKYPORT_INSTRUMENTS_DIR"] = str(INSTRUMENTS)
    for command in (["status"], ["retry", "--failed"], ["closed", "x.fits"]):
        result = subprocess.run(
            [sys.executable, "-m", "skyport", "monitor", *command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0, command
        if command[0] != "closed":  # closed refuses first: x.fits does not exist
            (line,) = result.stderr.strip().splitlines()
            assert str(tmp_path / "var" / "monitor" / "journal.sqlite3") in line
            assert "SKYPORT_JOURNAL_PATH" in line
    assert list(tmp_path.iterdir()) == []
