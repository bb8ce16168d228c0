"""The night simulator: observations for several instruments and programs, written as FITS files into watched folders.

Each instrument observes in turn through a simulated night (its own clock from the evening of ``night`` at its
mission's site, seven hours after the night's boundary: 19:00 in Hawaii for KECK; exposures and overheads drawn
from the seed); each observation is one raw file, and pipeline products (KCWI quick-look cubes,
JWST ``_cal`` files) follow the raw file they are made from, with its header.  Files land where the instrument
configuration's product folders say, written in place in chunks or under a hidden name and renamed.  The same seed,
night and sequence of calls give the same headers, archive IDs and bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from astropy.coordinates import SkyCoord

from skyport.fits import FITS_BLOCK, InvalidFile, padded_size, read_header
from skyport.instruments import Evaluation, Instrument, InstrumentCatalog, KeywordType, ProductKind, ProductMatch
from skyport.instruments.evaluation import check_keyword
from skyport.simulator.headers import FORMATTER, SimulationError, Target, format_datetime, format_time, header_values
from skyport.simulator.writer import (
    FilePlan,
    HduPlacement,
    HduPlan,
    ImagePlan,
    Star,
    WriteMode,
    itemsize,
    structural_header,
    write_bytes,
    write_file,
)

DEFAULT_SIZE = 1_000_000
# Files from this size up are written in place in chunks when the instrument's write mode is "auto".
INPLACE_FROM_BYTES = 8 << 20
_TARGETS = (
    ("M31", "00h42m44.3s +41d16m09s"),
    ("NGC 1300", "03h19m41.1s -19d24m41s"),
    ("Orion Bar", "05h35m20.1s -05d25m00s"),
    ("SMACS 0723", "07h23m19.5s -73d27m15.6s"),
    ("M87", "12h30m49.42s +12d23m28.0s"),
    ("GN-z11", "12h36m25.46s +62d14m31.4s"),
    ("M51", "13h29m52.7s +47d11m43s"),
    ("WASP-39", "14h29m18.4s -03d26m40s"),
    ("Kepler-22", "19h16m52.19s +47d53m03.9s"),
    ("HD 189733", "20h00m43.71s +22d42m39.1s"),
    ("TRAPPIST-1", "23h06m29.28s -05d02m28.6s"),
    ("Abell 2744", "00h14m21.2s -30d23m50s"),
)


class BadKind(StrEnum):
    """Bad files, as a broken instrument or a broken disk makes them."""

    TRUNCATED = "truncated"  # the data stop half-way (looks_complete stays False: the monitor must time out)
    NO_END_CARD = "no-end-card"  # the primary header is never terminated (looks_complete stays False)
    WRONG_DATASUM = "wrong-datasum"  # a data byte changed after DATASUM was computed
    MISSING_KEYWORD = "missing-keyword"  # a required keyword is not in the header
    OUT_OF_RANGE = "out-of-range"  # a keyword's value is outside its rule's range
    NOT_FITS = "not-fits"  # text under a .fits name
    EMPTY = "empty"  # zero bytes


@dataclass(frozen=True)
class SimulatedFile:
    """One file the simulator wrote, and what DEP should make of it."""

    path: Path
    relative_path: str  # to the root: what the monitor's catalog.match() sees
    mission: str
    instrument: str
    product: str
    level: str
    archive_id: str | None  # for a bad file: the one it was meant to have (None for non-FITS and empty files)
    propid: str | None
    obset: str | None
    observed_at: datetime | None
    size_bytes: int
    mode: WriteMode
    checksum: bool  # CHECKSUM/DATASUM written
    started_at: datetime  # wall clock, UTC: the first byte
    closed_at: datetime  # wall clock, UTC: complete under its final name
    bad: BadKind | None = None
    expected_reason: str | None = None  # a phrase of the reason verify_fits or evaluate gives for a bad file
    evaluation: Evaluation | None = field(default=None, repr=False)  # what evaluate() gives for a good file

    @property
    def write_seconds(self) -> float:
        return (self.closed_at - self.started_at).total_seconds()


@dataclass
class _Observation:
    instrument: Instrument
    number: int
    context: dict[str, Any]
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)  # product name -> header values written
    awaiting: set[str] = field(default_factory=set)  # pipeline products not written yet


@dataclass
class _Planned:
    """One file decided: its header values and layout, and what DEP should make of it."""

    match: ProductMatch
    number: int  # the file's number in this run: seeds its data
    relative_path: str
    values: dict[str, Any]  # primary header keyword -> value
    shape: tuple[int, ...]
    stars: tuple[Star, ...]
    plan: FilePlan | None  # None: raw bytes (non-FITS, empty)
    meant: Evaluation  # what evaluate() gives for the good file
    raw_bytes: bytes = b""
    bad: BadKind | None = None
    expected_reason: str | None = None
    damage: Literal["truncate", "flip"] | None = None


_EVENING = timedelta(hours=7)
"""From a night's boundary to its first exposure: 19:00 local at a site whose nights run noon to noon."""


