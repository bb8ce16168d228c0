"""Writing simulated FITS files as an instrument does: the header first, then the data in slabs, in constant memory.

Image data are made slab by slab (noise plus a few gaussian "stars") from generators seeded by the file and the
slab, so a file of hundreds of megabytes never sits in memory and the same seed gives the same bytes.  CHECKSUM and
DATASUM are computed in a first pass over the same slabs (:mod:`skyport.fits` holds the FITS checksum convention,
tested against astropy's ``add_checksum``), because the header that carries them is written before the data.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from astropy.io import fits as astropy_fits

from skyport.fits import CHECKSUM_PLACEHOLDER, DataSum, checksum_value, padded_size, padding
from skyport.instruments import SimulatedImage

# Rows are generated and written in slabs of about this size: the writer's whole memory.
SLAB_BYTES = 4 << 20
# Below this many pixels per plane the stars are drawn once per image and added to every plane (cubes, ramps).
_PLANE_STAR_IMAGE_LIMIT = 4 << 20

WriteMode = Literal["rename", "inplace"]

# dtype -> (big-endian storage dtype, BITPIX, BZERO for unsigned integers stored as signed, per the FITS standard)
_STORAGE: dict[str, tuple[str, int, int | None]] = {
    "uint8": (">u1", 8, None),
    "int16": (">i2", 16, None),
    "uint16": (">i2", 16, 1 << 15),
    "int32": (">i4", 32, None),
    "uint32": (">i4", 32, 1 << 31),
    "float32": (">f4", -32, None),
    "float64": (">f8", -64, None),
}
_LIMITS: dict[str, tuple[float, float]] = {
    "uint8": (0, 255),
    "int16": (-(1 << 15), (1 << 15) - 1),
    "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
}


def itemsize(dtype: str) -> int:
    return np.dtype(_STORAGE[dtype][0]).itemsize


@dataclass(frozen=True)
class Star:
    """A gaussian source: position as fractions of the image's last two axes, peak, width in pixels."""

    y: float
    x: float
    peak: float
    sigma: float


@dataclass(frozen=True)
class ImagePlan:
    image: SimulatedImage
    shape: tuple[int, ...]  # numpy order: the last axis is a row
    seed: tuple[int, ...]
    stars: tuple[Star, ...] = ()

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.image.dtype)


@dataclass(frozen=True)
class HduPlan:
    header: astropy_fits.Header  # structural cards and keywords; CHECKSUM/DATASUM are added when written
    image: ImagePlan | None = None


@dataclass(frozen=True)
class FilePlan:
    """Everything needed to write one file's bytes, decided before any byte is written."""

    hdus: tuple[HduPlan, ...]
    checksum: bool
    checksum_comment: str = "HDU checksum"
    drop_end_card: bool = False  # the "no END card" bad file

    def header_size(self) -> int:
        """Bytes of all the headers as they will be written (with CHECKSUM and DATASUM cards when asked)."""
        extra = 2 if self.checksum else 0
        return sum(padded_size((len(hdu.header) + extra + 1) * 80) for hdu in self.hdus)

    def size(self) -> int:
        """Bytes of the whole file."""
        data = sum(padded_size(hdu.image.data_bytes) for hdu in self.hdus if hdu.image is not None)
        return self.header_size() + data


def structural_header(image: ImagePlan | None, *, primary: bool, extname: str | None = None) -> astropy_fits.Header:
    """The mandatory cards of an HDU, in the order the FITS standard requires."""
    header = astropy_fits.Header()
    if primary:
        header["SIMPLE"] = (True, "conforms to FITS standard")
    else:
        header["XTENSION"] = ("IMAGE", "image extension")
    bitpix = 8 if image is None else _STORAGE[image.image.dtype][1]
    header["BITPIX"] = (bitpix, "array data type")
    shape = () if image is None else image.shape
    header["NAXIS"] = (len(shape), "number of array dimensions")
    for n, size in enumerate(reversed(shape), start=1):
        header[f"NAXIS{n}"] = size
    if primary:
        header["EXTEND"] = True
    else:
        header["PCOUNT"] = 0
        header["GCOUNT"] = 1
    if image is not None and _STORAGE[image.image.dtype][2] is not None:
        header["BZERO"] = (_STORAGE[image.image.dtype][2], "offset data range to that of unsigned integers")
        header["BSCALE"] = 1
    if extname:
        header["EXTNAME"] = (extname, "extension name")
    return header


# --- data ----------------------------------------------------------------------------------------------------


