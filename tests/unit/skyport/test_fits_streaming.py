"""The one-pass FITS verification gives the astropy-based verification's verdicts and reasons, and the sha256."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from skyport.fits import (
    _PRIMARY_START,
    CHECKSUM_PLACEHOLDER,
    FITS_BLOCK,
    DataSum,
    FitsSummary,
    HduSummary,
    InvalidFile,
    _BadStructure,
    _fold,
    _HduLayout,
    _merged_header,
    _walk_hdus,
    checksum_value,
    not_fits_reason,
    verify_fits,
)
from skyport.instruments import InstrumentCatalog, load_instruments
from skyport.simulator import Simulator

INSTRUMENTS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "instruments"
NIGHT = date(2026, 3, 15)


# --- the reference: the astropy-based verify_fits as it was before the one-pass verification ------------------


def reference_verify(path: Path) -> FitsSummary:
    """verify_fits before issue 11: the structure from the headers, then astropy opens the file memory-mapped."""
    size = os.stat(path).st_size
    with open(path, "rb") as stream:
        if size == 0:
            raise InvalidFile("the file is empty (0 bytes)")
        start = stream.read(len(_PRIMARY_START))
        if start != _PRIMARY_START:
            raise InvalidFile(not_fits_reason(start))
        if size % FITS_BLOCK:
            raise InvalidFile(
                f"the file is truncated or badly padded: its size, {size} bytes, is not a multiple of {FITS_BLOCK}"
            )
        try:
            layouts = _walk_hdus(stream, size)
        except _BadStructure as exc:
            raise InvalidFile(str(exc)) from None

    problems: list[str] = []
    hdus: list[HduSummary] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(
                path,
                memmap=True,
                do_not_scale_image_data=True,
                disable_image_compression=True,
                lazy_load_hdus=False,
                checksum=False,
            )
        except (OSError, ValueError, VerifyError) as exc:
            raise InvalidFile(f"astropy cannot read the file: {exc}") from None
        with hdul:
            if len(hdul) != len(layouts):
                raise InvalidFile(f"astropy finds {len(hdul)} HDUs where the headers describe {len(layouts)}")
            for index, hdu in enumerate(hdul):
                hdus.append(_reference_hdu(index, hdu, layouts[index], problems))
            merged = _merged_header([hdu.header for hdu in hdul[:2]], layouts)
    if problems:
        raise InvalidFile("; ".join(problems))
    return FitsSummary(header=MappingProxyType(merged), hdu_count=len(hdus), size_bytes=size, hdus=tuple(hdus))


def _reference_hdu(index: int, hdu: Any, layout: _HduLayout, problems: list[str]) -> HduSummary:
    where = f"HDU {index} ({layout.name})"
    header = hdu.header
    datasum_ok = checksum_ok = False
    try:
        if "DATASUM" in header:
            if hdu.verify_datasum() == 0:
                problems.append(f"{where}: DATASUM does not match the data (the data are corrupt or were changed)")
            else:
                datasum_ok = True
        if "CHECKSUM" in header and (datasum_ok or "DATASUM" not in header):
            if _checksum_ok(hdu, layout, int(header["DATASUM"]) if datasum_ok else None):
                checksum_ok = True
            else:
                problems.append(f"{where}: CHECKSUM does not match the header and data (the HDU is corrupt)")
        data = hdu.data
        shape = tuple(int(n) for n in getattr(data, "shape", ()) or ())
        del data
    # KeyError: added here. The old verify_fits let it out (a BINTABLE without TFIELDS crashed the evaluation);
    # the one-pass verification refuses such a file with this reason.
    except (OSError, ValueError, TypeError, KeyError, VerifyError) as exc:
        problems.append(f"{where}: cannot be read: {exc}")
        shape = ()
    return HduSummary(index, layout.name, type(hdu).__name__, shape, datasum_ok, checksum_ok)


def _checksum_ok(hdu: Any, layout: _HduLayout, datasum: int | None) -> bool:
    if datasum is not None:
        header_sum = DataSum()
        header_sum.update(layout.header_bytes)
        if _fold(header_sum.value + datasum) == 0xFFFFFFFF:
            return True
    try:
        return bool(hdu.verify_checksum() == 1)
    except (ValueError, VerifyError):
        return False


def _outcome(verify: Callable[[Path], FitsSummary], path: Path) -> tuple[str, Any]:
    try:
        summary = verify(path)
    except InvalidFile as exc:
        return ("invalid", str(exc))
    return ("sound", (dict(summary.header), summary.hdu_count, summary.size_bytes, summary.hdus))


# --- the corpus -------------------------------------------------------------------------------------------------


def _card(text: str) -> bytes:
    return text.ljust(80).encode("ascii")


def _header(*cards: str) -> bytes:
    body = b"".join(_card(card) for card in (*cards, "END"))
    return body.ljust(-(-len(body) // FITS_BLOCK) * FITS_BLOCK, b" ")


def _data(raw: bytes) -> bytes:
    return raw.ljust(-(-len(raw) // FITS_BLOCK) * FITS_BLOCK, b"\0")


def _image_file(checksum: bool = True) -> bytes:
    primary = fits.PrimaryHDU()
    primary.header["OBSERVTN"] = "002"
    primary.header["NEXTEND"] = 2
    science = fits.ImageHDU(np.arange(60 * 40, dtype=np.float32).reshape(60, 40), name="SCI")
    science.header["BUNIT"] = "MJy/sr"
    quality = fits.ImageHDU(np.zeros((60, 40), dtype=np.uint32), name="DQ")
    return _to_bytes(fits.HDUList([primary, science, quality]), checksum)


def _to_bytes(hdul: fits.HDUList, checksum: bool) -> bytes:
    # Through a real file: astropy cannot write random groups to a BytesIO.
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(folder) / "written.fits"
        hdul.writeto(path, checksum=checksum)
        return path.read_bytes()


def _table_files() -> dict[str, bytes]:
    rows = np.arange(100)
    columns = [
        fits.Column(name="ID", format="J", array=rows),
        fits.Column(name="FLUX", format="E", array=rows * 1.5),
        fits.Column(name="NAME", format="8A", array=[f"star{i}" for i in rows]),
    ]
    heap = fits.Column(
        name="SPEC", format="PE()", array=np.array([np.arange(i % 7 + 1, dtype=np.float32) for i in rows], dtype=object)
    )
    ascii_table = fits.TableHDU.from_columns(
        [fits.Column(name="ID", format="I5", array=rows), fits.Column(name="X", format="F8.2", array=rows * 0.5)]
    )
    groups_data = fits.GroupData(
        np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 1, 2, 3),
        parnames=["UU", "VV"],
        pardata=[np.arange(10, dtype=np.float32), np.arange(10, dtype=np.float32) * 2],
        bitpix=-32,
    )
    compressed = fits.CompImageHDU(np.arange(200 * 100, dtype=np.int16).reshape(200, 100), name="COMP")
    files = {}
    for checksum in (True, False):
        tag = "checksum" if checksum else "plain"
        files[f"bintable-{tag}"] = _to_bytes(
            fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]), checksum
        )
        files[f"bintable-heap-{tag}"] = _to_bytes(
            fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([*columns, heap])]), checksum
        )
        files[f"ascii-table-{tag}"] = _to_bytes(fits.HDUList([fits.PrimaryHDU(), ascii_table.copy()]), checksum)
        files[f"random-groups-{tag}"] = _to_bytes(fits.HDUList([fits.GroupsHDU(groups_data)]), checksum)
        files[f"tile-compressed-{tag}"] = _to_bytes(fits.HDUList([fits.PrimaryHDU(), compressed.copy()]), checksum)
        files[f"image-{tag}"] = _image_file(checksum)
    # CHECKSUM without DATASUM (some old writers): astropy checks it over the header with a data sum of 0.
    data = np.arange(100, dtype=">i4").tobytes()
    files["checksum-no-datasum"] = _header(
        "SIMPLE  =                    T", "BITPIX  =                   32", "NAXIS   =                    1",
        "NAXIS1  =                  100", f"CHECKSUM= '{CHECKSUM_PLACEHOLDER}'",
    ) + _data(data)  # fmt: skip
    header_only = _header(
        "SIMPLE  =                    T", "BITPIX  =                   32", "NAXIS   =                    1",
        "NAXIS1  =                  100", f"CHECKSUM= '{CHECKSUM_PLACEHOLDER}'",
    )  # fmt: skip
    files["checksum-no-datasum-right"] = header_only.replace(
        CHECKSUM_PLACEHOLDER.encode(), checksum_value(header_only, 0).encode()
    ) + _data(data)
    return files


def _flip(content: bytes, offset: int) -> bytes:
    return content[:offset] + bytes([content[offset] ^ 0x5A]) + content[offset + 1 :]


def _replace_card(content: bytes, keyword: str, card: str, *, occurrence: int = 0) -> bytes:
    start = -1
    for _ in range(occurrence + 1):
        start = content.index(keyword.ljust(8).encode("ascii"), start + 1)
        while start % 80:
            start = content.index(keyword.ljust(8).encode("ascii"), start + 1)
    return content[:start] + _card(card) + content[start + 80 :]


def _wild_descriptor(content: bytes) -> bytes:
    """A variable-length array descriptor of the first row pointing far beyond the heap."""
    with fits.open(io.BytesIO(content)) as hdul:
        offset = hdul[1].fileinfo()["datLoc"] + hdul[1].columns.dtype.fields["SPEC"][1]
    return content[: offset + 4] + (10**9).to_bytes(4, "big") + content[offset + 8 :]


def _bad_files(image: bytes, image_plain: bytes, tables: dict[str, bytes]) -> dict[str, bytes]:
    hdul = fits.open(io.BytesIO(image))
    data_start = [hdu.fileinfo()["datLoc"] for hdu in hdul]
    header_start = [hdu.fileinfo()["hdrLoc"] for hdu in hdul]
    hdul.close()
    primary_header = image[: header_start[1]]
    heap_checksum = tables["bintable-heap-checksum"]
    long_header = _header(
        "SIMPLE  =                    T", "BITPIX  =                   16", "NAXIS   =                    0",
        *[f"HISTORY line {n}" for n in range(60)],
    )  # fmt: skip
    small = _header(
        "SIMPLE  =                    T", "BITPIX  =                   16", "NAXIS   =                    2",
        "NAXIS1  =                   10", "NAXIS2  =                   10",
    ) + _data(bytes(200))  # fmt: skip
    files = {
        "empty": b"",
        "not-fits-gif": b"GIF89a" + b"\0" * (FITS_BLOCK - 6),
        "not-fits-text": b"this is not a FITS file\n" * 200,
        "gzip-behind-fits": gzip.compress(image),
        "bzip2-behind-fits": bz2.compress(image),
        "zstd-magic": b"\x28\xb5\x2f\xfd" + bytes(FITS_BLOCK - 4),
        "cut-mid-block": image[:-100],
        "cut-at-block-in-data": image[:-FITS_BLOCK],
        "cut-in-header": long_header[:FITS_BLOCK],
        "cut-after-second-header": image[: data_start[2]],
        "cut-after-an-hdu-nextend": image[: header_start[2]],
        "no-end-card": image.replace(_card("END"), _card("COMMENT no end"), 1),
        "no-end-card-last-hdu": image[: header_start[2]]
        + image[header_start[2] :].replace(_card("END"), _card("COMMENT gone"), 1),
        "wrong-datasum": _flip(image, data_start[1] + 1000),
        "wrong-datasum-in-padding": _flip(image, data_start[1] + 60 * 40 * 4 + 10),
        "wrong-checksum": _replace_card(image, "BUNIT", "BUNIT   = 'Jy/beam '"),
        "wrong-datasum-value": _replace_card(image, "DATASUM", "DATASUM = '12345'", occurrence=1),
        "datasum-not-a-number": _replace_card(image, "DATASUM", "DATASUM = 'abc'", occurrence=1),
        "datasum-integer-card": _replace_card(image, "DATASUM", "DATASUM =                    7", occurrence=1),
        "checksum-garbled": _replace_card(image, "CHECKSUM", "CHECKSUM= 'abc", occurrence=1),
        "two-wrong-hdus": _flip(_flip(image, data_start[1] + 5), data_start[2] + 5),
        "wrong-datasum-and-cut": _flip(image, data_start[1] + 5)[:-FITS_BLOCK],
        "bitpix-12": _replace_card(small, "BITPIX", "BITPIX  =                   12"),
        "bitpix-text": _replace_card(small, "BITPIX", "BITPIX  = 'sixteen'"),
        "bitpix-missing": _replace_card(small, "BITPIX", "COMMENT   no bitpix"),
        "naxis-negative": _replace_card(small, "NAXIS1", "NAXIS1  =                   -5"),
        "naxis-float": _replace_card(small, "NAXIS1", "NAXIS1  =                  1.5"),
        "naxis-text": _replace_card(small, "NAXIS1", "NAXIS1  = 'ten'"),
        "naxis-unparsable": _replace_card(small, "NAXIS1", "NAXIS1  =                  abc"),
        "naxis-too-many": _replace_card(small, "NAXIS", "NAXIS   =                 1000"),
        "naxis2-missing": _replace_card(small, "NAXIS2", "COMMENT   no naxis2"),
        "simple-false": _replace_card(small, "SIMPLE", "SIMPLE  =                    F"),
        "nextend-text": _replace_card(image, "NEXTEND", "NEXTEND =                  abc"),
        "nextend-negative": _replace_card(image, "NEXTEND", "NEXTEND =                   -1"),
        "nextend-too-many": _replace_card(image, "NEXTEND", "NEXTEND =                    5"),
        "extra-zero-block": image + bytes(FITS_BLOCK),
        "extra-garbage-block": image + b"\xff" * FITS_BLOCK,
        "extra-primary": image + small,
        "binary-in-header": _replace_card(image, "OBSERVTN", "OBSERVTN= 'a\x01b'"),
        "tab-in-header-value": _replace_card(image_plain, "OBSERVTN", "OBSERVTN= 'a\tb'"),
        "bad-card-value": _replace_card(image_plain, "OBSERVTN", "OBSERVTN= 1.2.3"),
        "bad-card-keyword": _replace_card(image_plain, "OBSERVTN", "OBS@RVTN= 'x'"),
        "xtension-unknown": _replace_card(image_plain, "XTENSION", "XTENSION= 'FOOBAR  '"),
        "xtension-bintable-not-table": _replace_card(image_plain, "XTENSION", "XTENSION= 'BINTABLE'"),
        "xtension-number": _replace_card(image_plain, "XTENSION", "XTENSION=                    1"),
        "pcount-negative": _replace_card(image_plain, "PCOUNT", "PCOUNT  =                   -1"),
        "pcount-text": _replace_card(image_plain, "PCOUNT", "PCOUNT  = 'x'"),
        "gcount-zero": _replace_card(image_plain, "GCOUNT", "GCOUNT  =                    0"),
        "gcount-two": _replace_card(image_plain[: header_start[2]], "GCOUNT", "GCOUNT  =                    2")
        + image_plain[header_start[2] :],
        "primary-header-only": primary_header,
        "checksum-garbled-primary": _replace_card(image, "CHECKSUM", "CHECKSUM= 'abc"),
        "no-extend-card": _replace_card(image_plain, "EXTEND", "COMMENT   no extend"),
        "extend-false": _replace_card(image_plain, "EXTEND", "EXTEND  =                    F"),
        "extend-unparsable": _replace_card(image_plain, "EXTEND", "EXTEND  =                  abc"),
        "bintable-tform-bad": _replace_card(tables["bintable-plain"], "TFORM2", "TFORM2  = 'Z'"),
        "bintable-naxis1-short": _replace_card(tables["bintable-plain"], "NAXIS1", "NAXIS1  =                    4"),
        "bintable-heap-descriptor-wild": _wild_descriptor(tables["bintable-heap-plain"]),
        "bintable-heap-wrong-datasum": _flip(heap_checksum, len(heap_checksum) - FITS_BLOCK + 10),
    }
    return files


@pytest.fixture(scope="module")
def catalog() -> InstrumentCatalog:
    return load_instruments(INSTRUMENTS_DIR)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, catalog: InstrumentCatalog) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    image, image_plain = _image_file(True), _image_file(False)
    tables = _table_files()
    contents = {**tables, **_bad_files(image, image_plain, tables)}
    paths = {}
    for name, content in contents.items():
        path = root / f"{name}.fits"
        path.write_bytes(content)
        paths[name] = path
    simulator = Simulator(catalog, root / "sim", seed=7, night=NIGHT)
    for instrument, product in [
        ("HIRES", "raw"),
        ("KCWI", "raw"),
        ("KCWI", None),
        ("NIRCam", "uncal"),
        ("NIRCam", "cal"),
    ]:
        for checksum in (True, False):
            planned = simulator._plan(simulator.resolve(instrument, product), 200_000, checksum=checksum)
            written = simulator._write(planned, "rename", 0.0, 4 << 20, False, None)
            paths[f"sim-{instrument}-{product}-{'checksum' if checksum else 'plain'}"] = written.path
    for kind in ("truncated", "no-end-card", "wrong-datasum", "not-fits", "empty"):
        paths[f"sim-bad-{kind}"] = simulator.write_bad_file(kind, "HIRES").path
    return paths


def test_corpus_outcomes_equal_the_reference(corpus: dict[str, Path]) -> None:
    differences = {}
    for name, path in sorted(corpus.items()):
        expected, actual = _outcome(reference_verify, path), _outcome(verify_fits, path)
        if expected != actual:
            differences[name] = (expected, actual)
    assert differences == {}


def test_the_corpus_holds_sound_and_refused_files_of_every_kind(corpus: dict[str, Path]) -> None:
    outcomes = {name: _outcome(reference_verify, path)[0] for name, path in corpus.items()}
    assert outcomes["bintable-heap-checksum"] == "sound"
    assert outcomes["random-groups-checksum"] == "sound"
    assert outcomes["sim-HIRES-raw-checksum"] == "sound"
    assert outcomes["wrong-datasum"] == "invalid"
    assert outcomes["wrong-checksum"] == "invalid"
    assert sum(outcome == "invalid" for outcome in outcomes.values()) > 40


def test_the_sha256_is_of_every_byte_read(corpus: dict[str, Path]) -> None:
    for name in ("sim-HIRES-raw-checksum", "bintable-heap-checksum", "image-plain"):
        path = corpus[name]
        summary = verify_fits(path, buffer_size=3 * FITS_BLOCK + 4)  # a buffer that splits blocks and words
        assert summary.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), name
        assert summary == verify_fits(path)


def test_a_small_buffer_gives_the_same_verdicts(corpus: dict[str, Path]) -> None:
    for name in ("wrong-datasum", "wrong-datasum-in-padding", "two-wrong-hdus", "no-end-card", "bintable-heap-plain"):
        assert _outcome(lambda path: verify_fits(path, buffer_size=4 * 1000 + 2), corpus[name]) == _outcome(
            verify_fits, corpus[name]
        ), name


def test_datasum_equals_astropy_whatever_the_pieces() -> None:
    raw = np.random.default_rng(3).bytes(100_003)
    expected = int(fits.PrimaryHDU()._compute_checksum(np.frombuffer(raw, dtype=np.uint8)))
    for piece in (1, 3, 4, 4096, 65_537, len(raw)):
        datasum = DataSum()
        for start in range(0, len(raw), piece):
            datasum.update(raw[start : start + piece])
        assert datasum.value == expected, piece
