"""Query parameters of the catalog API read into typed values, or refused with a message naming the parameter.

Search parameters (``GET /v1/products`` and its download script); the API's OpenAPI document describes them:

- ``mission``, ``propid``, ``instrument``, ``level``, ``intent``: exact values, repeatable (any of them);
  ``mission`` and ``instrument`` are compared case-insensitively;
- ``t_min`` / ``t_max``: an observation-time range, each an MJD (a plain number) or an ISO 8601 date or time
  (UTC unless it says otherwise); products whose observation overlaps the range match;
- ``archived_since``: an ISO 8601 date or time; products whose current version was archived then or later;
- ``night``: ``YYYY-MM-DD``, an observing night of the product's mission's site (``skyport.nights``: the local
  date on which the night began; KECK's runs from noon to noon in Hawaii), or ``tonight``: the night in progress
  at each product's own site;
- ``filename``: a glob on the original file name (``*``, ``?``), case-insensitive;
- ``target``: a case-insensitive substring of the target name;
- ``ra``, ``dec``, ``radius``: a cone in degrees, all three together; ra in [0, 360), dec in [-90, 90],
  radius in (0, 10];
- ``limit``, ``cursor`` (catalog order), ``count`` (also return how many products match in all).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from multidict import MultiMapping

import skyport.cursor
from services.catalog.cataloguing import to_mjd
from services.catalog.sky import Cone, cone
from services.catalog.storage.search import ProductFilter, Tonight
from skyport.api.errors import ErrorCode
from skyport.cursor import BadCursor
from skyport.nights import Nights

MAX_RADIUS_DEG = 10.0
MAX_TEXT = 256
_INTENTS = ("science", "calibration")
_REPEATABLE = ("mission", "propid", "instrument", "level", "intent")
_SINGLE = (
    "t_min",
    "t_max",
    "night",
    "archived_since",
    "filename",
    "target",
    "ra",
    "dec",
    "radius",
    "limit",
    "cursor",
    "count",
)
SEARCH_PARAMETERS = frozenset(_REPEATABLE + _SINGLE)


class BadParameter(ValueError):
    """A query parameter that cannot be used as it is; the message says what was expected."""

    def __init__(self, parameter: str, message: str, *, code: ErrorCode = ErrorCode.BAD_PARAMETER) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.code = code


@dataclass(frozen=True)
class Search:
    filter: ProductFilter
    after_seq: int
    limit: int
    count: bool


def decode_cursor(cursor: str) -> int:
    try:
        return skyport.cursor.decode_cursor(cursor)
    except BadCursor:
        raise BadParameter(
            "cursor",
            f"cursor {cursor[:100]!r} is not one this API gave out (next_cursor)",
            code=ErrorCode.UNKNOWN_CURSOR,
        ) from None


def parse_search(
    query: MultiMapping[str],
    *,
    default_limit: int,
    max_limit: int,
    countable: bool = True,
    nights: Nights | None = None,
) -> Search:
    """Read a search's parameters; :class:`BadParameter` for an unknown, repeated or malformed one.

    ``countable``: whether ``count`` is one of them; ``nights``: the missions' night rules, for ``night=tonight``.
    """
    taken = SEARCH_PARAMETERS if countable else SEARCH_PARAMETERS - {"count"}
    unknown = sorted(set(query) - taken)
    if unknown:
        known = ", ".join(sorted(taken))
        raise BadParameter(unknown[0], f"unknown parameter {unknown[0]!r}; the search parameters are {known}")
    single = {name: _single(query, name) for name in _SINGLE}
    intents = _values(query, "intent")
    for intent in intents:
        if intent not in _INTENTS:
            raise BadParameter("intent", f"intent must be science or calibration, not {intent[:100]!r}")
    t_min = None if single["t_min"] is None else parse_observation_time("t_min", single["t_min"])
    t_max = None if single["t_max"] is None else parse_observation_time("t_max", single["t_max"])
    if t_min is not None and t_max is not None and t_min > t_max:
        raise BadParameter(
            "t_min", "t_min is after t_max: the observation-time range is empty", code=ErrorCode.CONFLICTING_PARAMETERS
        )
    product_filter = ProductFilter(
        missions=tuple(m.upper() for m in _values(query, "mission")),
        propids=_values(query, "propid"),
        instruments=_values(query, "instrument"),
        levels=_values(query, "level"),
        intents=intents,
        t_min=t_min,
        t_max=t_max,
        night=None if single["night"] is None else parse_night(single["night"], nights or Nights()),
        archived_since=None
        if single["archived_since"] is None
        else parse_datetime("archived_since", single["archived_since"]),
        filename_glob=_text("filename", single["filename"]),
        target=_text("target", single["target"]),
        cone=_cone(single["ra"], single["dec"], single["radius"]),
    )
    return Search(
        filter=product_filter,
        after_seq=0 if single["cursor"] is None else decode_cursor(single["cursor"]),
        limit=default_limit if single["limit"] is None else parse_int("limit", single["limit"], 1, max_limit),
        count=False if single["count"] is None else parse_bool("count", single["count"]),
    )


def parse_int(parameter: str, text: str, lowest: int, highest: int) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", text.strip()) or not lowest <= int(text) <= highest:
        raise BadParameter(parameter, f"{parameter} must be an integer from {lowest} to {highest}, not {text[:100]!r}")
    return int(text)


def parse_bool(parameter: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise BadParameter(parameter, f"{parameter} must be true or false, not {text[:100]!r}")


def parse_datetime(parameter: str, text: str) -> datetime:
    """An ISO 8601 date or time; UTC unless it gives its offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadParameter(
            parameter, f"{parameter} must be an ISO 8601 date or time such as 2026-03-15T08:00:00Z, not {text[:100]!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_night(text: str, nights: Nights) -> date | Tonight:
    """An observing night: the date ``YYYY-MM-DD`` on which it began at the site, or ``tonight`` at each site."""
    if text == "tonight":
        now = datetime.now(UTC)
        by_mission = tuple((mission, rule.tonight(now)) for mission, rule in sorted(nights.rules.items()))
        return Tonight(by_mission, nights.default.tonight(now))
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
        raise BadParameter(
            "night", f"night must be a date YYYY-MM-DD (when the night began) or tonight, not {text[:100]!r}"
        )
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadParameter("night", f"night {text[:100]!r} is not a calendar date") from None


def parse_observation_time(parameter: str, text: str) -> float:
    """An MJD (a plain number) or an ISO 8601 date or time (UTC unless it gives its offset), as an MJD."""
    try:
        mjd = float(text)
    except ValueError:
        try:
            return to_mjd(parse_datetime(parameter, text))
        except BadParameter:
            raise BadParameter(
                parameter,
                f"{parameter} must be an MJD (e.g. 61114.5) or an ISO 8601 date or time (e.g. 2026-03-15T08:00:00Z), "
                f"not {text[:100]!r}",
            ) from None
    if not math.isfinite(mjd):
        raise BadParameter(parameter, f"{parameter} must be a finite MJD, not {text[:100]!r}")
    return mjd


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadParameter(name, f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def _values(query: MultiMapping[str], name: str) -> tuple[str, ...]:
    values = tuple(query.getall(name, []))
    for value in values:
        if not value.strip() or len(value) > MAX_TEXT:
            raise BadParameter(name, f"{name} must not be empty or longer than {MAX_TEXT} characters")
    return values


def _text(name: str, value: str | None) -> str | None:
    if value is not None and (not value.strip() or len(value) > MAX_TEXT):
        raise BadParameter(name, f"{name} must not be empty or longer than {MAX_TEXT} characters")
    return value


def _degrees(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadParameter(name, f"{name} must be a number of degrees, not {text[:100]!r}")
    return value


def _cone(ra_text: str | None, dec_text: str | None, radius_text: str | None) -> Cone | None:
    given = {"ra": ra_text, "dec": dec_text, "radius": radius_text}
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise BadParameter(
            missing[0],
            f"a cone search needs ra, dec and radius together: {missing[0]} is missing",
            code=ErrorCode.CONFLICTING_PARAMETERS,
        )
    assert ra_text is not None
    assert dec_text is not None
    assert radius_text is not None
    ra, dec, radius = _degrees("ra", ra_text), _degrees("dec", dec_text), _degrees("radius", radius_text)
    if not 0.0 <= ra < 360.0:
        raise BadParameter("ra", f"ra must be in [0, 360) degrees, not {ra_text[:100]!r}")
    if not -90.0 <= dec <= 90.0:
        raise BadParameter("dec", f"dec must be in [-90, 90] degrees, not {dec_text[:100]!r}")
    if not 0.0 < radius <= MAX_RADIUS_DEG:
        raise BadParameter(
            "radius", f"radius must be above 0 and at most {MAX_RADIUS_DEG:g} degrees, not {radius_text[:100]!r}"
        )
    return cone(ra, dec, radius)
