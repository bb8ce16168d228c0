"""Header evaluation: check a header against an instrument's keyword rules, extract metadata, build the archive ID.

Pure functions, no I/O: DEP at the observatory and the ingestor at the archive run the same code on the same
header and reach the same archive ID, level, program and metadata.
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import PurePosixPath
from typing import Any

import astropy.units as u
from astropy.coordinates import Angle
from astropy.coordinates.angles.errors import IllegalHourWarning, IllegalMinuteWarning, IllegalSecondWarning
from astropy.io.fits.card import Undefined
from astropy.time import Time

from skyport.events.models import HeaderMetadata, HeaderValue
from skyport.fits import InvalidFile
from skyport.instruments.models import (
    Instrument,
    KeywordRule,
    KeywordType,
    PrefixRule,
    ProductKind,
    TimeSource,
)

# astropy warns of 24 h and 60 s in a sexagesimal angle before the rules' range check refuses them in words of its
# own. Filtered once, here: warnings.catch_warnings around each parse would swap the process's filter list, which is
# not safe when headers are evaluated in threads.
for _category in (IllegalHourWarning, IllegalMinuteWarning, IllegalSecondWarning):
    warnings.filterwarnings("ignore", category=_category)

# Routing keys and storage paths carry the propid and the archive ID: they must be plain words.
_PROPID = re.compile(r"^[A-Za-z0-9_\-]+$")
_ARCHIVE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
MAX_ARCHIVE_ID_LENGTH = 128
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(\.\d+)?$")
_HUNDREDTHS_PER_DAY = 86_400 * 100


@dataclass(frozen=True)
class Evaluation:
    """What DEP learned from a valid header."""

    archive_id: str
    mission: str
    instrument: str
    level: str
    propid: str
    obset: str | None
    observed_at: datetime  # UTC
    release_date: date
    metadata: HeaderMetadata
    product: str = ""


def is_null(value: Any) -> bool:
    """An undefined header value (None, or astropy's Undefined when given an astropy Header), or a blank string."""
    return value is None or isinstance(value, Undefined) or (isinstance(value, str) and not value.strip())


def show(value: Any) -> str:
    """A header value as a person reads it in a reason: strings quoted as in FITS, 300.0 as 300."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def check_keyword(keyword: str, rule: KeywordRule, header: Mapping[str, Any]) -> tuple[str | None, Any]:
    """Check one keyword: ``(problem, value)``; the value parsed (``None`` when absent or null, or on a problem).

    Parsed values: str (stripped), int, float, bool, :class:`datetime.date`, time text ``HH:MM:SS.sss``,
    :class:`astropy.time.Time`, or :class:`astropy.coordinates.Angle` for sexagesimal keywords.
    """
    if keyword not in header:
        return (f"missing required keyword {keyword}" if rule.required else None), None
    raw = header[keyword]
    if is_null(raw):
        return (None if rule.nullable else f"{keyword} has no value (it may not be blank)"), None
    shown = f"{keyword}={show(raw)}"
    try:
        value = _parse(rule, raw)
    except ValueError as exc:
        return f"{shown} {exc}", None

    if rule.values is not None and not _allowed(value, rule.values):
        return f"{shown} is not one of {', '.join(show(v) for v in rule.values)}", None
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        return f"{shown} does not match the pattern {rule.pattern}", None
    number = value.to_value(u.Unit(rule.unit)) if isinstance(value, Angle) else value
    if isinstance(number, int | float) and not isinstance(number, bool):
        if rule.minimum is not None and number < rule.minimum:
            return f"{shown} is below its minimum {show(rule.minimum)}", None
        if rule.exclusive_minimum is not None and number <= rule.exclusive_minimum:
            return f"{shown} is not above its exclusive minimum {show(rule.exclusive_minimum)}", None
        if rule.maximum is not None and number > rule.maximum:
            return f"{shown} is above its maximum {show(rule.maximum)}", None
        if rule.exclusive_maximum is not None and number >= rule.exclusive_maximum:
            return f"{shown} is not below its exclusive maximum {show(rule.exclusive_maximum)}", None
    return None, value


def _parse(rule: KeywordRule, raw: Any) -> Any:
    """The typed value, or ValueError whose text completes "KEYWORD=value ..."."""
    kind = rule.type
    if kind is KeywordType.STR:
        if not isinstance(raw, str):
            raise ValueError("is not a string")
        return raw.strip()
    if kind is KeywordType.BOOL:
        if not isinstance(raw, bool):
            raise ValueError("is not a logical (T or F)")
        return raw
    if kind is KeywordType.INT:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not float(raw).is_integer():
            raise ValueError("is not an integer")
        return int(raw)
    if kind is KeywordType.FLOAT:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError("is not a number")
        if not math.isfinite(raw):
            raise ValueError("is not a finite number")
        return raw
    if not isinstance(raw, str):
        if kind is KeywordType.SEXAGESIMAL and isinstance(raw, int | float) and not isinstance(raw, bool):
            if not math.isfinite(raw):
                raise ValueError("is not a finite number")
            return Angle(raw, unit=u.Unit(rule.unit))  # a number is taken in the rule's unit
        raise ValueError(f"is not a {kind.value} string")
    text = raw.strip()
    if kind is KeywordType.DATE:
        if not _DATE.match(text):
            raise ValueError("is not a date YYYY-MM-DD")
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError("is not a valid calendar date") from None
    if kind is KeywordType.TIME:
        match = _TIME.match(text)
        if not match or int(match[1]) > 23 or int(match[2]) > 59 or int(match[3]) > 60:
            raise ValueError("is not a time HH:MM:SS[.sss]")
        return text
    if kind is KeywordType.DATETIME:
        try:
            return Time(text.removesuffix("Z"), format="isot", scale="utc")
        except ValueError:
            raise ValueError("is not an ISO date and time YYYY-MM-DDTHH:MM:SS[.sss]") from None
    # sexagesimal
    try:
        return Angle(text, unit=u.Unit(rule.unit))
    except ValueError as exc:
        raise ValueError(f"is not a sexagesimal angle in {rule.unit}: {exc}") from None


def _allowed(value: Any, allowed: tuple[Any, ...]) -> bool:
    if isinstance(value, str):
        return value.casefold() in {str(v).strip().casefold() for v in allowed}
    return value in allowed


def koaid(prefix: str, observed_at: datetime) -> str:
    """Keck's archive ID: ``<prefix>.<UT date YYYYMMDD>.<seconds since UT midnight, 5 digits>.<hundredths>``.

    Hundredths are truncated, never rounded, as KOA does: 23:59:59.995 is ``86399.99`` and stays on its UT date
    (rounding would give 86400.00, a second that the day does not have).
    """
    when = observed_at.astimezone(UTC) if observed_at.tzinfo else observed_at
    hundredths = (when.hour * 3600 + when.minute * 60 + when.second) * 100 + when.microsecond // 10_000
    hundredths = min(hundredths, _HUNDREDTHS_PER_DAY - 1)
    seconds, fraction = divmod(hundredths, 100)
    return f"{prefix}.{when:%Y%m%d}.{seconds:05d}.{fraction:02d}"


def instrument_release_date(instrument: Instrument, observed_at: datetime) -> date:
    if instrument.release is None:
        raise ValueError(
            f"{instrument.mission} {instrument.name} has no release rule: load it with load_instruments, "
            "which gives it its mission's"
        )
    return instrument.release.release_date(observed_at.date())


def evaluate(instrument: Instrument, header: Mapping[str, Any], filename: str, product: ProductKind) -> Evaluation:
    """See :meth:`Instrument.evaluate`."""
    filename = PurePosixPath(filename).name
    problems: list[str] = []
    values: dict[str, Any] = {}
    reported: set[str] = set()  # keywords already named in a problem: roles do not repeat them
    for keyword, rule in instrument.rules_for(product).items():
        problem, value = check_keyword(keyword, rule, header)
        if problem:
            problems.append(problem)
            reported.add(keyword)
        elif value is not None:
            values[keyword] = value

    if instrument.filename is not None:
        problems.extend(_filename_problems(instrument, filename, values, reported))

    observed_at = _observed_at(instrument.observed_at, values, reported, problems)
    propid = _propid(instrument, values, reported, problems)
    obset: str | None = None
    if instrument.obset is not None and instrument.obset.keyword in values:
        obset = str(values[instrument.obset.keyword])
    archive_id = _archive_id(instrument, product, filename, observed_at, values, reported, problems)

    if problems or observed_at is None or propid is None or archive_id is None:
        raise InvalidFile("; ".join(problems) or "the header does not give an archive ID")
    release_date = instrument_release_date(instrument, observed_at)
    metadata = _metadata(instrument, product, header, values, observed_at, release_date)
    return Evaluation(
        archive_id=archive_id,
        mission=instrument.mission,
        instrument=instrument.name,
        level=product.level,
        propid=propid,
        obset=obset,
        observed_at=observed_at,
        release_date=release_date,
        metadata=metadata,
        product=product.name,
    )


def _filename_problems(instrument: Instrument, filename: str, values: dict[str, Any], reported: set[str]) -> list[str]:
    assert instrument.filename is not None
    match = re.fullmatch(instrument.filename.regex, filename)
    if match is None:
        return [f"file name {filename!r} does not follow {instrument.name}'s naming rule {instrument.filename.regex}"]
    problems = []
    for group, keyword in instrument.filename.keywords.items():
        text = match[group]
        if keyword in reported or keyword not in values or text is None:
            continue
        if not _same(text, values[keyword]):
            problems.append(f"the file name gives {keyword} as {text!r} but the header has {show(values[keyword])}")
    return problems


def _same(text: str, value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool) and text.isdigit():
        return int(text) == value
    return text.strip().casefold() == str(value).strip().casefold()


def _observed_at(
    sources: tuple[TimeSource, ...], values: dict[str, Any], reported: set[str], problems: list[str]
) -> datetime | None:
    for source in sources:
        if all(keyword in values for keyword in source.keywords()):
            if source.datetime is not None:
                when: Time = values[source.datetime]
                shown = f"{source.datetime}={show(when.isot)}"
            else:
                assert source.date is not None
                assert source.time is not None
                text = f"{values[source.date].isoformat()}T{values[source.time]}"
                shown = f"{source.date} and {source.time} ({text})"
                try:
                    when = Time(text, format="isot", scale="utc")
                except ValueError as exc:
                    problems.append(f"{shown} are not a valid time: {exc}")
                    return None
            try:
                return when.to_datetime(timezone=UTC)  # type: ignore[no-any-return]
            except ValueError as exc:  # a leap second has no datetime
                problems.append(f"{shown} cannot be used as the observation time: {exc}")
                return None
    if not any(keyword in reported for source in sources for keyword in source.keywords()):
        ways = ", or ".join(" and ".join(source.keywords()) for source in sources)
        problems.append(f"no observation time in the header: it needs {ways}")
    return None


def _propid(instrument: Instrument, values: dict[str, Any], reported: set[str], problems: list[str]) -> str | None:
    keyword = instrument.propid.keyword
    if keyword not in values:
        if keyword not in reported:
            problems.append(f"no program in the header: {keyword} is missing or blank")
        return None
    propid = str(values[keyword]).strip()
    if instrument.propid.strip_leading_zeros:
        propid = propid.lstrip("0") or "0"
    if not _PROPID.match(propid):
        problems.append(f"{keyword}={show(values[keyword])} cannot be a program id (letters, digits, '_', '-' only)")
        return None
    return propid


def _archive_id(
    instrument: Instrument,
    product: ProductKind,
    filename: str,
    observed_at: datetime | None,
    values: dict[str, Any],
    reported: set[str],
    problems: list[str],
) -> str | None:
    rule = instrument.archive_id
    if rule.kind == "filename":
        if not filename.endswith(rule.extension) or filename == rule.extension:
            problems.append(f"file name {filename!r} does not end with {rule.extension}")
            return None
        archive_id = filename[: -len(rule.extension)]
    else:
        prefix = rule.prefix
        if isinstance(prefix, PrefixRule):
            if prefix.keyword not in values:
                if prefix.keyword not in reported:
                    problems.append(f"no archive ID prefix: {prefix.keyword} is missing or blank")
                return None
            chosen = prefix.prefix_for(values[prefix.keyword])
            if chosen is None:
                known = ", ".join(prefix.map)
                problems.append(
                    f"{prefix.keyword}={show(values[prefix.keyword])} gives no archive ID prefix (known: {known})"
                )
                return None
            prefix = chosen
        if observed_at is None:
            return None  # the time's problem is reported already
        assert isinstance(prefix, str)
        archive_id = koaid(prefix, observed_at) + product.archive_id_suffix
    if len(archive_id) > MAX_ARCHIVE_ID_LENGTH or not _ARCHIVE_ID.match(archive_id):
        problems.append(
            f"archive ID {archive_id!r} is not a plain name of at most {MAX_ARCHIVE_ID_LENGTH} characters "
            "(letters, digits, '.', '_', '-')"
        )
        return None
    return archive_id


def _metadata(
    instrument: Instrument,
    product: ProductKind,
    header: Mapping[str, Any],
    values: dict[str, Any],
    observed_at: datetime,
    release_date: date,
) -> HeaderMetadata:
    rules = instrument.rules_for(product)
    meta = instrument.metadata

    def degrees(keyword: str | None) -> float | None:
        if keyword is None or keyword not in values:
            return None
        value = values[keyword]
        if isinstance(value, Angle):
            return float(value.to_value(u.deg))
        return float((float(value) * u.Unit(rules[keyword].unit)).to_value(u.deg))

    exptime_s: float | None = None
    if meta.exptime is not None and meta.exptime in values:
        unit = u.Unit(rules[meta.exptime].unit or "s")
        exptime_s = float((float(values[meta.exptime]) * unit).to_value(u.s))

    ignored = {value.casefold() for value in meta.filters_ignore}
    filters = [
        str(values[keyword])
        for keyword in meta.filters
        if keyword in values and str(values[keyword]).casefold() not in ignored
    ]
    intent = "science"
    if meta.intent is not None:
        intent = meta.intent.intent_of(values.get(meta.intent.keyword))

    selected: dict[str, HeaderValue] = {}
    for keyword in (*meta.catalog, *product.catalog):
        if keyword in header:
            selected[keyword] = _json_value(header[keyword])

    em_min_m, em_max_m = meta.wavelength_m or (None, None)
    return HeaderMetadata(
        product=product.name,
        target_name=str(values[meta.target]) if meta.target and meta.target in values else None,
        ra_deg=degrees(meta.ra),
        dec_deg=degrees(meta.dec),
        observed_at=observed_at,
        exptime_s=exptime_s,
        filters=filters,
        intent=intent,
        release_date=release_date,
        dataproduct_type=product.dataproduct_type,
        calib_level=calib_level_of(product),
        em_min_m=em_min_m,
        em_max_m=em_max_m,
        software_version=_software_version(meta.software_version, header, values),
        reference_files=_reference_files(meta.reference_files, meta.reference_files_ignore, header),
        header=selected,
    )


def calib_level_of(product: ProductKind) -> int | None:
    """The ObsCore calib_level of a product: configured, or its level's leading digit (at least 1).

    Files that reach the archive are FITS, so never ObsCore level 0 (proprietary formats): KECK 0 (raw) and
    JWST 1b are 1, KECK 2 and JWST 2a/2b are 2, JWST 3 is 3.
    """
    if product.calib_level is not None:
        return product.calib_level
    if product.level[:1].isdigit():
        return max(1, min(4, int(product.level[0])))
    return None


def _software_version(keyword: str | None, header: Mapping[str, Any], values: dict[str, Any]) -> str | None:
    if keyword is None:
        return None
    value = values[keyword] if keyword in values else header.get(keyword)
    return None if is_null(value) else str(value).strip()


def _reference_files(patterns: tuple[str, ...], ignore: tuple[str, ...], header: Mapping[str, Any]) -> list[str]:
    """The reference files the header names, in header order, once each (JWST names unused kinds 'N/A')."""
    if not patterns:
        return []
    ignored = {value.casefold() for value in ignore}
    found: list[str] = []
    for keyword in header:
        if not isinstance(keyword, str) or not any(fnmatch.fnmatchcase(keyword, p) for p in patterns):
            continue
        value = header[keyword]
        name = value.strip() if isinstance(value, str) else ""
        if name and name.casefold() not in ignored and name not in found:
            found.append(name)
    return found


def _json_value(value: Any) -> HeaderValue:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)
