"""FITS helpers for DEP: is the writer done, is the file sound, what does its header say, what is its sha256.

Three questions are asked of every file an instrument writes, from cheapest to dearest:

- :func:`looks_complete` (and :func:`probe_structure`, which says more): has the writer finished?  Reads only
  header blocks (a few kilobytes even for a 2 GB file) and checks that the last HDU's data end exactly where the
  file ends, and whether the file declares how many extensions it has.
- :func:`verify_fits`: is the file sound, and what is its sha256?  Reads the file once, front to back, through one
  small buffer: walks the HDUs from their headers, sums each HDU's data and verifies ``CHECKSUM``/``DATASUM`` where
  the writer put them, and hashes every byte on the way.  A bad file raises :class:`InvalidFile` with a reason a
  person can act on; memory stays the size of the buffer for a file of any size.
- :func:`sha256_file`: the checksum that travels with the file, in constant memory, for a file not verified.

It also holds the FITS checksum convention (ones' complement sum, ASCII encoding) in streaming form, for writers
that produce data in slabs and cannot give astropy the whole array (the night simulator).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
from astropy.io import fits as astropy_fits
from astropy.io.fits.file import _File as _AstropyFile
from astropy.io.fits.hdu.base import _BaseHDU
from astropy.io.fits.verify import VerifyError, VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

FITS_BLOCK = 2880
CARD_LENGTH = 80

# A header longer than this is not a header still being written but a file without an END card; 10,000 blocks
# (28.8 MB, over 350,000 cards) is far beyond any instrument's header, and it bounds the scan of a broken file.
MAX_HEADER_BLOCKS = 10_000

# astropy tells of card-format quibbles (VerifyWarning) and of an HDU read from its header alone ("File may have
# been truncated") through the warnings module; verify_fits judges both itself and says so in its own words. The
# filters are set once, here, and never swapped per call: warnings.catch_warnings replaces the process's filter list
# for the duration, which is not safe when files are evaluated in threads (the ingestor, the scrubber).
warnings.filterwarnings("ignore", category=VerifyWarning)
warnings.filterwarnings("ignore", message="File may have been truncated", category=AstropyUserWarning)

_END_CARD = b"END" + b" " * 77
_PRIMARY_START = b"SIMPLE  ="
_EXTENSION_START = b"XTENSION="
_NOT_HEADER_TEXT = re.compile(rb"[^\x20-\x7e]")

# Keywords that describe an HDU's layout rather than the observation: never merged from an extension into the
# summary header, where they would describe the wrong HDU.
_STRUCTURAL_KEYWORDS = frozenset(
    {
        "SIMPLE",
        "XTENSION",
        "BITPIX",
        "NAXIS",
        "EXTEND",
        "PCOUNT",
        "GCOUNT",
        "GROUPS",
        "TFIELDS",
        "EXTNAME",
        "EXTVER",
        "EXTLEVEL",
        "BZERO",
        "BSCALE",
        "BLANK",
        "THEAP",
        "CHECKSUM",
        "DATASUM",
        "END",
    }
)
_STRUCTURAL_PATTERN = re.compile(r"^(NAXIS\d+|T(TYPE|FORM|UNIT|NULL|SCAL|ZERO|DISP|DIM|BCOL)\d+)$")
_COMMENTARY_KEYWORDS = frozenset({"", "COMMENT", "HISTORY"})


class InvalidFile(Exception):
    """The file itself is bad (never retried by itself). ``str(exc)`` is a reason a person can act on."""


@dataclass(frozen=True)
class HduSummary:
    """One HDU as :func:`verify_fits` found it (``kind`` and ``shape`` as astropy would give them)."""

    index: int
    name: str
    kind: str  # "PrimaryHDU", "ImageHDU", "BinTableHDU", ...
    shape: tuple[int, ...]
    datasum_verified: bool  # True when the HDU carries DATASUM and it matched
    checksum_verified: bool  # True when the HDU carries CHECKSUM and it matched


@dataclass(frozen=True)
class FitsSummary:
    """What :func:`verify_fits` learned about a sound file.

    ``header`` is the primary header merged with the first extension's header where the primary lacks a keyword
    (JWST puts its science keywords in the primary header, many Keck files put some in the first extension);
    layout keywords (``NAXISn``, ``PCOUNT``, ``EXTNAME`` ...) are taken from the primary header only.
    """

    header: Mapping[str, Any]
    hdu_count: int
    size_bytes: int = 0
    hdus: tuple[HduSummary, ...] = field(default_factory=tuple)
    sha256: str = ""  # of the bytes read (lower-case hex), when verify_fits read them

    @property
    def checksum_verified(self) -> bool:
        """True when at least one HDU carried CHECKSUM or DATASUM and every one present matched."""
        return any(hdu.datasum_verified or hdu.checksum_verified for hdu in self.hdus)


# --- completeness and structure -----------------------------------------------------------------------


@dataclass(frozen=True)
class _HduLayout:
    index: int
    name: str
    header_offset: int
    data_offset: int
    data_size: int  # without the padding to a whole block
    end: int  # offset of the next HDU: data padded to a whole block
    header: Any  # the astropy Header
    header_bytes: bytes  # as written in the file


class _BadStructure(Exception):
    """The bytes do not (yet) form a whole FITS file; the message says why.

    ``final`` when no further writing can mend it (not FITS at all, an unparsable card in a finished header): a
    monitor need not wait for such a file, only report it.
    """

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


@dataclass(frozen=True)
class Structure:
    """What the header blocks of a file say about its writer (see :func:`probe_structure`)."""

    complete: bool  # every HDU the headers describe is there, and the file ends where the last one ends
    declared: bool  # complete, and the file says nothing more follows: NEXTEND met, or no extension allowed
    broken: str | None = None  # a fault no further writing can mend (the reason): report it, do not wait
    waiting_for: str | None = None  # why the file is not complete yet


# Compressed data where FITS was expected: the first bytes of each format.
_COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
)


def not_fits_reason(first_bytes: bytes) -> str:
    """Why a file that does not start with ``SIMPLE =`` is not FITS, naming compressed data when it is that."""
    for magic, kind in _COMPRESSED_MAGIC:
        if first_bytes.startswith(magic):
            return (
                f"not a FITS file: it holds {kind}-compressed data (compressed FITS is not configured for this "
                "instrument; the instrument must write plain FITS, or tile-compressed .fits.fz named by its pattern)"
            )
    return "not a FITS file: it does not start with the card SIMPLE = T"


def padded_size(size: int) -> int:
    """``size`` rounded up to a whole number of 2880-byte FITS blocks."""
    return -(-size // FITS_BLOCK) * FITS_BLOCK


def data_size_from_header(header: Mapping[str, Any]) -> int:
    """Bytes of data an HDU with this header holds, without padding (FITS standard 4.0, section 4.4.1).

    Raises :class:`ValueError` when a mandatory keyword is missing or not an integer.
    """

    def integer(keyword: str, default: int | None = None) -> int:
        value = header.get(keyword, default)
        if isinstance(value, bool) or not isinstance(value, int):
            if value is None:
                raise ValueError(f"mandatory keyword {keyword} is missing")
            raise ValueError(f"{keyword}={value!r} is not an integer")
        return value

    bitpix = integer("BITPIX")
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise ValueError(f"BITPIX={bitpix} is not one of 8, 16, 32, 64, -32, -64")
    naxis = integer("NAXIS")
    if not 0 <= naxis <= 999:
        raise ValueError(f"NAXIS={naxis} is outside 0..999")
    if naxis == 0:
        return 0
    axes = [integer(f"NAXIS{n}") for n in range(1, naxis + 1)]
    if any(axis < 0 for axis in axes):
        raise ValueError("an NAXISn keyword is negative")
    # Random groups (NAXIS1 = 0, GROUPS = T): NAXIS1 takes no part in the product.
    if axes[0] == 0 and header.get("GROUPS") is True:
        axes = axes[1:]
    pcount = integer("PCOUNT", 0)
    gcount = integer("GCOUNT", 1)
    return abs(bitpix) // 8 * gcount * (pcount + math.prod(axes))


def _read_header_bytes(stream: BinaryIO, offset: int, size: int, index: int) -> bytes:
    """The header starting at ``offset``, block by block up to and including the block with the END card."""
    stream.seek(offset)
    where = "primary header" if index == 0 else f"header of HDU {index}"
    unterminated = f"no END card in the {where}: the header is not terminated"
    blocks: list[bytes] = []
    while len(blocks) < MAX_HEADER_BLOCKS:
        block = stream.read(FITS_BLOCK)
        if len(block) < FITS_BLOCK:
            raise _BadStructure(f"{unterminated} (or the file is cut short in it)")
        if not blocks:
            start = _PRIMARY_START if index == 0 else _EXTENSION_START
            if not block.startswith(start):
                if index == 0:
                    raise _BadStructure(not_fits_reason(block), final=True)
                raise _BadStructure(
                    f"{size - offset} bytes after HDU {index - 1} are not an extension (no XTENSION card)", final=True
                )
        elif block.startswith(_EXTENSION_START) or _NOT_HEADER_TEXT.search(block):
            # Header cards are printable ASCII: binary bytes or the next extension mean the END card is missing.
            raise _BadStructure(
                f"{unterminated}: it runs into the data or the next HDU (or holds bytes that are not printable ASCII)",
                final=True,
            )
        blocks.append(block)
        if any(block[i : i + CARD_LENGTH] == _END_CARD for i in range(0, FITS_BLOCK, CARD_LENGTH)):
            return b"".join(blocks)
    raise _BadStructure(f"{unterminated} in its first {MAX_HEADER_BLOCKS} blocks", final=True)


def _walk_hdus(stream: BinaryIO, size: int) -> list[_HduLayout]:
    """Every HDU's place in the file, from its headers alone; raises :class:`_BadStructure` with the reason."""
    return list(_iter_hdus(stream, size))