# A restarted night's first exposure starts this long after the newest file's observation.
_RESUME_GAP = timedelta(minutes=2)
# Observations skipped, at most, because their file name is taken, before the simulator gives up.
_MAX_TAKEN_NAMES = 10_000


@dataclass
class _ObsetState:
    obset: int
    exposures_left: int
    exposure: int = 0


class Simulator:
    """Writes a seeded simulated night of FITS files under ``root`` (the monitor's watch root).

    ``seed`` and ``night`` (the observing night, :mod:`skyport.nights`; default tonight at each mission's site) decide
    everything: observation times,
    programs, targets, header values, file names and data bytes.  ``programs`` maps a mission to the programs
    observed (default: each ``mission.toml``'s ``[simulate] programs``).  ``checksum_fraction`` of the files of
    instruments that write checksums get CHECKSUM and DATASUM.

    Not thread-safe: plan and write from one thread or one event loop (``run`` writes in worker threads itself).
    """

    def __init__(
        self,
        catalog: InstrumentCatalog,
        root: Path,
        *,
        seed: int = 0,
        night: date | None = None,
        programs: Mapping[str, Sequence[str]] | None = None,
        checksum_fraction: float = 0.9,
    ) -> None:
        self.catalog = catalog
        self.root = Path(root)
        self.seed = seed
        self.night = night
        """The night asked for; None: tonight at each mission's site (:meth:`night_of`)."""
        now = datetime.now(UTC)
        self._nights = {name: night or m.night.tonight(now) for name, m in catalog.missions.items()}
        self.checksum_fraction = checksum_fraction
        self.programs: dict[str, tuple[str, ...]] = {}
        for mission in catalog.missions.values():
            chosen = (programs or {}).get(mission.name) or mission.simulate.programs
            self.programs[mission.name] = tuple(chosen)
        coordinates = SkyCoord([text for _, text in _TARGETS], frame="icrs")
        self.targets = tuple(
            Target(name, round(float(c.ra.deg), 6), round(float(c.dec.deg), 6))
            for (name, _), c in zip(_TARGETS, coordinates, strict=True)
        )
        self._file_number = 0
        self._clocks: dict[str, datetime] = {}
        self._observations: dict[str, int] = {}
        self._frames: dict[str, int] = {}
        self._obsets: dict[tuple[str, str], _ObsetState] = {}
        self._awaiting: dict[str, deque[_Observation]] = {}

    def night_of(self, mission: str) -> date:
        """The observing night simulated for ``mission`` (skyport.nights: named by its local start date)."""
        return self._nights[self.catalog.mission(mission).name]

    # --- what can be simulated ---------------------------------------------------------------------------

    def products(self) -> list[ProductMatch]:
        """Every (instrument, product) the configuration tells the simulator how to write."""
        return [match for match in self.catalog.products() if match.product.simulate is not None]

    def resolve(self, instrument: Instrument | str | None, product: ProductKind | str | None) -> ProductMatch:
        """An (instrument, product) from objects or names: ``"HIRES"``, ``"KECK/HIRES"``; product by name."""
        candidates = self.products()
        if instrument is not None:
            if isinstance(instrument, str):
                mission, _, name = instrument.rpartition("/")
                found = [
                    m.instrument
                    for m in candidates
                    if m.instrument.name.upper() == name.upper()
                    and (not mission or m.instrument.mission.upper() == mission.upper())
                ]
                if not found:
                    known = sorted({f"{m.instrument.mission}/{m.instrument.name}" for m in candidates})
                    raise KeyError(f"no simulated instrument {instrument!r} (known: {', '.join(known)})")
                instrument = found[0]
            candidates = [m for m in candidates if m.instrument == instrument]
        if product is not None:
            name = product if isinstance(product, str) else product.name
            candidates = [m for m in candidates if m.product.name == name]
        if not candidates:
            raise KeyError(f"nothing to simulate for instrument {instrument!r} and product {product!r}")
        return candidates[0]

    # --- observations ------------------------------------------------------------------------------------------

    def _random(self, *parts: object) -> random.Random:
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    def _observation(self, match: ProductMatch) -> _Observation:
        instrument, product = match.instrument, match.product
        key = f"{instrument.mission}/{instrument.name}"
        assert product.simulate is not None
        if product.simulate.derived_from is not None:
            waiting = self._awaiting.get(key, deque())
            for observation in waiting:
                if product.name in observation.awaiting:
                    observation.awaiting.discard(product.name)
                    if not observation.awaiting:
                        waiting.remove(observation)
                    return observation
        observation = self._new_observation(instrument)
        pipeline = {
            p.name
            for p in instrument.products
            if p.simulate is not None and p.simulate.derived_from == product.name and p.name != product.name
        }
        if pipeline:
            observation.awaiting = pipeline
            waiting = self._awaiting.setdefault(key, deque(maxlen=1000))
            waiting.append(observation)
        return observation

    def _followed(self, match: ProductMatch) -> ProductMatch:
        """A pipeline product if a raw file awaits it, else the raw product it is made from: in a run, pipeline
        products follow raw files, as at the telescope."""
        simulate = match.product.simulate
        if simulate is None or simulate.derived_from is None:
            return match
        key = f"{match.instrument.mission}/{match.instrument.name}"
        if any(match.product.name in o.awaiting for o in self._awaiting.get(key, ())):
            return match
        return ProductMatch(match.instrument, match.instrument.product(simulate.derived_from))

    def _new_observation(self, instrument: Instrument) -> _Observation:
        key = f"{instrument.mission}/{instrument.name}"
        number = self._observations.get(key, 0) + 1
        self._observations[key] = number
        draw = self._random(key, "observation", number)
        if key not in self._clocks:
            frameno, last_observed = self._resume(instrument)
            self._frames[key] = max(self._frames.get(key, 0), frameno)
            night_begins, _ = self.catalog.mission(instrument.mission).night.span(self.night_of(instrument.mission))
            start = night_begins + _EVENING
            self._clocks[key] = start + timedelta(seconds=round(draw.uniform(0, 900), 2))
            if last_observed is not None and last_observed + _RESUME_GAP > self._clocks[key]:
                self._clocks[key] = last_observed + _RESUME_GAP  # the night goes on where the files stop
        observed_at = self._clocks[key]

        programs = self.programs.get(instrument.mission, ())
        if not programs:
            raise SimulationError(f"no programs to observe for {instrument.mission}: give them in [simulate] programs")
        propid = draw.choice(programs)
        intent = "calibration" if draw.random() < 0.15 else "science"
        if intent == "science":
            # A program keeps to a few targets of its own through the night.
            own = self._random("program", propid).sample(self.targets, 2)
            target: Target | None = draw.choice(own)
            exptime_s = float(draw.choice((60, 120, 300, 600, 900, 1200)))
            airmass: float | None = round(draw.uniform(1.0, 2.0), 3)
        else:
            target = None
            exptime_s = float(draw.choice((0, 1, 3, 10, 60)))
            airmass = None
        self._clocks[key] = observed_at + timedelta(seconds=round(exptime_s + draw.uniform(20, 120), 2))

        frameno = self._frames.get(key, 0) + 1
        self._frames[key] = frameno
        obset_state = self._obsets.get((key, propid))
        if obset_state is None or obset_state.exposures_left == 0:
            first = obset_state.obset + 1 if obset_state else self._random(key, propid, "obset").randint(1, 30)
            obset_state = _ObsetState(first, draw.randint(2, 6))
            self._obsets[(key, propid)] = obset_state
        obset_state.exposures_left -= 1
        obset_state.exposure += 1

        context: dict[str, Any] = {
            "seed": self.seed,
            "night": self.night_of(instrument.mission).isoformat(),
            "mission": instrument.mission,
            "instrument": instrument.name,
            "observation": number,
            "propid": propid,
            "obset": f"{obset_state.obset:03d}",
            "visit": 1,
            "exposure": obset_state.exposure,
            "frameno": frameno,
            "intent": intent,
            "target": target.name if target else None,
            "ra_deg": target.ra_deg if target else None,
            "dec_deg": target.dec_deg if target else None,
            "exptime_s": exptime_s,
            "airmass": airmass,
            "observed_at": observed_at,
            "ut_date": observed_at.date().isoformat(),
            "ut_yyyymmdd": f"{observed_at:%Y%m%d}",
            "ut_yymmdd": f"{observed_at:%y%m%d}",
            "ut_time": format_time(observed_at),
            "ut_isot": format_datetime(observed_at),
        }
        return _Observation(instrument, number, context)

    # --- planning ----------------------------------------------------------------------------------------------

    def _resume(self, instrument: Instrument) -> tuple[int, datetime | None]:
        """Where the files already under ``root`` leave this instrument's night: the highest frame number its file
        names carry (a ``frameno`` group of its naming rule) and the newest observation start its headers give.

        A simulator started again over the same folders (``make demo`` after Ctrl-C) continues the night, as the
        instrument's software would after a restart, instead of writing frame 1 again over a file already sent.
        """
        frame_rule = re.compile(instrument.filename.regex) if instrument.filename else None
        frameno = 0
        newest: list[tuple[float, Path, ProductKind]] = []
        for product in instrument.products:
            folder = self.root / product.folder
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") or not path.is_file():
                    continue
                found = frame_rule.fullmatch(path.name) if frame_rule else None
                if found and found.groupdict().get("frameno"):
                    frameno = max(frameno, int(found["frameno"]))
                with contextlib.suppress(OSError):
                    newest.append((path.stat().st_mtime, path, product))
        for _, path, product in sorted(newest, key=lambda item: item[0], reverse=True)[:5]:
            try:
                observed_at = instrument.evaluate(read_header(path), path.name, product).observed_at
            except (InvalidFile, OSError, ValueError):
                continue  # a bad or partial file: an older one tells the time
            return frameno, observed_at
        return frameno, None

    def _plan(self, match: ProductMatch, size_bytes: int, *, checksum: bool | None = None) -> _Planned:
        """The next file to write for ``match``: never one whose name is already taken under ``root``."""
        for _ in range(_MAX_TAKEN_NAMES):
            planned = self._plan_one(match, size_bytes, checksum=checksum)
            if not (self.root / planned.relative_path).exists():
                return planned
        raise SimulationError(
            f"{match.instrument.name} {match.product.name}: the next {_MAX_TAKEN_NAMES} file names are all taken "
            f"under {self.root}; simulate into an empty folder"
        )

    def _plan_one(self, match: ProductMatch, size_bytes: int, *, checksum: bool | None = None) -> _Planned:
        instrument, product = match.instrument, match.product
        simulate = product.simulate
        assert simulate is not None
        observation = self._observation(match)
        self._file_number += 1
        number = self._file_number
        if checksum is None:
            checksum = (
                instrument.simulate.checksum and self._random("checksum", number).random() < self.checksum_fraction
            )
        seed_key = f"{self.seed}:{instrument.mission}/{instrument.name}:{observation.number}"

        def values_for(shape: tuple[int, ...]) -> dict[str, Any]:
            context = {**observation.context, "file_number": number, "shape": shape}
            own = header_values(instrument, product, context, seed_key)
            base = observation.headers.get(simulate.derived_from or "", {})
            specific = set(product.keywords) | set(simulate.header)
            # A pipeline product carries its raw file's header, plus its own keywords.
            return {**own, **{k: v for k, v in base.items() if k not in specific}}

        # The header's size does not depend on the image shape (one card per keyword): measure it with a
        # provisional shape, and give the rest of the requested size to the images.
        provisional = tuple(1 if n == -1 else n for n in simulate.shape)
        headers = self._layout(match, values_for(provisional), provisional, checksum, number, ()).header_size()
        pixels = max(0, size_bytes - headers) // sum(itemsize(image.dtype) for image in simulate.images)
        shape = _shape_for(simulate.shape, simulate.shape.index(-1), pixels)
        values = values_for(shape)
        filename = str(FORMATTER.vformat(simulate.filename, (), {**observation.context, "shape": shape, **values}))
        if "/" in filename or filename.startswith(".") or not filename:
            raise SimulationError(f"{instrument.source}: simulate.filename gives {filename!r}, not a plain file name")
        stars = self._stars(number, observation.context["intent"])
        try:
            meant = instrument.evaluate(values, filename, product)
        except InvalidFile as exc:
            raise SimulationError(
                f"{instrument.source}: the simulated {product.name} header breaks the instrument's own rules: {exc}. "
                "Give the keywords values in [simulate.header]"
            ) from None
        observation.headers[product.name] = values
        return _Planned(
            match=match,
            number=number,
            relative_path=f"{product.folder}/{filename}",
            values=values,
            shape=shape,
            stars=stars,
            plan=self._layout(match, values, shape, checksum, number, stars),
            meant=meant,
        )

    def _layout(
        self,
        match: ProductMatch,
        values: Mapping[str, Any],
        shape: tuple[int, ...],
        checksum: bool,
        number: int,
        stars: tuple[Star, ...],
        *,
        drop_end_card: bool = False,
    ) -> FilePlan:
        instrument, product = match.instrument, match.product
        simulate = product.simulate
        assert simulate is not None
        rules = instrument.rules_for(product)
        images = [
            ImagePlan(image, shape, (self.seed, number, index), stars if image.content in ("counts", "flux") else ())
            for index, image in enumerate(simulate.images)
        ]
        if simulate.primary_data:
            primary = structural_header(images[0], primary=True)
            extensions = images[1:]
        else:
            primary = structural_header(None, primary=True)
            extensions = images
        if extensions:
            # As Keck's writers do; it also lets a monitor tell a finished file from one cut between HDUs.
            primary["NEXTEND"] = (len(extensions), "number of extensions")
        for keyword, value in values.items():
            rule = rules.get(keyword)
            primary[keyword] = (value, rule.description[:46] if rule else "")
        hdus = [HduPlan(primary, images[0] if simulate.primary_data else None)]
        for index, image in enumerate(extensions, start=1):
            extname = image.image.extname or f"IMAGE{index}"
            hdus.append(HduPlan(structural_header(image, primary=False, extname=extname), image))
        return FilePlan(tuple(hdus), checksum, drop_end_card=drop_end_card)

    def _stars(self, number: int, intent: str) -> tuple[Star, ...]:
        if intent != "science":
            return ()  # biases, darks and lamps show no stars
        draw = self._random("stars", number)
        return tuple(
            Star(draw.uniform(0.05, 0.95), draw.uniform(0.05, 0.95), draw.uniform(500, 30000), draw.uniform(1.2, 3.0))
            for _ in range(draw.randint(3, 8))
        )

    def _mode(self, match: ProductMatch, mode: str, size_bytes: int) -> WriteMode:
        if mode in ("rename", "inplace"):
            return mode  # type: ignore[return-value]
        if mode != "auto":
            raise ValueError(f"mode must be 'auto', 'rename' or 'inplace', not {mode!r}")
        own = match.instrument.simulate.write_mode
        if own != "auto":
            return own
        if match.instrument.completion.rule == "rename":
            return "rename"  # the monitor takes a file under its final name as finished
        return "inplace" if size_bytes >= INPLACE_FROM_BYTES else "rename"

    def _plan_bad(self, kind: BadKind, match: ProductMatch, size_bytes: int, keyword: str | None) -> _Planned:
        planned = self._plan(match, size_bytes, checksum=True if kind is BadKind.WRONG_DATASUM else None)
        instrument, product = match.instrument, match.product
        assert planned.plan is not None
        planned.bad = kind

        def relayout(values: dict[str, Any], *, drop_end_card: bool = False) -> FilePlan:
            assert planned.plan is not None
            checksum = planned.plan.checksum
            return self._layout(
                match, values, planned.shape, checksum, planned.number, planned.stars, drop_end_card=drop_end_card
            )

        if kind is BadKind.TRUNCATED:
            planned.damage = "truncate"
            planned.expected_reason = "the file is truncated"
        elif kind is BadKind.NO_END_CARD:
            planned.plan = relayout(planned.values, drop_end_card=True)
            planned.expected_reason = "no END card in the primary header"
        elif kind is BadKind.WRONG_DATASUM:
            planned.damage = "flip"
            planned.expected_reason = "DATASUM does not match the data"
        elif kind is BadKind.MISSING_KEYWORD:
            keyword = keyword or _required_keyword(instrument, product)
            planned.plan = relayout({k: v for k, v in planned.values.items() if k != keyword})
            planned.expected_reason = f"missing required keyword {keyword}"
        elif kind is BadKind.OUT_OF_RANGE:
            keyword = keyword or _ranged_keyword(instrument, product)
            rule = instrument.rules_for(product)[keyword]
            value = _out_of_range(rule)
            planned.plan = relayout({**planned.values, keyword: value})
            planned.expected_reason, _ = check_keyword(keyword, rule, {keyword: value})
        elif kind is BadKind.NOT_FITS:
            line = b"SIMULATED NOT-FITS FILE: a controller log written under a .fits name by mistake.\n"
            length = max(size_bytes, 1)
            planned.plan = None
            planned.raw_bytes = (line * (length // len(line) + 1))[:length]
            planned.expected_reason = "not a FITS file"
        elif kind is BadKind.EMPTY:
            planned.plan = None
            planned.raw_bytes = b""
            planned.expected_reason = "the file is empty"
        return planned

    # --- writing ---------------------------------------------------------------------------------------------

    def write_file(
        self,
        instrument: Instrument | str | None = None,
        product: ProductKind | str | None = None,
        *,
        size_bytes: int = DEFAULT_SIZE,
        mode: str = "auto",
        chunk_delay: float = 0.0,
        chunk_bytes: int = 4 << 20,
        fsync: bool = False,
        hdu_delay: float = 0.0,
        nextend: bool = True,
    ) -> SimulatedFile:
        """Write one good file of about ``size_bytes`` for an instrument's product (a pipeline product follows
        the oldest raw file that has not had it yet).  ``mode``: ``rename`` (hidden temporary name, then renamed),
        ``inplace`` (the final name from the first byte, ``chunk_delay`` seconds between chunks), or ``auto``.

        ``hdu_delay`` pauses the writer between HDUs; ``nextend=False`` leaves NEXTEND out of the primary header
        (a writer that does not say how many extensions follow).  When the instrument's completion rule is
        ``marker``, the marker file is made once the file is complete."""
        match = self.resolve(instrument, product)
        planned = self._plan(match, size_bytes)
        if not nextend and planned.plan is not None:
            planned.plan = _without_nextend(planned.plan)
        return self._write(
            planned, self._mode(match, mode, size_bytes), chunk_delay, chunk_bytes, fsync, None, hdu_delay=hdu_delay
        )

    def write_bad_file(
        self,
        kind: BadKind | str,
        instrument: Instrument | str | None = None,
        product: ProductKind | str | None = None,
        *,
        size_bytes: int = 100_000,
        keyword: str | None = None,
    ) -> SimulatedFile:
        """Write one bad file of the given kind under a name the product's pattern matches (renamed into place).

        ``keyword`` chooses the keyword left out (``missing-keyword``) or put out of range (``out-of-range``).
        """
        match = self.resolve(instrument, product)
        planned = self._plan_bad(BadKind(kind), match, size_bytes, keyword)
        return self._write(planned, "rename", 0.0, 4 << 20, False, None)

    def _write(
        self,
        planned: _Planned,
        mode: WriteMode,
        chunk_delay: float,
        chunk_bytes: int,
        fsync: bool,
        stop: threading.Event | None,
        *,
        hdu_delay: float = 0.0,
    ) -> SimulatedFile:
        path = self.root / planned.relative_path
        started = datetime.now(UTC)
        if planned.plan is None:
            write_bytes(planned.raw_bytes, path, fsync=fsync)
        else:
            damage = planned.damage
            write_file(
                planned.plan,
                path,
                mode="rename" if damage else mode,
                chunk_bytes=chunk_bytes,
                chunk_delay=chunk_delay,
                hdu_delay=hdu_delay,
                fsync=fsync,
                stop=stop,
                before_rename=(lambda target, placements: _damage(target, placements, damage)) if damage else None,
            )
        completion = planned.match.instrument.completion
        if completion.rule == "marker":
            # As the instrument's software does once the file is closed: the monitor's cue to take it.
            path.with_name(path.name + completion.marker_suffix).touch()
        closed = datetime.now(UTC)
        match, meant = planned.match, planned.meant
        fits_file = planned.plan is not None
        return SimulatedFile(
            path=path,
            relative_path=planned.relative_path,
            mission=match.instrument.mission,
            instrument=match.instrument.name,
            product=match.product.name,
            level=match.product.level,
            archive_id=meant.archive_id if fits_file else None,
            propid=meant.propid if fits_file else None,
            obset=meant.obset if fits_file else None,
            observed_at=meant.observed_at if fits_file else None,
            size_bytes=os.stat(path).st_size,
            mode="rename" if not fits_file or planned.damage else mode,
            checksum=bool(planned.plan and planned.plan.checksum),
            started_at=started,
            closed_at=closed,
            bad=planned.bad,
            expected_reason=planned.expected_reason,
            evaluation=None if planned.bad else meant,
        )

    async def run(
        self,
        *,
        count: int | None = None,
        duration: float | None = None,
        rate_per_s: float = 1.0,
        sizes: Sequence[int] = (DEFAULT_SIZE,),
        instruments: Sequence[str] | None = None,
        mode: str = "auto",
        chunk_delay: float = 0.0,
        bad_fraction: float = 0.0,
        max_concurrent: int = 8,
        fsync: bool = False,
    ) -> AsyncIterator[SimulatedFile]:
        """Write files at ``rate_per_s`` until ``count`` files or ``duration`` seconds (or for ever), yielding each
        as it is complete.  File ``i`` is started at ``i / rate_per_s`` seconds (later if ``max_concurrent`` files
        are still being written); its instrument, product, size and badness are drawn from the seed and ``i``.

        To stop early, close the generator (``async with contextlib.aclosing(simulator.run(...)) as files``):
        files being written are then abandoned at their next chunk.
        """
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if not sizes:
            raise ValueError("sizes needs at least one size")
        choices = self.products()
        if instruments:
            wanted = {name.upper() for name in instruments}
            choices = [
                m
                for m in choices
                if m.instrument.name.upper() in wanted
                or f"{m.instrument.mission}/{m.instrument.name}".upper() in wanted
            ]
            if not choices:
                raise KeyError(f"no simulated instrument among {', '.join(instruments)}")
        loop = asyncio.get_running_loop()
        results: asyncio.Queue[SimulatedFile | BaseException | None] = asyncio.Queue()
        slots = asyncio.Semaphore(max_concurrent)
        stop = threading.Event()
        writers: set[asyncio.Task[None]] = set()

        async def write(planned: _Planned, write_mode: WriteMode) -> None:
            try:
                done = await asyncio.to_thread(self._write, planned, write_mode, chunk_delay, 4 << 20, fsync, stop)
                results.put_nowait(done)
            except BaseException as exc:  # handed to the consumer, which raises it
                results.put_nowait(exc)
            finally:
                slots.release()

        async def schedule() -> None:
            start = loop.time()
            index = 0
            while count is None or index < count:
                due = start + index / rate_per_s
                if duration is not None and due - start >= duration:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                await slots.acquire()
                draw = self._random("run", index)
                match = self._followed(draw.choice(choices))
                size = draw.choice(list(sizes))
                if bad_fraction > 0 and draw.random() < bad_fraction:
                    planned = self._plan_bad(draw.choice(list(BadKind)), match, size, None)
                    write_mode: WriteMode = "rename"
                else:
                    planned = self._plan(match, size)
                    write_mode = self._mode(match, mode, size)
                task = asyncio.create_task(write(planned, write_mode))
                writers.add(task)
                task.add_done_callback(writers.discard)
                index += 1
            while writers:
                await asyncio.gather(*list(writers), return_exceptions=True)
            results.put_nowait(None)

        scheduler = asyncio.create_task(schedule())
        try:
            while True:
                item = await results.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
            await scheduler
        finally:
            # Files being written stop at their next chunk (a renamed file's temporary is removed); wait for the
            # worker threads, so that nothing is still writing once the run is closed.
            stop.set()
            scheduler.cancel()
            await asyncio.gather(scheduler, *writers, return_exceptions=True)


def _shape_for(spec: tuple[int, ...], free: int, pixels: int) -> tuple[int, ...]:
    """The image shape nearest ``pixels`` pixels: the free axis grows; below one plane the last two axes shrink."""
    before, after = spec[:free], list(spec[free + 1 :])
    per_free = max(1, pixels // max(1, math.prod(before)))
    plane = math.prod(after)
    if per_free >= plane:
        return (*before, max(1, round(per_free / plane)), *after)
    if len(after) >= 2:
        scale = math.sqrt(per_free / plane)
        after[-2] = max(1, math.floor(after[-2] * scale))
        after[-1] = max(1, math.floor(after[-1] * scale))
    elif after:
        after[-1] = max(1, per_free)
    return (*before, 1, *after)


def _image_shape(plan: FilePlan) -> tuple[int, ...]:
    for hdu in plan.hdus:
        if hdu.image is not None:
            return hdu.image.shape
    return ()


def _required_keyword(instrument: Instrument, product: ProductKind) -> str:
    rules = instrument.rules_for(product)
    if rules[instrument.propid.keyword].required:
        return instrument.propid.keyword
    for keyword, rule in rules.items():
        if rule.required:
            return keyword
    raise SimulationError(f"{instrument.name} {product.name} has no required keyword to leave out")


def _ranged_keyword(instrument: Instrument, product: ProductKind) -> str:
    rules = instrument.rules_for(product)
    numeric = (KeywordType.INT, KeywordType.FLOAT)
    preferred = [instrument.metadata.exptime] if instrument.metadata.exptime else []
    for keyword in (*preferred, *rules):
        rule = rules[keyword]
        if rule.type in numeric and (rule.minimum is not None or rule.maximum is not None):
            return keyword
    raise SimulationError(f"{instrument.name} {product.name} has no numeric keyword with a range")


def _out_of_range(rule: Any) -> Any:
    value = rule.minimum - 3 if rule.minimum is not None else rule.maximum + 3
    return int(value) if rule.type is KeywordType.INT else float(value)


def _without_nextend(plan: FilePlan) -> FilePlan:
    """The same file, its primary header not saying how many extensions follow."""
    primary = plan.hdus[0]
    header = primary.header.copy()
    header.remove("NEXTEND", ignore_missing=True)
    return dataclasses.replace(plan, hdus=(dataclasses.replace(primary, header=header), *plan.hdus[1:]))


def _damage(target: Path, placements: list[HduPlacement], damage: str | None) -> None:
    with_data = [p for p in placements if p.data_size > 0]
    if not with_data:
        raise SimulationError("a file without data cannot be truncated or corrupted")
    if damage == "truncate":
        last = with_data[-1]
        blocks = padded_size(last.data_size) // FITS_BLOCK
        os.truncate(target, last.data_offset + blocks // 2 * FITS_BLOCK)
    elif damage == "flip":
        first = with_data[0]
        with open(target, "r+b") as stream:
            stream.seek(first.data_offset + first.data_size // 2)
            byte = stream.read(1)
            stream.seek(-1, os.SEEK_CUR)
            stream.write(bytes([(byte[0] + 1) % 256]))
