"""The instrument and mission configuration models: what one TOML file under ``deploy/instruments`` may say.

Everything instrument-specific lives here as data: the folders and file patterns to watch, the level of each
product, the header keyword rules, where to find the program, obset, target, coordinates, time, exposure and
filters, how to build the archive ID, and how long data stay private.  The services read these models and hold
no instrument knowledge of their own.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Self

import astropy.units as u
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skyport.events.models import DataproductType
from skyport.files import check_relative_path
from skyport.nights import DEFAULT_RULE, NightRule

if TYPE_CHECKING:
    from skyport.instruments.evaluation import Evaluation

# A keyword name as FITS allows it (letters, digits, '-' and '_', at most 8 characters), upper case.
_KEYWORD = re.compile(r"^[A-Z0-9_\-]{1,8}$")
# Words that end up in routing keys and storage paths: mission and instrument names, levels, product names.
_WORD = re.compile(r"^[A-Za-z0-9_\-]+$")

ScalarValue = str | int | float | bool


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_word(value: str, what: str) -> str:
    if not _WORD.match(value):
        raise ValueError(f"{what} {value!r} may hold only letters, digits, '_' and '-'")
    return value


def _check_keyword(value: str) -> str:
    if not _KEYWORD.match(value):
        raise ValueError(f"{value!r} is not a FITS keyword (upper-case letters, digits, '-', '_'; at most 8)")
    return value


# --- keyword rules --------------------------------------------------------------------------------------


class KeywordType(StrEnum):
    """How a header value is read and checked."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"  # 'YYYY-MM-DD'
    TIME = "time"  # 'HH:MM:SS[.sss]', UTC
    DATETIME = "datetime"  # ISO 8601 'YYYY-MM-DDTHH:MM:SS[.sss]', UTC
    SEXAGESIMAL = "sexagesimal"  # an angle as text, 'HH:MM:SS.ss' or '+DD:MM:SS.s', in ``unit``


_NUMERIC_TYPES = frozenset({KeywordType.INT, KeywordType.FLOAT, KeywordType.SEXAGESIMAL})