def _iter_hdus(stream: Any, size: int) -> Iterator[_HduLayout]:
    """Each HDU's place in the file as its header is read; raises :class:`_BadStructure` with the reason.

    ``stream`` needs ``read`` and ``seek``: a file (seeking over the data), or the one-pass reader of
    :func:`verify_fits`, whose caller consumes each HDU's data before asking for the next HDU.
    """
    if size == 0:
        raise _BadStructure("the file is empty (0 bytes)")
    primary: Any = None
    count = 0
    offset = 0
    while offset < size:
        index = count
        header_bytes = _read_header_bytes(stream, offset, size, index)
        # A finished header whose layout cards astropy cannot parse (NAXIS1 = abc) is final: appending mends nothing.
        try:
            header = astropy_fits.Header.fromstring(header_bytes)
            name = _hdu_name(header, index)
            simple = header.get("SIMPLE") if index == 0 else True
        except (ValueError, VerifyError) as exc:
            raise _BadStructure(f"HDU {index}: its header cannot be parsed: {exc}", final=True) from None
        if simple is not True:
            raise _BadStructure("not a standard FITS file: SIMPLE is not T", final=True)
        try:
            data_size = data_size_from_header(header)
        except (ValueError, VerifyError) as exc:
            raise _BadStructure(f"HDU {index} ({name}): {exc}", final=True) from None
        data_offset = offset + len(header_bytes)
        end = data_offset + padded_size(data_size)
        if end > size:
            raise _BadStructure(
                f"the file is truncated: HDU {index} ({name}) needs {data_size} bytes of data "
                f"but the file ends {size - data_offset} bytes into them"
            )
        if primary is None:
            primary = header
        count += 1
        yield _HduLayout(index, name, offset, data_offset, data_size, end, header, header_bytes)
        offset = end
    # NEXTEND is not mandatory, but a writer that states it tells how many extensions must follow: a file cut
    # at an HDU boundary is otherwise a valid FITS file.
    expected = _nextend(primary)
    if expected is not None and count - 1 < expected:
        raise _BadStructure(
            f"the file is truncated: NEXTEND = {expected} but the file ends after {count - 1} extension(s)"
        )


