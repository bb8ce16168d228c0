"""The FITS helpers: completeness while a file is written, full verification with clear reasons, sha256, checksums."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skyport.fits import (
    CHECKSUM_PLACEHOLDER,
    FITS_BLOCK,
    DataSum,
    InvalidFile,
    Structure,
    checksum_value,
    looks_complete,
    not_fits_reason,
    probe_structure,
    read_header,
    sha256_file,
    verify_fits,
)
from skyport.instruments import InstrumentCatalog, load_instruments
from skyport.simulator import Simulator
from skyport.simulator.writer import write_file

INSTRUMENTS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "instruments"
NIGHT = date(2026, 3, 15)


@pytest.fixture(scope="module")
def catalog() -> InstrumentCatalog:
    return load_instruments(INSTRUMENTS_DIR)


def _write_astropy_file(path: Path, *, checksum: bool = True) -> None:
    primary = fits.PrimaryHDU()
    primary.header["OBSERVTN"] = "002"
    primary.header["TARGPROP"] = "M31"
    science = fits.ImageHDU(np.arange(60 * 40, dtype=np.float32).reshape(60, 40), name="SCI")
    science.header["BUNIT"] = "MJy/sr"
    science.header["OBSERVTN"] = "999"  # the primary's value wins
    quality = fits.ImageHDU(np.zeros((60, 40), dtype=np.uint32), name="DQ")
    fits.HDUList([primary, science, quality]).writeto(path, checksum=checksum)


def test_sha256_file_equals_hashlib_over_the_bytes(tmp_path: Path) -> None:
    data = np.random.default_rng(5).bytes(3 * 4096 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)

    digest, size = sha256_file(path, chunk_size=4096)

    assert digest == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert sha256_file(path) == (digest, size)


def test_looks_complete_only_once_every_byte_is_there(tmp_path: Path, catalog: InstrumentCatalog) -> None:
    simulated = Simulator(catalog, tmp_path / "done", seed=1, night=NIGHT).write_file("HIRES", "raw", size_bytes=40_000)
    whole = simulated.path.read_bytes()
    growing = tmp_path / "growing.fits"

    # Every prefix a writer could leave on disk, block by block and mid-block, is not complete.
    for length in [*range(0, len(whole), FITS_BLOCK), FITS_BLOCK + 80, len(whole) - 1]:
        growing.write_bytes(whole[:length])
        assert not looks_complete(growing), length
    growing.write_bytes(whole)
    assert looks_complete(growing)


def test_looks_complete_is_false_during_an_inplace_write(tmp_path: Path, catalog: InstrumentCatalog) -> None:
    simulator = Simulator(catalog, tmp_path, seed=2, night=NIGHT)
    planned = simulator._plan(simulator.resolve("KCWI", "raw"), 120_000)
    assert planned.plan is not None
    path = tmp_path / planned.relative_path
    writer = threading.Thread(
        target=write_file,
        args=(planned.plan, path),
        kwargs={"mode": "inplace", "chunk_bytes": 4 * FITS_BLOCK, "chunk_delay": 0.02},
    )
    writer.start()
    seen_partial = False
    deadline = time.monotonic() + 10
    while writer.is_alive() and time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else 0
        if 0 < size < 120_000:
            complete = looks_complete(path)
            # Judged on a partial file only if the writer did not add to it during the check (under load it may
            # finish the file between the two looks: then the verdict is about the whole file, and is right).
            if path.stat().st_size == size:
                seen_partial = True
                assert not complete, f"a file of {size} bytes, still being written, looked complete"
        time.sleep(0.002)
    writer.join()

    assert seen_partial
    assert looks_complete(path)


def test_looks_complete_never_raises_for_what_is_not_a_file(tmp_path: Path) -> None:
    assert not looks_complete(tmp_path / "missing.fits")
    assert not looks_complete(tmp_path)
    (tmp_path / "empty.fits").write_bytes(b"")
    assert not looks_complete(tmp_path / "empty.fits")


def test_verify_fits_summarises_a_sound_file(tmp_path: Path) -> None:
    path = tmp_path / "sound.fits"
    _write_astropy_file(path)

    summary = verify_fits(path)

    assert summary.hdu_count == 3
    assert summary.size_bytes == os.path.getsize(path)
    assert summary.checksum_verified
    assert [hdu.name for hdu in summary.hdus] == ["PRIMARY", "SCI", "DQ"]
    assert summary.hdus[1].shape == (60, 40)
    # Science keywords of the first extension fill in what the primary lacks; the primary's values win, and
    # layout keywords of the extension never describe the primary.
    assert summary.header["BUNIT"] == "MJy/sr"
    assert summary.header["OBSERVTN"] == "002"
    assert summary.header["NAXIS"] == 0
    assert "NAXIS1" not in summary.header
    assert "EXTNAME" not in summary.header
    # The ingestor's header-only read gives the same summary header without touching the data.
    assert dict(read_header(path)) == dict(summary.header)


def test_verify_fits_names_the_hdu_and_keyword_of_a_wrong_datasum(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.fits"
    _write_astropy_file(path)
    with fits.open(path) as hdul:
        offset = hdul[1].fileinfo()["datLoc"] + 1000
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0x5A]))

    with pytest.raises(InvalidFile, match=r"HDU 1 \(SCI\): DATASUM does not match the data"):
        verify_fits(path)


def test_checksums_are_verified_on_the_bytes_written_when_astropy_would_reformat_a_card(tmp_path: Path) -> None:
    # Old headers hold cards astropy cannot parse as they are; it "fixes" them to check CHECKSUM, which then fails.
    data = np.arange(100, dtype=">f4")
    datasum = DataSum()
    datasum.update(data.tobytes())

    def header(checksum: str) -> bytes:
        cards = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    1"]
        cards += ["NAXIS1  =                  100", "EXPTIME = abc", "OBSERVER= 'unterminated", "FILTER  = 'a\tb'"]
        cards += [f"CHECKSUM= '{checksum}'", f"DATASUM = '{datasum.value}'", "END"]
        text = "".join(card.ljust(80) for card in cards)
        return text.ljust(FITS_BLOCK).encode("ascii")

    path = tmp_path / "old.fits"
    checksum = checksum_value(header(CHECKSUM_PLACEHOLDER), datasum.value)
    path.write_bytes(header(checksum) + data.tobytes() + b"\0" * (FITS_BLOCK - 400))

    summary = verify_fits(path)

    assert summary.hdus[0].datasum_verified
    assert summary.hdus[0].checksum_verified
    assert summary.header["EXPTIME"] == "abc"  # kept as text, for the keyword rules to report


def test_verify_fits_accepts_a_file_without_checksums(tmp_path: Path) -> None:
    path = tmp_path / "plain.fits"
    _write_astropy_file(path, checksum=False)

    summary = verify_fits(path)

    assert not summary.checksum_verified


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"GIF89a" + b"\0" * (FITS_BLOCK - 6), "not a FITS file"),
    ],
)
def test_verify_fits_rejects_what_is_not_fits(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.fits"
    path.write_bytes(content)
    with pytest.raises(InvalidFile, match=reason):
        verify_fits(path)


def test_verify_fits_rejects_a_cut_file_and_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sound.fits"
    _write_astropy_file(path)
    whole = path.read_bytes()

    path.write_bytes(whole[:-FITS_BLOCK])
    with pytest.raises(InvalidFile, match=r"the file is truncated: HDU 2 \(DQ\) needs 9600 bytes of data"):
        verify_fits(path)
    path.write_bytes(whole[:-100])
    with pytest.raises(InvalidFile, match="not a multiple of 2880"):
        verify_fits(path)
    path.write_bytes(whole + b"\0" * FITS_BLOCK)
    with pytest.raises(InvalidFile, match="are not an extension"):
        verify_fits(path)


def test_verify_fits_leaves_a_missing_file_to_the_caller(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify_fits(tmp_path / "missing.fits")


@pytest.mark.parametrize("dtype", [">f4", ">i2", ">i4", ">f8"])
def test_streaming_checksums_equal_astropy(dtype: str) -> None:
    data = (np.random.default_rng(11).normal(size=(37, 53)) * 1000).astype(dtype)
    hdu = fits.ImageHDU(data=data.copy(), name="SCI")
    hdu.header["TARGPROP"] = "M31"
    hdu.add_checksum(when="checksum test")

    datasum = DataSum()
    raw = data.tobytes()
    for start, stop in [(0, 7), (7, 1001), (1001, len(raw))]:  # pieces that split 32-bit words
        datasum.update(raw[start:stop])
    header = hdu.header.copy()
    header["CHECKSUM"] = CHECKSUM_PLACEHOLDER

    assert datasum.value == int(hdu.header["DATASUM"])
    assert checksum_value(header.tostring().encode("ascii"), datasum.value) == hdu.header["CHECKSUM"]


def test_an_unparsable_header_card_is_a_reason_never_an_exception(tmp_path: Path, catalog: InstrumentCatalog) -> None:
    simulated = Simulator(catalog, tmp_path, seed=21).write_file("HIRES", size_bytes=60_000)
    data = bytearray(simulated.path.read_bytes())
    start = data.index(b"NEXTEND =")
    data[start : start + 80] = b"NEXTEND =                  abc".ljust(80)  # astropy: VerifyError on reading it
    simulated.path.write_bytes(bytes(data))

    assert not looks_complete(simulated.path)
    structure = probe_structure(simulated.path)
    assert structure.broken is not None
    assert "NEXTEND card cannot be parsed" in structure.broken
    with pytest.raises(InvalidFile, match="NEXTEND card cannot be parsed"):
        verify_fits(simulated.path)


def test_probe_structure_says_whether_a_file_declares_its_extensions(
    tmp_path: Path, catalog: InstrumentCatalog
) -> None:
    sim = Simulator(catalog, tmp_path, seed=22)
    declared = sim.write_file("HIRES", size_bytes=60_000)
    undeclared = sim.write_file("HIRES", size_bytes=60_000, nextend=False)
    assert probe_structure(declared.path) == Structure(complete=True, declared=True)
    assert probe_structure(undeclared.path) == Structure(complete=True, declared=False)

    content = declared.path.read_bytes()
    cut = tmp_path / "cut.fits"
    cut.write_bytes(content[: len(content) // 2 // FITS_BLOCK * FITS_BLOCK])
    structure = probe_structure(cut)
    assert (structure.complete, structure.broken) == (False, None)
    assert structure.waiting_for is not None


def test_gzip_data_behind_a_fits_name_is_refused_with_a_reason_that_says_so(tmp_path: Path) -> None:
    path = tmp_path / "hires0001.fits"
    _write_astropy_file(tmp_path / "plain.fits")
    path.write_bytes(gzip.compress((tmp_path / "plain.fits").read_bytes()))
    assert probe_structure(path).broken == not_fits_reason(path.read_bytes()[:9])
    with pytest.raises(InvalidFile, match=r"gzip-compressed data.*compressed FITS is not configured"):
        verify_fits(path)
