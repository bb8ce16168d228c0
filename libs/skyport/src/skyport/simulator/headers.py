"""Simulated header values: what an instrument would write, from its configuration and one observation.

Each keyword of the instrument's rules gets a value: the instrument's or product's ``[simulate.header]`` entry if
there is one (a literal, or a format string over the observation context), else the observation's own value for
the keywords with a role (time, program, obset, target, coordinates, exposure, filters, intent), else a value
drawn within the rule (one of its values, inside its range).  Every drawn value comes from a generator seeded by
the run's seed, the observation and the keyword, so the same seed writes the same header whatever the order.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import astropy.units as u
from astropy.coordinates import Angle

from skyport.instruments import Instrument, KeywordRule, KeywordType, PrefixRule, ProductKind
from skyport.instruments.models import ScalarValue


class SimulationError(Exception):
    """The simulator cannot write a valid file from this configuration; the message says what to add."""


class _Formatter(string.Formatter):
    """``str.format`` with one more conversion, ``!l``, for lower case (JWST file names: ``{DETECTOR!l}``)."""

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "l":
            return str(value).lower()
        return super().convert_field(value, conversion)


FORMATTER = _Formatter()


def render(template: ScalarValue, context: Mapping[str, Any]) -> Any:
    """A ``[simulate.header]`` entry's value: literals as they are, format strings filled from ``context``.

    A string that is one bare field (``"{frameno}"``, ``"{shape[1]}"``) keeps the context value's type, so an
    integer keyword gets an integer.
    """
    if not isinstance(template, str) or "{" not in template:
        return template
    try:
        parts = list(FORMATTER.parse(template))
        if len(parts) == 1 and not parts[0][0] and parts[0][1] and not parts[0][2] and not parts[0][3]:
            value, _ = FORMATTER.get_field(parts[0][1], (), context)
            return value
        return FORMATTER.vformat(template, (), context)
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        known = ", ".join(sorted(k for k in context if k.islower()))
        raise SimulationError(f"cannot fill {template!r}: {exc!r} (context: {known})") from None


@dataclass(frozen=True)
class Target:
    """A sky target the simulated programs observe."""

    name: str
    ra_deg: float
    dec_deg: float


def format_time(when: datetime) -> str:
    """UT time as instruments write it, to the hundredth: ``05:12:33.12``."""
    return f"{when:%H:%M:%S}.{when.microsecond // 10_000:02d}"


def format_datetime(when: datetime) -> str:
    """ISO date and time to the millisecond, without zone (FITS times are UTC): ``2026-03-15T05:12:33.120``."""
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}"


def _angle_text(degrees: float, unit: str) -> str:
    angle = Angle(degrees, unit=u.deg)
    if u.Unit(unit) == u.hourangle:
        return str(angle.to_string(unit=u.hourangle, sep=":", precision=2, pad=True))
    return str(angle.to_string(unit=u.deg, sep=":", precision=1, pad=True, alwayssign=True))


def _roles(instrument: Instrument) -> dict[str, str]:
    """Keyword -> the role the observation fills it from."""
    roles: dict[str, str] = {}
    for source in instrument.observed_at:
        for keyword, role in ((source.datetime, "datetime"), (source.date, "date"), (source.time, "time")):
            if keyword:
                roles.setdefault(keyword, role)
    roles[instrument.propid.keyword] = "propid"
    if instrument.obset:
        roles[instrument.obset.keyword] = "obset"
    meta = instrument.metadata
    for keyword, role in ((meta.target, "target"), (meta.ra, "ra"), (meta.dec, "dec"), (meta.exptime, "exptime")):
        if keyword:
            roles[keyword] = role
    if meta.intent:
        roles[meta.intent.keyword] = "intent"
    return roles


def header_values(
    instrument: Instrument,
    product: ProductKind,
    context: Mapping[str, Any],
    seed_key: str,
) -> dict[str, Any]:
    """Keyword -> value for the primary header of one file (``None`` for a blank value)."""
    templates: dict[str, ScalarValue] = {**instrument.simulate.header}
    if product.simulate is not None:
        templates.update(product.simulate.header)
    rules = instrument.rules_for(product)
    roles = _roles(instrument)
    values: dict[str, Any] = {}
    try:
        for keyword, rule in rules.items():
            if keyword in templates:
                values[keyword] = render(templates[keyword], context)
            else:
                chooser = random.Random(f"{seed_key}:{keyword}")
                values[keyword] = _value(instrument, keyword, rule, roles.get(keyword), context, chooser)
        for keyword, template in templates.items():  # keywords the rules do not mention, written all the same
            if keyword not in values:
                values[keyword] = render(template, context)
    except SimulationError as exc:
        raise SimulationError(f"{instrument.source or instrument.name} ({product.name}): {exc}") from None
    return values


def _value(
    instrument: Instrument,
    keyword: str,
    rule: KeywordRule,
    role: str | None,
    context: Mapping[str, Any],
    chooser: random.Random,
) -> Any:
    observed_at: datetime = context["observed_at"]
    kind = rule.type
    if kind is KeywordType.DATE:
        return observed_at.date().isoformat()
    if kind is KeywordType.TIME:
        return format_time(observed_at)
    if kind is KeywordType.DATETIME:
        return format_datetime(observed_at)
    if role == "propid":
        return context["propid"] if kind is KeywordType.STR else int(context["propid"])
    if role == "obset":
        return context["obset"] if kind is KeywordType.STR else int(context["obset"])
    if role == "target":
        return context["target"]
    if role in ("ra", "dec"):
        degrees = context[f"{role}_deg"]
        if degrees is None:
            return None
        if kind is KeywordType.SEXAGESIMAL:
            return _angle_text(degrees, rule.unit or "deg")
        return round(float((degrees * u.deg).to_value(u.Unit(rule.unit or "deg"))), 6)
    if role == "exptime":
        return round(float((context["exptime_s"] * u.s).to_value(u.Unit(rule.unit or "s"))), 3)
    if role == "intent" and instrument.metadata.intent is not None:
        return _intent_value(instrument, rule, context["intent"], chooser)
    if isinstance(instrument.archive_id.prefix, PrefixRule) and keyword == instrument.archive_id.prefix.keyword:
        return chooser.choice(list(instrument.archive_id.prefix.map))
    return _drawn(keyword, rule, chooser)


def _intent_value(instrument: Instrument, rule: KeywordRule, intent: str, chooser: random.Random) -> str:
    assert instrument.metadata.intent is not None
    intent_rule = instrument.metadata.intent
    candidates = [str(v) for v in rule.values or ()]
    if intent_rule.science is not None:
        science = list(intent_rule.science)
        other = [v for v in candidates if v.casefold() not in {s.casefold() for s in science}]
        chosen = science if intent == "science" else other
    else:
        calibration = list(intent_rule.calibration or ())
        other = [v for v in candidates if v.casefold() not in {c.casefold() for c in calibration}]
        chosen = calibration if intent == "calibration" else other
    if not chosen:
        raise SimulationError(
            f"{instrument.name}: {intent_rule.keyword} needs allowed values of both intents to simulate {intent}"
        )
    # The first listed value is the common one (OBJECT, NRC_IMAGE); the others appear now and then.
    return chosen[0] if chooser.random() < 0.7 else chooser.choice(chosen)


def _drawn(keyword: str, rule: KeywordRule, chooser: random.Random) -> Any:
    if rule.values:
        return chooser.choice(rule.values)
    if rule.type is KeywordType.INT:
        start = 0
        if rule.minimum is not None:
            start = math.ceil(rule.minimum)
        elif rule.exclusive_minimum is not None:
            start = math.floor(rule.exclusive_minimum) + 1
        stop = start + 100
        if rule.maximum is not None:
            stop = math.floor(rule.maximum)
        elif rule.exclusive_maximum is not None:
            stop = math.ceil(rule.exclusive_maximum) - 1
        return chooser.randint(start, max(start, stop))
    low = rule.minimum if rule.minimum is not None else rule.exclusive_minimum
    high = rule.maximum if rule.maximum is not None else rule.exclusive_maximum
    if rule.type in (KeywordType.FLOAT, KeywordType.SEXAGESIMAL):
        lo = float(low if low is not None else 0.0)
        hi = float(high if high is not None else lo + 100.0)
        number = round(lo + (hi - lo) * chooser.uniform(0.05, 0.95), 4)
        if rule.type is KeywordType.SEXAGESIMAL:
            return _angle_text(float((number * u.Unit(rule.unit or "deg")).to_value(u.deg)), rule.unit or "deg")
        return number
    if rule.type is KeywordType.BOOL:
        return True
    if rule.type is KeywordType.STR and rule.pattern is None:
        return "SIM"
    if rule.type is KeywordType.STR:
        raise SimulationError(
            f"{keyword} must match {rule.pattern}, which the simulator cannot invent: give it a value in "
            "[simulate.header] (a literal or a format string over the observation context)"
        )
    raise SimulationError(f"cannot draw a value for {keyword} of type {rule.type}")