def _nextend(header: Any) -> int | None:
    """The primary header's NEXTEND, None when absent; an unparsable or non-integer one is a final fault."""
    try:
        value = header.get("NEXTEND")
    except (ValueError, VerifyError) as exc:
        raise _BadStructure(f"the primary header's NEXTEND card cannot be parsed: {exc}", final=True) from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BadStructure(f"NEXTEND = {value!r} is not a number of extensions", final=True)
    return value


def _hdu_name(header: Mapping[str, Any], index: int) -> str:
    try:
        extname = header.get("EXTNAME")
    except (ValueError, VerifyError):
        extname = None
    if isinstance(extname, str) and extname.strip():
        return extname.strip()
    return "PRIMARY" if index == 0 else f"extension {index}"


def probe_structure(path: Path) -> Structure:
    """How far the writer of ``path`` has come, from its header blocks alone (cheap: run it on every change).

    ``complete`` as :func:`looks_complete` says; ``declared`` when the file also says that nothing more follows:
    the primary header has NEXTEND and that many extensions are there, or it allows no extension at all (EXTEND
    absent or F).  Without NEXTEND a file cut at an HDU boundary by a pausing writer is a valid FITS file, so only
    a declared file proves the writer finished.  ``broken`` names a fault that no further writing can mend.
    Raises :class:`FileNotFoundError` when the file is gone.
    """
    size = os.stat(path).st_size
    try:
        if size == 0:
            return Structure(False, False, waiting_for="the file is empty (0 bytes)")
        with open(path, "rb") as stream:
            start = stream.read(len(_PRIMARY_START))
            if not _PRIMARY_START.startswith(start[: len(_PRIMARY_START)]):
                return Structure(False, False, broken=not_fits_reason(start))
            if size % FITS_BLOCK:
                return Structure(False, False, waiting_for=f"its size, {size} bytes, is not a multiple of {FITS_BLOCK}")
            layouts = _walk_hdus(stream, size)
        primary = layouts[0]
        if len(layouts) == 1 and primary.data_size == 0 and _extend(primary.header):
            return Structure(False, False, waiting_for="only the primary header so far: the extensions it announces")
        nextend = _nextend(primary.header)
        declared = nextend == len(layouts) - 1 if nextend is not None else not _extend(primary.header)
        return Structure(True, declared)
    except _BadStructure as exc:
        if exc.final:
            return Structure(False, False, broken=str(exc))
        return Structure(False, False, waiting_for=str(exc))