class KeywordRule(_Frozen):
    """What one header keyword must look like.  Ranges are in the keyword's own ``unit``."""

    type: KeywordType
    required: bool = Field(default=False, description="The keyword must be present.")
    nullable: bool = Field(default=False, description="An undefined or blank value is allowed.")
    unit: str | None = Field(
        default=None,
        description="astropy unit of the value (e.g. 's', 'deg', 'hourangle'); values are converted with it.",
    )
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    values: tuple[ScalarValue, ...] | None = Field(
        default=None, description="The allowed values (strings compared without regard to case)."
    )
    pattern: str | None = Field(default=None, description="Regular expression a string value must match in full.")
    description: str = ""

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                u.Unit(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a unit astropy knows: {exc}") from None
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KeywordRule:
        ranged = [self.minimum, self.maximum, self.exclusive_minimum, self.exclusive_maximum]
        if any(bound is not None for bound in ranged) and self.type not in _NUMERIC_TYPES:
            raise ValueError(f"a range applies to int, float or sexagesimal keywords, not to {self.type}")
        if self.pattern is not None and self.type is not KeywordType.STR:
            raise ValueError("a pattern applies to str keywords only")
        if self.type is KeywordType.SEXAGESIMAL and not self.is_angle():
            raise ValueError("a sexagesimal keyword needs an angle unit: 'hourangle' or 'deg'")
        return self

    def is_angle(self) -> bool:
        return self.unit is not None and u.Unit(self.unit).physical_type == "angle"

    def is_time_span(self) -> bool:
        return self.unit is None or u.Unit(self.unit).physical_type == "time"


# --- where things are in the header ---------------------------------------------------------------------


class TimeSource(_Frozen):
    """One way to read the observation start (UTC): a datetime keyword, or a date keyword and a time keyword."""

    datetime: str | None = None
    date: str | None = None
    time: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> TimeSource:
        if (self.datetime is None) == (self.date is None and self.time is None):
            raise ValueError("give either 'datetime', or both 'date' and 'time'")
        if self.datetime is None and (self.date is None or self.time is None):
            raise ValueError("'date' and 'time' go together")
        return self

    def keywords(self) -> tuple[str, ...]:
        return tuple(k for k in (self.datetime, self.date, self.time) if k is not None)


class PropidRule(_Frozen):
    """Where the program (``propid``) is."""

    keyword: str
    strip_leading_zeros: bool = Field(
        default=False, description="JWST writes PROGRAM = '01011' for program 1011; the archive says 1011."
    )


class ObsetRule(_Frozen):
    """Where the observation set (``obset``) is, for missions that have one."""

    keyword: str


class IntentRule(_Frozen):
    """Science or calibration, from one keyword: list the values of one kind, the rest are the other."""

    keyword: str
    science: tuple[str, ...] | None = None
    calibration: tuple[str, ...] | None = None
    default: Literal["science", "calibration"] = Field(
        default="science", description="When the keyword is absent or blank."
    )

    @model_validator(mode="after")
    def _one_list(self) -> IntentRule:
        if (self.science is None) == (self.calibration is None):
            raise ValueError("list either the 'science' values or the 'calibration' values")
        return self

    def intent_of(self, value: Any) -> Literal["science", "calibration"]:
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.default
        text = str(value).strip().casefold()
        if self.science is not None:
            return "science" if text in {v.casefold() for v in self.science} else "calibration"
        assert self.calibration is not None
        return "calibration" if text in {v.casefold() for v in self.calibration} else "science"


class MetadataRule(_Frozen):
    """Which keywords give the catalog's metadata."""

    target: str | None = None
    ra: str | None = None
    dec: str | None = None
    exptime: str | None = None
    filters: tuple[str, ...] = ()
    filters_ignore: tuple[str, ...] = Field(
        default=(), description="Filter values that mean 'no filter' (e.g. 'clear'), left out of the list."
    )
    intent: IntentRule | None = None
    catalog: tuple[str, ...] = Field(default=(), description="Header keywords copied as they are for the catalog.")
    software_version: str | None = Field(
        default=None, description="Keyword naming the software that made the file, e.g. JWST's CAL_VER."
    )
    reference_files: tuple[str, ...] = Field(
        default=(), description="Keywords naming the reference files used; globs allowed, e.g. JWST's 'R_*'."
    )
    reference_files_ignore: tuple[str, ...] = Field(
        default=("N/A", "NONE"), description="Values that mean 'no reference file of this kind', left out."
    )
    wavelength_m: tuple[float, float] | None = Field(
        default=None, description="The instrument's wavelength range [shortest, longest] in metres."
    )

    @field_validator("reference_files")
    @classmethod
    def _keyword_globs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            _check_keyword(pattern.replace("*", "X").replace("?", "X"))
        return value

    @field_validator("wavelength_m")
    @classmethod
    def _wavelength_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"wavelength_m must be [shortest, longest] with 0 < shortest <= longest, not {value}")
        return value


