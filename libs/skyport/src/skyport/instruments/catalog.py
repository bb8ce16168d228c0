"""The instrument catalog: every mission and instrument read from a configuration folder, and file matching.

The folder holds one sub-folder per mission, each with a ``mission.toml`` (levels, default release rule) and one
``<instrument>.toml`` per instrument.  Adding an instrument is adding a file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from skyport.instruments.models import Instrument, Mission, ProductMatch
from skyport.nights import Nights

MISSION_FILE = "mission.toml"

_Model = TypeVar("_Model", bound=BaseModel)


class InstrumentConfigError(ValueError):
    """A configuration file is wrong; the message names the file and the field."""


class InstrumentCatalog:
    """The missions and instruments Skyport knows, and which of them a file belongs to."""

    def __init__(self, missions: Iterable[Mission], instruments: Iterable[Instrument]) -> None:
        by_name: dict[str, Mission] = {}
        for mission in missions:
            if mission.name in by_name:
                raise InstrumentConfigError(
                    f"{mission.source}: mission {mission.name} is also defined in {by_name[mission.name].source}"
                )
            by_name[mission.name] = mission
        self.missions: Mapping[str, Mission] = MappingProxyType(by_name)

        bound: list[Instrument] = []
        seen: dict[tuple[str, str], Instrument] = {}
        for instrument in instruments:
            where = instrument.source or f"{instrument.mission} {instrument.name}"
            found = by_name.get(instrument.mission)
            if found is None:
                raise InstrumentConfigError(f"{where}: mission: no mission {instrument.mission!r} is defined")
            mission = found
            key = (instrument.mission, instrument.name.upper())
            if key in seen:
                raise InstrumentConfigError(f"{where}: {instrument.name} is also defined in {seen[key].source}")
            for index, product in enumerate(instrument.products):
                try:
                    mission.level_index(product.level)
                except ValueError as exc:
                    raise InstrumentConfigError(f"{where}: products[{index}].level: {exc}") from None
            if instrument.release is None:
                instrument = instrument.model_copy(update={"release": mission.release})
            seen[key] = instrument
            bound.append(instrument)
        self.instruments: tuple[Instrument, ...] = tuple(bound)

        self._by_folder: dict[str, list[ProductMatch]] = {}
        for instrument in self.instruments:
            for product in instrument.products:
                candidates = self._by_folder.setdefault(product.folder, [])
                for other in candidates:
                    if other.product.pattern == product.pattern:
                        raise InstrumentConfigError(
                            f"{instrument.source}: products[{product.name}]: folder {product.folder} and pattern "
                            f"{product.pattern} are also those of {other.instrument.name} {other.product.name}"
                        )
                candidates.append(ProductMatch(instrument, product))

    def __repr__(self) -> str:
        names = ", ".join(f"{i.mission}/{i.name}" for i in self.instruments)
        return f"InstrumentCatalog({names})"

    def match(self, relative_path: str) -> ProductMatch | None:
        """The instrument and product of a file, by its path relative to the watch root (``keck/hires/raw/x.fits``).

        The file's folder must be a product's folder and its name must match that product's glob (case-sensitive;
        the first matching product in configuration order wins).  Hidden files (a writer's temporary ``.name``)
        and paths leaving the root never match.
        """
        path = PurePosixPath(relative_path)
        if path.is_absolute() or ".." in path.parts or not path.name or path.name.startswith("."):
            return None
        for candidate in self._by_folder.get(str(path.parent), ()):
            if fnmatchcase(path.name, candidate.product.pattern):
                return candidate
        return None

    def mission(self, name: str) -> Mission:
        """A mission by name (case-insensitive); KeyError naming the known missions if unknown."""
        mission = self.missions.get(name) or self.missions.get(name.upper())
        if mission is None:
            known = ", ".join(self.missions) or "none"
            raise KeyError(f"unknown mission {name!r} (known: {known})")
        return mission

    def instrument(self, mission: str, name: str) -> Instrument:
        """An instrument by mission and name (case-insensitive); KeyError with a clear message if unknown."""
        wanted_mission = self.mission(mission).name
        for instrument in self.instruments:
            if instrument.mission == wanted_mission and instrument.name.upper() == name.upper():
                return instrument
        known = ", ".join(i.name for i in self.instruments if i.mission == wanted_mission) or "none"
        raise KeyError(f"unknown instrument {name!r} for mission {wanted_mission} (known: {known})")

    def level_order(self, mission: str) -> tuple[str, ...]:
        """The mission's levels, lowest first."""
        return self.mission(mission).levels

    def level_at_least(self, mission: str, level: str, minimum: str) -> bool:
        """``level`` is ``minimum`` or above in the mission's order (never by string comparison).

        ValueError if either is not one of the mission's levels.
        """
        order = self.mission(mission)
        return order.level_index(level) >= order.level_index(minimum)

    def nights(self) -> Nights:
        """Each mission's observing-night rule (:mod:`skyport.nights`)."""
        return Nights({name: mission.night for name, mission in self.missions.items()})

    def products(self) -> Iterator[ProductMatch]:
        """Every (instrument, product) pair, in configuration order."""
        for instrument in self.instruments:
            for product in instrument.products:
                yield ProductMatch(instrument, product)

    def watch_folders(self) -> tuple[str, ...]:
        """The folders (relative to the watch root) that hold some product, for the monitor to watch."""
        return tuple(sorted(self._by_folder))


def load_instruments(directory: Path) -> InstrumentCatalog:
    """Read every ``*/mission.toml`` and ``*/*.toml`` below ``directory`` into a catalog.

    A bad file raises :class:`InstrumentConfigError` naming the file and the field.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InstrumentConfigError(f"{directory}: no such folder of instrument configuration")
    missions: list[Mission] = []
    instruments: list[Instrument] = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.glob("*.toml") if not p.name.startswith("."))
        if not files:
            continue
        mission_path = folder / MISSION_FILE
        if not mission_path.is_file():
            raise InstrumentConfigError(f"{files[0]}: its folder {folder} has no {MISSION_FILE}")
        mission = _validate(Mission, mission_path, _read_toml(mission_path))
        missions.append(mission)
        for path in files:
            if path.name == MISSION_FILE:
                continue
            data = _read_toml(path)
            stated = data.setdefault("mission", mission.name)
            if stated != mission.name:
                raise InstrumentConfigError(
                    f"{path}: mission: {stated!r}, but the file is in the folder of {mission.name} ({mission_path})"
                )
            instruments.append(_validate(Instrument, path, data))
    if not missions:
        raise InstrumentConfigError(f"{directory}: no */{MISSION_FILE} found: nothing is configured")
    return InstrumentCatalog(missions, instruments)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise InstrumentConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise InstrumentConfigError(f"{path}: cannot be read: {exc.strerror}") from None


def _validate(model: type[_Model], path: Path, data: dict[str, Any]) -> _Model:
    try:
        return model.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{field}: {message}" if field else message)
        raise InstrumentConfigError(f"{path}: " + "; ".join(problems)) from None