def _extend(header: Any) -> bool:
    try:
        return header.get("EXTEND") is True
    except (ValueError, VerifyError):
        return True  # cannot tell: extensions may follow


def looks_complete(path: Path) -> bool:
    """Whether the writer is done with ``path``: a cheap test meant to be run on every file-system event.

    True when the size is a non-zero multiple of 2880, the primary header has an END card, and walking the HDU
    headers (reading header blocks only, the data sizes computed from BITPIX, NAXISn, PCOUNT and GCOUNT) ends
    exactly at the end of the file, with as many extensions as NEXTEND says when the primary header has it.  A
    primary header without data, announcing extensions (EXTEND = T), and nothing after it is not complete either.

    A file being written, or a truncated one, is not complete.  But a file cut exactly at an HDU boundary is a
    valid FITS file: without NEXTEND the bytes cannot tell it from a finished one, so a monitor also waits for the
    size to stay stable.  Never raises for a missing file or a directory (False); other OS errors (such as a
    permission error) are raised.
    """
    try:
        return probe_structure(path).complete
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False


# --- full verification, in one pass ---------------------------------------------------------------------
#
# The file is read once, front to back, through one reused buffer: every byte goes through sha256, each HDU's
# data (with their padding, as astropy counts them) through the DATASUM accumulator, and each header is parsed
# from its own blocks.  Nothing is memory-mapped, so the resident set stays the size of the buffer whatever the
# size of the file (a memory-mapped 2 GB file counted 2 GB resident once its pages were touched).
#
# The verdicts and reasons are those of the astropy-based verification this replaces (fits.open with memmap,
# then verify_datasum and verify_checksum on every HDU): astropy still builds each HDU object, from its header
# alone, so that the headers it would refuse, the HDU types it would pick and the checksum conventions it
# follows stay the same; tests/unit/skyport/test_fits_streaming.py keeps that verification as the reference and
# compares the two over a corpus of good and bad files.

# Big enough that a read costs far less than the hashing of its bytes, small enough to be nothing resident.
DEFAULT_BUFFER_BYTES = 4 << 20

# The keyword arguments fits.open passed to each HDU it read (uint as fits.open defaults it).
_ASTROPY_OPEN_KWARGS: dict[str, Any] = {
    "do_not_scale_image_data": True,
    "disable_image_compression": True,  # verify tile-compressed HDUs as stored, never decompress them
    "checksum": False,
    "uint": astropy_fits.conf.enable_uint,
}