class PrefixRule(_Frozen):
    """An archive-ID prefix chosen by a keyword's value, e.g. KCWI's CAMERA: BLUE -> KB, RED -> KR."""

    keyword: str
    map: dict[str, str]

    @field_validator("map")
    @classmethod
    def _prefixes(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("map needs at least one value")
        for prefix in value.values():
            _check_word(prefix, "prefix")
        return value

    def prefix_for(self, value: Any) -> str | None:
        wanted = str(value).strip().casefold()
        for key, prefix in self.map.items():
            if key.casefold() == wanted:
                return prefix
        return None


class ArchiveIdRule(_Frozen):
    """How the archive ID is built.

    - ``koaid``: Keck's KOAID, ``<prefix>.<UT date YYYYMMDD>.<seconds since UT midnight, 5 digits>.<hundredths>``
      (``HI.20260315.12345.67``), from the observation time; a product's ``archive_id_suffix`` follows it
      (``KB.20260315.12345.67_icubes``).
    - ``filename``: the file name without ``extension`` (JWST: ``jw01011002001_02101_00001_nrcb1_uncal``).
    """

    kind: Literal["koaid", "filename"]
    prefix: str | PrefixRule | None = None
    extension: str = ".fits"

    @model_validator(mode="after")
    def _prefix_for_koaid(self) -> ArchiveIdRule:
        if self.kind == "koaid" and self.prefix is None:
            raise ValueError("a koaid archive ID needs a prefix (e.g. 'HI', or a keyword and a map)")
        if isinstance(self.prefix, str):
            _check_word(self.prefix, "prefix")
        return self


class FilenameRule(_Frozen):
    """The instrument's file-naming rule, checked against the header: a mismatch is an invalid file."""

    regex: str = Field(description="Matched in full against the file name; named groups are compared below.")
    keywords: dict[str, str] = Field(
        default_factory=dict, description="Named group -> header keyword whose value must equal the group's text."
    )

    @model_validator(mode="after")
    def _groups_exist(self) -> FilenameRule:
        try:
            compiled = re.compile(self.regex)
        except re.error as exc:
            raise ValueError(f"regex {self.regex!r} is not a regular expression: {exc}") from None
        missing = set(self.keywords) - set(compiled.groupindex)
        if missing:
            raise ValueError(f"regex has no group named {', '.join(sorted(missing))}")
        return self


class ReleaseRule(_Frozen):
    """When data become public: an exclusive-access period counted from the observation's UT date."""

    exclusive_access_months: int = Field(ge=0, le=1200)

    def release_date(self, observed: date) -> date:
        """The observation date plus the period, in calendar months (31 Aug + 6 months is 28/29 Feb)."""
        months = observed.month - 1 + self.exclusive_access_months
        year, month = observed.year + months // 12, months % 12 + 1
        day = min(observed.day, calendar.monthrange(year, month)[1])
        return date(year, month, day)


# --- simulation hints ----------------------------------------------------------------------------------

ImageContent = Literal["counts", "flux", "error", "flags"]


class SimulatedImage(_Frozen):
    """One image the night simulator writes for a product."""

    extname: str | None = Field(default=None, description="EXTNAME of the extension (the primary HDU has none).")
    dtype: Literal["uint8", "uint16", "int16", "int32", "uint32", "float32", "float64"] = "uint16"
    content: ImageContent = "counts"


class ProductSimulation(_Frozen):
    """How the night simulator writes a product: the file name, the HDU layout, and which product it follows."""

    filename: str = Field(
        description="A format string over the header keywords and the simulation context, e.g. 'hires{FRAMENO:04d}"
        ".fits'; '!l' lower-cases a value ('{DETECTOR!l}')."
    )
    shape: tuple[int, ...] = Field(
        default=(-1, 2048),
        description="Image shape (numpy order); the one -1 axis grows or shrinks to reach the requested file size.",
    )
    primary_data: bool = Field(
        default=True, description="The first image is the primary HDU's data; if false the primary holds no data."
    )
    images: tuple[SimulatedImage, ...] = (SimulatedImage(),)
    derived_from: str | None = Field(
        default=None, description="A pipeline product made from this instrument's product of that name."
    )
    header: dict[str, ScalarValue] = Field(
        default_factory=dict, description="Keyword values or format strings over the simulation context."
    )

    @model_validator(mode="after")
    def _one_free_axis(self) -> ProductSimulation:
        if self.shape.count(-1) != 1 or any(n == 0 or n < -1 for n in self.shape):
            raise ValueError("shape needs exactly one -1 (free) axis and positive sizes elsewhere")
        if not self.images:
            raise ValueError("images needs at least one image")
        return self


class InstrumentSimulation(_Frozen):
    """Header values the night simulator writes in every product of an instrument."""

    header: dict[str, ScalarValue] = Field(default_factory=dict)
    checksum: bool = Field(default=True, description="Write CHECKSUM/DATASUM (in most of the files).")
    write_mode: Literal["auto", "rename", "inplace"] = Field(
        default="auto", description="How the instrument writes: in place, or under a temporary name then renamed."
    )


class MissionSimulation(_Frozen):
    programs: tuple[str, ...] = Field(default=(), description="Programs the night simulator observes for.")


# --- when a file is finished ------------------------------------------------------------------------------


class CompletionRule(_Frozen):
    """How the monitor knows the instrument has finished writing a file: a file still being written is never taken.

    - ``rename``: the writer writes under a temporary name (``temporary``) and renames the file into place.
    - ``marker``: the writer makes a marker file, the file's name plus ``marker_suffix`` (``NAME.fits.done``).
    - ``signal``: the instrument's software says so (``skyport monitor closed PATH``, KOA's keyword callback).
    - ``fits``: the FITS structure is complete and declares its extensions (NEXTEND present and every HDU there,
      or a primary HDU that allows none); a file without NEXTEND waits, reported, for an operator.
    - ``quiet``: the last resort: the file is unchanged for ``quiet_seconds``, longer than the writer ever pauses.

    Under every rule the file must also look like whole FITS, or be unchanged for the monitor's incomplete timeout
    (then it is evaluated, so a truncated file is reported rather than waited for).
    """

    rule: Literal["rename", "marker", "signal", "fits", "quiet"]
    marker_suffix: str = Field(default=".done", description="The marker rule's marker: the file's name plus this.")
    temporary: tuple[str, ...] = Field(
        default=(".*", "*.part", "*.tmp"),
        description="Globs of the writer's temporary names in the folder: neither taken nor reported.",
    )
    quiet_seconds: float | None = Field(
        default=None, gt=0, description="The quiet rule's period: longer than any pause of the writer."
    )

    @model_validator(mode="after")
    def _settings_of_the_rule(self) -> CompletionRule:
        if self.rule == "quiet" and self.quiet_seconds is None:
            raise ValueError("the quiet rule needs quiet_seconds (longer than any pause of the instrument's writer)")
        if self.rule != "quiet" and self.quiet_seconds is not None:
            raise ValueError("quiet_seconds belongs to the quiet rule only")
        if not self.marker_suffix.startswith(".") or "/" in self.marker_suffix or len(self.marker_suffix) < 2:
            raise ValueError(f"marker_suffix {self.marker_suffix!r} must be a suffix such as '.done'")
        return self


# --- products, instruments, missions --------------------------------------------------------------------


class ProductKind(_Frozen):
    """One kind of file an instrument (or its pipeline) writes: where, named how, at which level."""

    name: str = Field(description="e.g. 'raw', 'quicklook', 'uncal', 'cal'")
    level: str = Field(description="The mission's level of this product (e.g. '0', '2b').")
    folder: str = Field(description="Folder relative to the monitor's watch root, e.g. 'keck/hires/raw'.")
    pattern: str = Field(description="Glob for the file names, case-sensitive, e.g. 'hires[0-9]*.fits'.")
    description: str = ""
    archive_id_suffix: str = Field(default="", description="Appended to a koaid archive ID, e.g. '_icubes'.")
    keywords: dict[str, KeywordRule] = Field(
        default_factory=dict, description="Rules for this product only, added to (or replacing) the instrument's."
    )
    catalog: tuple[str, ...] = Field(default=(), description="Extra keywords for the catalog for this product.")
    calib_level: int | None = Field(
        default=None, ge=0, le=4, description="ObsCore calib_level; by default the level's leading digit (at least 1)."
    )
    dataproduct_type: DataproductType | None = Field(default=None, description="ObsCore dataproduct_type.")
    simulate: ProductSimulation | None = None

    def __hash__(self) -> int:  # the rule dicts are not hashable; these fields identify a product
        return hash((self.name, self.level, self.folder, self.pattern))

    @field_validator("name", "level")
    @classmethod
    def _words(cls, value: str) -> str:
        return _check_word(value, "name or level")

    @field_validator("folder")
    @classmethod
    def _relative_folder(cls, value: str) -> str:
        return check_relative_path(value, "folder")

    @field_validator("pattern")
    @classmethod
    def _plain_glob(cls, value: str) -> str:
        if "/" in value or value.startswith("."):
            raise ValueError(f"pattern {value!r} must be a file-name glob without '/' and not start with '.'")
        return value

    @field_validator("archive_id_suffix")
    @classmethod
    def _suffix(cls, value: str) -> str:
        return _check_word(value, "archive_id_suffix") if value else value

    @field_validator("keywords")
    @classmethod
    def _keyword_names(cls, value: dict[str, KeywordRule]) -> dict[str, KeywordRule]:
        for name in value:
            _check_keyword(name)
        return value


class Mission(_Frozen):
    """A mission (observatory): its ordered processing levels, its default release rule and its observing night."""

    name: str = Field(description="e.g. 'KECK', 'JWST'")
    description: str = ""
    levels: tuple[str, ...] = Field(description="Processing levels, lowest first: KECK 0, 1, 2; JWST 1b, 2a, 2b, 3.")
    notify_default_level: str | None = Field(
        default=None,
        description="The notifier's 'this level or above' for a subscription that names no level (JWST: 2b, as "
        "MAST's notices are for science files at 2b and above); none: every level.",
    )
    release: ReleaseRule
    night: NightRule = Field(
        default=DEFAULT_RULE,
        description="The site's observing night (time zone, boundary hour): which night a file belongs to.",
    )
    simulate: MissionSimulation = MissionSimulation()
    source: str = Field(default="", description="The file it was read from.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_word(value, "mission name")

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a mission needs at least one level")
        for level in value:
            _check_word(level, "level")
        if len({level.casefold() for level in value}) != len(value):
            raise ValueError("levels must be distinct")
        return value

    @model_validator(mode="after")
    def _default_level_is_a_level(self) -> Self:
        if self.notify_default_level is not None:
            self.level_index(self.notify_default_level)
        return self

    def level_index(self, level: str) -> int:
        """The level's rank in the mission's order; ValueError with the known levels if it is not one."""
        for index, known in enumerate(self.levels):
            if known == level or known.casefold() == level.casefold():
                return index
        raise ValueError(f"{level!r} is not a {self.name} level (levels, lowest first: {', '.join(self.levels)})")


class Instrument(_Frozen):
    """One instrument's configuration: one TOML file.  :meth:`evaluate` turns a header into an :class:`Evaluation`."""

    mission: str
    name: str = Field(description="e.g. 'HIRES', 'KCWI', 'NIRCAM'")
    description: str = ""
    products: tuple[ProductKind, ...]
    keywords: dict[str, KeywordRule]
    observed_at: tuple[TimeSource, ...] = Field(description="Ways to read the observation start, first found wins.")
    propid: PropidRule
    obset: ObsetRule | None = None
    archive_id: ArchiveIdRule
    filename: FilenameRule | None = None
    metadata: MetadataRule = MetadataRule()
    release: ReleaseRule | None = Field(
        default=None,
        description="Overrides the mission's release rule; the catalog fills in the mission's when this is absent.",
    )
    completion: CompletionRule = Field(
        default=CompletionRule(rule="fits"),
        description="How the monitor knows a file is finished; every shipped configuration states its choice.",
    )
    simulate: InstrumentSimulation = InstrumentSimulation()
    source: str = Field(default="", description="The file it was read from.")

    def __repr__(self) -> str:  # the whole configuration is too much for a log line
        return f"Instrument({self.mission}/{self.name}, source={self.source!r})"

    def __hash__(self) -> int:  # usable as a key; the rule dicts are not hashable, the names identify it
        return hash((self.mission, self.name, self.source))

    @field_validator("mission", "name")
    @classmethod
    def _names(cls, value: str) -> str:
        return _check_word(value, "name")

    @field_validator("keywords")
    @classmethod
    def _keyword_names(cls, value: dict[str, KeywordRule]) -> dict[str, KeywordRule]:
        for name in value:
            _check_keyword(name)
        return value

    @model_validator(mode="after")
    def _references(self) -> Instrument:
        """Every keyword named by a role has a rule of a type that role can read."""
        if not self.products:
            raise ValueError("an instrument needs at least one product")
        names = [p.name for p in self.products]
        if len(set(names)) != len(names):
            raise ValueError("product names must be distinct")
        if not self.observed_at:
            raise ValueError("observed_at needs at least one time source")
        for product in self.products:
            rules = self.rules_for(product)
            where = f"products[{product.name}]"
            self._check_roles(rules, where)
            if product.simulate and product.simulate.derived_from not in (None, *names):
                raise ValueError(f"{where}.simulate.derived_from names no product of this instrument")
        return self

    def _check_roles(self, rules: Mapping[str, KeywordRule], where: str) -> None:
        def need(role: str, keyword: str | None, types: set[KeywordType], check: str = "") -> None:
            if keyword is None:
                return
            rule = rules.get(keyword)
            if rule is None:
                raise ValueError(f"{role} names {keyword}, which has no rule in [keywords] ({where})")
            if rule.type not in types:
                allowed = ", ".join(sorted(t.value for t in types))
                raise ValueError(f"{role} names {keyword} of type {rule.type}; it must be {allowed}")
            if check == "angle" and rule.type is KeywordType.FLOAT and not rule.is_angle():
                raise ValueError(f"{role} names {keyword}, whose unit must be an angle ('deg')")
            if check == "time" and not rule.is_time_span():
                raise ValueError(f"{role} names {keyword}, whose unit must be a time ('s', 'ms', 'min')")

        text = {KeywordType.STR}
        for source in self.observed_at:
            need("observed_at.datetime", source.datetime, {KeywordType.DATETIME})
            need("observed_at.date", source.date, {KeywordType.DATE})
            need("observed_at.time", source.time, {KeywordType.TIME})
        need("propid.keyword", self.propid.keyword, {KeywordType.STR, KeywordType.INT})
        if self.obset:
            need("obset.keyword", self.obset.keyword, {KeywordType.STR, KeywordType.INT})
        if isinstance(self.archive_id.prefix, PrefixRule):
            need("archive_id.prefix.keyword", self.archive_id.prefix.keyword, text)
        meta = self.metadata
        need("metadata.target", meta.target, text)
        need("metadata.ra", meta.ra, {KeywordType.SEXAGESIMAL, KeywordType.FLOAT}, "angle")
        need("metadata.dec", meta.dec, {KeywordType.SEXAGESIMAL, KeywordType.FLOAT}, "angle")
        need("metadata.exptime", meta.exptime, {KeywordType.FLOAT, KeywordType.INT}, "time")
        for keyword in meta.filters:
            need("metadata.filters", keyword, text)
        if meta.intent:
            need("metadata.intent.keyword", meta.intent.keyword, text)
        if self.filename:
            for keyword in self.filename.keywords.values():
                need("filename.keywords", keyword, set(KeywordType))
        for keyword in meta.catalog:
            _check_keyword(keyword)
        if meta.software_version is not None:
            _check_keyword(meta.software_version)

    def rules_for(self, product: ProductKind) -> dict[str, KeywordRule]:
        """The keyword rules for one product: the instrument's, with the product's added or replacing them."""
        return {**self.keywords, **product.keywords}

    def product(self, name: str) -> ProductKind:
        for product in self.products:
            if product.name == name:
                return product
        known = ", ".join(p.name for p in self.products)
        raise KeyError(f"{self.mission} {self.name} has no product {name!r} (products: {known})")

    def evaluate(self, header: Mapping[str, Any], filename: str, product: ProductKind) -> Evaluation:
        """Validate ``header`` against the rules, extract the metadata and build the archive ID.

        Collects every problem and raises :class:`skyport.fits.InvalidFile` listing them all (``missing required
        keyword DATE-OBS; EXPTIME=-3 is below its minimum 0``).  A pure function: no I/O.  The release date
        follows :attr:`release`, which :func:`~skyport.instruments.load_instruments` fills in from the mission
        when the instrument's file has none.
        """
        from skyport.instruments.evaluation import evaluate

        return evaluate(self, header, filename, product)


@dataclass(frozen=True)
class ProductMatch:
    """The instrument and product a file belongs to, by its folder and name."""

    instrument: Instrument
    product: ProductKind