def image_slabs(plan: ImagePlan) -> Iterator[np.ndarray[Any, Any]]:
    """The image's stored bytes (big-endian, unsigned values offset), as arrays of whole rows."""
    shape = plan.shape
    width = shape[-1]
    rows = math.prod(shape[:-1])
    height = shape[-2] if len(shape) >= 2 else 1
    rows_per_slab = max(1, SLAB_BYTES // (width * itemsize(plan.image.dtype)))
    plane_stars = _plane_star_image(plan, height, width)
    for slab, first in enumerate(range(0, rows, rows_per_slab)):
        last = min(rows, first + rows_per_slab)
        rng = np.random.default_rng([*plan.seed, slab])
        values = _noise(plan.image, rng, (last - first, width))
        if plan.stars and plan.image.content in ("counts", "flux"):
            if plane_stars is not None:
                values += plane_stars[np.arange(first, last) % height]
            else:
                _add_star_windows(values, plan, first, height, width)
        yield _stored(values, plan.image.dtype)


def _noise(image: SimulatedImage, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray[Any, Any]:
    """Background and noise in physical units, as float32 (uniform noise: cheap, and nobody fits it)."""
    if image.content == "counts":
        values = rng.random(shape, dtype=np.float32)
        values *= 24.0
        values += 988.0  # a bias level with read noise
        return values
    if image.content == "flux":
        values = rng.random(shape, dtype=np.float32)
        values -= 0.5
        values *= 0.1
        values += 0.05
        return values
    if image.content == "error":
        values = rng.random(shape, dtype=np.float32)
        values *= 0.005
        values += 0.02
        return values
    flags = (rng.random(shape, dtype=np.float32) < 0.002).astype(np.float32)  # DO_NOT_USE, here and there
    return flags


def _star_scale(content: str) -> float:
    return 1.0 if content == "counts" else 1e-3


def _plane_star_image(plan: ImagePlan, height: int, width: int) -> np.ndarray[Any, Any] | None:
    if len(plan.shape) < 3 or height * width > _PLANE_STAR_IMAGE_LIMIT or not plan.stars:
        return None
    plane = np.zeros((height, width), dtype=np.float32)
    for star in plan.stars:
        _add_star(plane, star, 0, height, width, _star_scale(plan.image.content))
    return plane


def _add_star_windows(values: np.ndarray[Any, Any], plan: ImagePlan, first: int, height: int, width: int) -> None:
    scale = _star_scale(plan.image.content)
    for star in plan.stars:
        _add_star(values, star, first, height, width, scale)


def _add_star(values: np.ndarray[Any, Any], star: Star, first: int, height: int, width: int, scale: float) -> None:
    """Add one gaussian to the rows ``first .. first + len(values)`` of an image whose planes are ``height`` rows."""
    y0, x0 = star.y * (height - 1), star.x * (width - 1)
    radius = max(1, math.ceil(4 * star.sigma))
    x_lo, x_hi = max(0, math.floor(x0) - radius), min(width, math.floor(x0) + radius + 1)
    last = first + len(values)
    for plane_start in range(first - first % height, last, height):
        y_lo = max(first, plane_start + max(0, math.floor(y0) - radius))
        y_hi = min(last, plane_start + min(height, math.floor(y0) + radius + 1))
        if y_lo >= y_hi or x_lo >= x_hi:
            continue
        ys = np.arange(y_lo - plane_start, y_hi - plane_start, dtype=np.float32)[:, None] - y0
        xs = np.arange(x_lo, x_hi, dtype=np.float32)[None, :] - x0
        values[y_lo - first : y_hi - first, x_lo:x_hi] += (star.peak * scale) * np.exp(
            -(ys * ys + xs * xs) / (2 * star.sigma**2)
        )


def _stored(values: np.ndarray[Any, Any], dtype: str) -> np.ndarray[Any, Any]:
    storage, _, bzero = _STORAGE[dtype]
    if dtype.startswith("float"):
        return values.astype(storage)
    low, high = _LIMITS[dtype]
    np.clip(values, low, high, out=values)
    if bzero is None:
        return values.astype(storage)
    # Unsigned integers are stored as signed with BZERO = 2**(bits-1): flipping the top bit is that offset.
    stored: np.ndarray[Any, Any]
    if dtype == "uint16":
        stored = np.bitwise_xor(values.astype(np.uint16), np.uint16(bzero)).view(np.int16).astype(storage)
    else:
        stored = np.bitwise_xor(values.astype(np.uint32), np.uint32(bzero)).view(np.int32).astype(storage)
    return stored


# --- writing -----------------------------------------------------------------------------------------------


class WriteStopped(Exception):
    """The run was stopped while a file was being written."""


@dataclass
class HduPlacement:
    """Where an HDU's data landed in the file: bad-file makers corrupt or cut there."""

    data_offset: int
    data_size: int


@dataclass
class _Pacer:
    """Writes in chunks, pausing between them, as an instrument's disk writer does; checks for a stop."""

    stream: BinaryIO
    chunk_bytes: int
    chunk_delay: float
    stop: threading.Event | None
    written: int = 0
    _since_pause: int = field(default=0)

    def write(self, data: bytes | np.ndarray[Any, Any]) -> None:
        view = memoryview(data) if isinstance(data, bytes) else data.reshape(-1).view(np.uint8).data
        while view:
            room = self.chunk_bytes - self._since_pause
            part, view = view[:room], view[room:]
            self.stream.write(part)
            self.written += len(part)
            self._since_pause += len(part)
            if self._since_pause >= self.chunk_bytes:
                self._pause()

    def _pause(self) -> None:
        self._since_pause = 0
        if self.stop is not None and self.stop.is_set():
            raise WriteStopped
        if self.chunk_delay > 0:
            self.stream.flush()
            time.sleep(self.chunk_delay)


def hdu_header_bytes(plan: FilePlan, hdu: HduPlan) -> bytes:
    """The header as written: with CHECKSUM and DATASUM when the plan asks (this reads the data once)."""
    header = hdu.header.copy()
    if plan.checksum:
        datasum = DataSum()
        if hdu.image is not None:
            for slab in image_slabs(hdu.image):
                datasum.update(slab)
        header["CHECKSUM"] = (CHECKSUM_PLACEHOLDER, plan.checksum_comment)
        header["DATASUM"] = (str(datasum.value), plan.checksum_comment)
        header["CHECKSUM"] = checksum_value(header.tostring().encode("ascii"), datasum.value)
    text: str = header.tostring()
    return text.encode("ascii")


def write_fits(
    plan: FilePlan,
    stream: BinaryIO,
    *,
    chunk_bytes: int = SLAB_BYTES,
    chunk_delay: float = 0.0,
    hdu_delay: float = 0.0,
    stop: threading.Event | None = None,
) -> list[HduPlacement]:
    """Write the planned file to ``stream``; where each HDU's data went.

    ``hdu_delay``: seconds the writer pauses between two HDUs, the file flushed and valid FITS up to there (as an
    instrument that writes one detector's extension at a time does).
    """
    pacer = _Pacer(stream, max(2880, chunk_bytes), chunk_delay, stop)
    placements = []
    for index, hdu in enumerate(plan.hdus):
        if index and hdu_delay > 0:
            stream.flush()
            if stop is not None and stop.wait(hdu_delay):
                raise WriteStopped
            if stop is None:
                time.sleep(hdu_delay)
        header = hdu_header_bytes(plan, hdu)
        if plan.drop_end_card and index == 0:
            end = header.rfind(b"END" + b" " * 77, 0, len(header))
            header = header[:end] + b" " * 80 + header[end + 80 :]
        pacer.write(header)
        data_size = 0
        if hdu.image is not None:
            offset = pacer.written
            for slab in image_slabs(hdu.image):
                pacer.write(slab)
            data_size = hdu.image.data_bytes
            pacer.write(padding(data_size))
            placements.append(HduPlacement(offset, data_size))
        else:
            placements.append(HduPlacement(pacer.written, 0))
    return placements


def write_file(
    plan: FilePlan,
    path: Path,
    *,
    mode: WriteMode,
    chunk_bytes: int = SLAB_BYTES,
    chunk_delay: float = 0.0,
    hdu_delay: float = 0.0,
    fsync: bool = False,
    stop: threading.Event | None = None,
    before_rename: Callable[[Path, list[HduPlacement]], None] | None = None,
) -> list[HduPlacement]:
    """Write a planned file under ``path``: in place (the name exists from the first byte), or under a hidden
    temporary name in the same folder that is renamed to ``path`` when complete (never seen half-written).

    ``before_rename`` may change the finished temporary file (the bad-file makers cut or corrupt it there).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if mode == "inplace" else path.with_name(f".{path.name}.part")
    try:
        with open(target, "wb") as stream:
            placements = write_fits(
                plan, stream, chunk_bytes=chunk_bytes, chunk_delay=chunk_delay, hdu_delay=hdu_delay, stop=stop
            )
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
    except BaseException:
        if mode == "rename":
            target.unlink(missing_ok=True)
        raise
    if mode == "rename":
        if before_rename is not None:
            before_rename(target, placements)
        os.replace(target, path)
    return placements


def write_bytes(data: bytes, path: Path, *, fsync: bool = False) -> None:
    """Write raw bytes under a hidden temporary name and rename them into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    with open(temporary, "wb") as stream:
        stream.write(data)
        if fsync:
            stream.flush()
            os.fsync(stream.fileno())
    os.replace(temporary, path)