class _OnePassReader:
    """The file read once, front to back, through one reused buffer; every byte read goes through sha256.

    ``read`` and ``seek`` (forward only) are what :func:`_iter_hdus` needs to read the headers; ``consume``
    streams the data between them through a :class:`DataSum`.
    """

    def __init__(self, stream: io.RawIOBase, buffer_size: int) -> None:
        self._stream = stream
        self._view = memoryview(bytearray(buffer_size))
        self._start = 0  # next unread byte in the buffer
        self._stop = 0  # bytes in the buffer
        self.position = 0  # the file offset of the next unread byte
        self.digest = hashlib.sha256()
        self.size = 0  # bytes read from the file (all of them hashed)

    def _fill(self) -> bool:
        count = self._stream.readinto(self._view)
        if not count:
            return False
        self.digest.update(self._view[:count])
        self.size += count
        self._start, self._stop = 0, count
        return True

    def consume(self, count: int, datasum: DataSum | None = None) -> int:
        """Pass ``count`` bytes (fewer at the end of the file), through ``datasum`` when given; returns how many."""
        done = 0
        while done < count:
            if self._start == self._stop and not self._fill():
                break
            take = min(count - done, self._stop - self._start)
            if datasum is not None:
                datasum.update(self._view[self._start : self._start + take])
            self._start += take
            done += take
        self.position += done
        return done

    def peek(self, count: int) -> bytes:
        """Up to ``count`` bytes from the start of the buffer, left unread (the first bytes of the file)."""
        if self._start == self._stop:
            self._fill()
        return bytes(self._view[self._start : min(self._start + count, self._stop)])

    def read(self, count: int) -> bytes:
        """The next ``count`` bytes (fewer at the end of the file): for header blocks, which are small."""
        pieces: list[bytes] = []
        wanted = count
        while wanted:
            if self._start == self._stop and not self._fill():
                break
            take = min(wanted, self._stop - self._start)
            pieces.append(bytes(self._view[self._start : self._start + take]))
            self._start += take
            wanted -= take
        data = b"".join(pieces)
        self.position += len(data)
        return data

    def seek(self, offset: int) -> None:
        if offset < self.position:
            raise ValueError(f"the one-pass reader cannot go back from {self.position} to {offset}")
        self.consume(offset - self.position)

    def drain(self) -> None:
        """Read (and hash) whatever is left: bytes the file gained after its size was taken."""
        while self.consume(len(self._view)):
            pass


def verify_fits(path: Path, *, buffer_size: int = DEFAULT_BUFFER_BYTES) -> FitsSummary:
    """Verify ``path`` as a whole FITS file in one pass, and hash it; raise :class:`InvalidFile` if it is bad.

    Checks, in order: not empty, starts as FITS, a whole number of 2880-byte blocks, every header terminated by an
    END card, every HDU's data present (not truncated) and nothing after the last one, NEXTEND met, every header
    one astropy accepts, and ``DATASUM`` and ``CHECKSUM`` verified in every HDU that carries them.  The summary
    holds the sha256 and size of every byte read, so a caller needs no second read to hash the file; a file that
    changed while it was read shows in ``size_bytes`` (the bytes read) differing from the size it expects.  Memory
    is one buffer of ``buffer_size`` bytes whatever the size of the file.  A missing file raises
    :class:`FileNotFoundError` (that is not a fault of the file's content).
    """
    size = os.stat(path).st_size
    with open(path, "rb", buffering=0) as stream:
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(stream.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger read-ahead
        # No bigger than the file: a 4 MB buffer zeroed and faulted in costs more than reading a 1 MB file.
        reader = _OnePassReader(stream, max(FITS_BLOCK, min(buffer_size, size)))
        if size == 0:
            raise InvalidFile("the file is empty (0 bytes)")
        start = reader.peek(len(_PRIMARY_START))
        if start != _PRIMARY_START:
            raise InvalidFile(not_fits_reason(start))
        if size % FITS_BLOCK:
            raise InvalidFile(
                f"the file is truncated or badly padded: its size, {size} bytes, is not a multiple of {FITS_BLOCK}"
            )
        layouts: list[_HduLayout] = []
        checks: list[_HduCheck] = []
        astropy_stop: _AstropyStop | None = None
        try:
            for layout in _iter_hdus(reader, size):
                layouts.append(layout)
                datasum = DataSum()
                # The data as astropy sums them: with their padding, to the end of the HDU's last block.
                if reader.consume(layout.end - layout.data_offset, datasum) < layout.end - layout.data_offset:
                    raise InvalidFile(f"the file is truncated: it ended at {reader.position} bytes as it was read")
                if astropy_stop is None:
                    try:
                        checks.append(_HduCheck(layout, _astropy_hdu(layout), datasum.value))
                    except _AstropyStop as stop:
                        astropy_stop = stop
                    if len(checks) == 2:
                        _set_extend(checks[0].hdu)
        except _BadStructure as exc:
            raise InvalidFile(str(exc)) from None
        reader.drain()
    if astropy_stop is not None:
        if astropy_stop.message is not None:
            raise InvalidFile(f"astropy cannot read the file: {astropy_stop.message}")
        raise InvalidFile(f"astropy finds {len(checks)} HDUs where the headers describe {len(layouts)}")
    problems: list[str] = []
    hdus = [check.verify(problems) for check in checks]
    if problems:
        raise InvalidFile("; ".join(problems))
    merged = _merged_header([check.hdu.header for check in checks[:2]], layouts)
    return FitsSummary(
        header=MappingProxyType(merged),
        hdu_count=len(hdus),
        size_bytes=reader.size,
        hdus=tuple(hdus),
        sha256=reader.digest.hexdigest(),
    )


class _AstropyStop(Exception):
    """fits.open would have stopped before this HDU (``message`` None) or refused the file (``message``)."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


def _astropy_hdu(layout: _HduLayout) -> Any:
    """The HDU object fits.open makes of this header, built from the header alone (the data are never read).

    fits.open stops at an HDU whose header it cannot take (a ValueError or VerifyError: the HDUs before it are all
    it finds), and refuses the file when that is the primary HDU or when reading raises an OSError.
    """
    try:
        hdu = _BaseHDU.readfrom(_AstropyFile(io.BytesIO(layout.header_bytes)), **_ASTROPY_OPEN_KWARGS)
        if layout.index == 0 and isinstance(hdu, astropy_fits.PrimaryHDU):
            # fits.open looks at the primary EXTEND card as soon as it has the primary HDU.
            header = hdu.header
            if "EXTEND" in header:
                _ = header["EXTEND"]  # parsed for its error only
    except (ValueError, VerifyError):
        if layout.index == 0:
            raise _AstropyStop("Empty or corrupt FITS file") from None
        raise _AstropyStop(None) from None
    except EOFError:
        raise _AstropyStop(None) from None
    except OSError as exc:
        raise _AstropyStop(str(exc)) from None
    return hdu


def _set_extend(primary: Any) -> None:
    """As fits.open does once it finds an extension: the primary header says EXTEND = T (in the summary too)."""
    if not isinstance(primary, astropy_fits.PrimaryHDU):
        return
    header = primary.header
    if "EXTEND" in header:
        if not header["EXTEND"]:
            header["EXTEND"] = True
    elif header["NAXIS"] == 0:
        header.set("EXTEND", True, after="NAXIS")
    else:
        header.set("EXTEND", True, after=f"NAXIS{header['NAXIS']}")


@dataclass
class _HduCheck:
    """One HDU's header as astropy took it and its data sum as read: checked once the whole file is read."""

    layout: _HduLayout
    hdu: Any
    datasum: int

    def verify(self, problems: list[str]) -> HduSummary:
        layout, hdu = self.layout, self.hdu
        where = f"HDU {layout.index} ({layout.name})"
        header = hdu.header
        datasum_ok = checksum_ok = False
        try:
            if "DATASUM" in header:
                if self.datasum != int(header["DATASUM"]):
                    problems.append(f"{where}: DATASUM does not match the data (the data are corrupt or were changed)")
                else:
                    datasum_ok = True
            if "CHECKSUM" in header and (datasum_ok or "DATASUM" not in header):
                if self._checksum_ok(datasum_ok):
                    checksum_ok = True
                else:
                    problems.append(f"{where}: CHECKSUM does not match the header and data (the HDU is corrupt)")
            shape = _data_shape(hdu)
        except (OSError, ValueError, TypeError, KeyError, VerifyError) as exc:
            problems.append(f"{where}: cannot be read: {exc}")
            shape = ()
        return HduSummary(layout.index, layout.name, type(hdu).__name__, shape, datasum_ok, checksum_ok)

    def _checksum_ok(self, datasum_ok: bool) -> bool:
        """CHECKSUM on the header bytes as written and the data; else as astropy checks it.

        By the FITS standard the header bytes in the file and the data sum to all ones.  astropy instead sums the
        header as it re-serialises it (which differs from the bytes written when it reformats a non-standard card)
        and, without DATASUM, takes the data sum as 0; a file written by that convention still passes.
        """
        if datasum_ok:
            header_sum = DataSum()
            header_sum.update(self.layout.header_bytes)
            if _fold(header_sum.value + self.datasum) == 0xFFFFFFFF:
                return True
        try:
            datasum = self.datasum if "DATASUM" in self.hdu.header else 0
            return bool(self.hdu._calculate_checksum(datasum) == self.hdu.header["CHECKSUM"])
        except (ValueError, VerifyError):
            return False


def _data_shape(hdu: Any) -> tuple[int, ...]:
    """The shape astropy gives ``hdu.data``, from the header; a table's columns are parsed as reading them would."""
    header = hdu.header
    if isinstance(hdu, astropy_fits.GroupsHDU):
        return (int(header["GCOUNT"]),) if header.get("NAXIS", 0) > 0 else ()
    if isinstance(hdu, (astropy_fits.BinTableHDU, astropy_fits.TableHDU)):
        _ = hdu.columns.dtype  # parsed for its errors: a bad TFORM, a missing TFIELDS
        return (int(header["NAXIS2"]),) if hdu.size else ()
    if isinstance(hdu, (astropy_fits.PrimaryHDU, astropy_fits.ImageHDU)):
        naxis = header.get("NAXIS", 0)
        axes = tuple(int(header[f"NAXIS{n}"]) for n in range(naxis, 0, -1))
        return axes if naxis and all(axes) else ()
    return (hdu.size,) if hdu.size else ()  # NonstandardExtHDU and the like: the raw bytes


def read_header(path: Path) -> Mapping[str, Any]:
    """The summary header :func:`verify_fits` gives, read from the header blocks alone.

    For a file whose bytes are already proven sound (its sha256 matches one computed after ``verify_fits``):
    the ingestor checks the header against the instrument rules without reading the data again.
    """
    size = os.stat(path).st_size
    with open(path, "rb") as stream:
        try:
            layouts = _walk_hdus(stream, size)
        except _BadStructure as exc:
            raise InvalidFile(str(exc)) from None
    return MappingProxyType(_merged_header([layout.header for layout in layouts], layouts))


def _merged_header(headers: Any, layouts: list[_HduLayout]) -> dict[str, Any]:
    merged = _header_values(headers[0], layouts[0].header_bytes)
    if len(headers) > 1:
        for keyword, value in _header_values(headers[1], layouts[1].header_bytes).items():
            if keyword not in merged and keyword not in _STRUCTURAL_KEYWORDS and not _STRUCTURAL_PATTERN.match(keyword):
                merged[keyword] = value
    return merged


def _header_values(header: Any, header_bytes: bytes) -> dict[str, Any]:
    """Keyword -> value, commentary cards left out, undefined values as None, unparsable values as raw text."""
    values: dict[str, Any] = {}
    for card in header.cards:
        keyword = card.keyword
        if keyword in _COMMENTARY_KEYWORDS or keyword in values:
            continue
        try:
            value = card.value
        except (VerifyError, ValueError):
            # Keep the text as written, so the keyword rules report "EXPTIME='abc' is not a number" rather than
            # "missing required keyword EXPTIME".
            value = _raw_value(header_bytes, keyword)
        if isinstance(value, astropy_fits.card.Undefined):
            value = None
        elif isinstance(value, np.generic):
            value = value.item()
        values[keyword] = value
    return values


def _raw_value(header_bytes: bytes, keyword: str) -> str:
    """The value text of a keyword's card as written (astropy may refuse to parse it, or 'fix' it)."""
    name = keyword.encode("ascii", "replace").ljust(8)
    for start in range(0, len(header_bytes), CARD_LENGTH):
        card = header_bytes[start : start + CARD_LENGTH]
        if card[:8] == name:
            text = card[10:].decode("ascii", "replace")
            return text.split("/", 1)[0].strip().strip("'").strip()
    return ""


# --- sha256 ---------------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> tuple[str, int]:
    """The sha256 (lower-case hex) and size of a file, read in chunks: constant memory for any size.

    Synchronous; async callers run it in a thread (``asyncio.to_thread``).
    """
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(view):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


# --- the FITS checksum convention, streaming ----------------------------------------------------------------
#
# astropy's ``add_checksum`` needs the HDU's whole data array in memory.  A writer that produces hundreds of
# megabytes slab by slab computes the same values here (FITS standard 4.0, appendix J): DATASUM is the 32-bit
# ones' complement sum of the data as big-endian words, CHECKSUM the ASCII encoding of the complement of the sum
# of header and data.  The unit tests check these against astropy.

_CHECKSUM_EXCLUDED = frozenset({0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F, 0x40, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x60})
CHECKSUM_PLACEHOLDER = "0" * 16


def _fold(total: int) -> int:
    while high := total >> 32:
        total = (total & 0xFFFFFFFF) + high
    return total


class DataSum:
    """The FITS DATASUM of bytes given in any number of pieces (of any length)."""

    def __init__(self) -> None:
        self._sum = 0
        self._carry = b""  # the bytes of a 32-bit word split between two pieces

    def update(self, piece: bytes | bytearray | memoryview | np.ndarray[Any, Any]) -> None:
        raw = np.frombuffer(piece, dtype=np.uint8) if not isinstance(piece, np.ndarray) else piece.view(np.uint8)
        raw = raw.reshape(-1)
        if self._carry:
            need = 4 - len(self._carry)
            head, raw = raw[:need].tobytes(), raw[need:]
            self._carry += head
            if len(self._carry) < 4:
                return
            self._sum = _fold(self._sum + int.from_bytes(self._carry, "big"))
            self._carry = b""
        whole = len(raw) // 4 * 4
        if whole:
            # A uint64 sum of uint32 words cannot overflow below 2**32 words (16 GiB): slabs are far smaller.
            self._sum = _fold(self._sum + int(raw[:whole].view(">u4").sum(dtype=np.uint64)))
        self._carry = raw[whole:].tobytes()

    @property
    def value(self) -> int:
        """The sum so far, the pending bytes of a partial word padded with zeros (as FITS padding does)."""
        if self._carry:
            return _fold(self._sum + int.from_bytes(self._carry.ljust(4, b"\0"), "big"))
        return self._sum


def _encode_byte(byte: int) -> list[int]:
    quotient, remainder = divmod(byte, 4)
    chars = [quotient + remainder + 0x30, quotient + 0x30, quotient + 0x30, quotient + 0x30]
    changed = True
    while changed:  # move away from punctuation, keeping the pair sums (and so the checksum) unchanged
        changed = False
        for j in (0, 2):
            if chars[j] in _CHECKSUM_EXCLUDED or chars[j + 1] in _CHECKSUM_EXCLUDED:
                chars[j] += 1
                chars[j + 1] -= 1
                changed = True
    return chars


def encode_checksum(value: int) -> str:
    """The 16-character ASCII encoding of a 32-bit value used for the CHECKSUM keyword."""
    encoded = [0] * 16
    for i in range(4):
        byte = (value >> (8 * (3 - i))) & 0xFF
        for j, char in enumerate(_encode_byte(byte)):
            encoded[4 * j + i] = char
    rotated = [encoded[(i + 15) % 16] for i in range(16)]
    return bytes(rotated).decode("ascii")


def checksum_value(header_bytes: bytes, datasum: int) -> str:
    """The CHECKSUM value for an HDU whose header (``CHECKSUM`` set to 16 zeros) and data sum are given."""
    header_sum = DataSum()
    header_sum.update(header_bytes)
    total = _fold(header_sum.value + datasum)
    return encode_checksum(~total & 0xFFFFFFFF)


def padding(size: int) -> bytes:
    """The zero bytes that pad ``size`` bytes of data to a whole number of 2880-byte blocks."""
    return b"\0" * (padded_size(size) - size)
