"""Observing nights: which night a moment belongs to at a site, the one rule used by the catalog, gateway and page.

A night is named by the local date (in the site's time zone) on which it *starts*, and it runs from the site's
boundary hour (noon by default) to the same hour the next day. A file observed at local time ``t`` belongs to
night ``date(t - boundary)``: at Keck (Pacific/Honolulu, noon), 23:30 on 21 November and 01:30 on
22 November are both night 2026-11-21, and the afternoon calibrations before it are too. A mission without a
site night (a space telescope) says so with its own rule, e.g. UTC with a midnight boundary: the UT date.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator


class NightRule(BaseModel):
    """A site's observing night: its time zone and the local hour at which one night ends and the next begins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    time_zone: str = Field(default="UTC", description="IANA time zone of the site, e.g. 'Pacific/Honolulu'.")
    boundary: time = Field(
        default=time(12), description="Local time at which a night begins (and the previous one ends): noon by default."
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. 'Pacific/Honolulu', 'UTC')") from None
        return value

    @field_validator("boundary")
    @classmethod
    def _whole_minutes(cls, value: time) -> time:
        if value.tzinfo is not None or value.second or value.microsecond:
            raise ValueError("boundary is a local time of whole minutes without a zone, e.g. '12:00'")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def night_of(self, moment: datetime) -> date:
        """The night ``moment`` belongs to (a naive ``moment`` is UTC, as instrument times are)."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        local = moment.astimezone(self.zone).replace(tzinfo=None)
        return (local - timedelta(hours=self.boundary.hour, minutes=self.boundary.minute)).date()

    def tonight(self, now: datetime | None = None) -> date:
        """The night in progress at the site (``now``: the current time)."""
        return self.night_of(now or datetime.now(UTC))

    def span(self, night: date) -> tuple[datetime, datetime]:
        """When ``night`` begins and ends, in UTC (end excluded); a day of 23 or 25 hours at a change of DST."""
        start = datetime.combine(night, self.boundary, tzinfo=self.zone)
        end = datetime.combine(night + timedelta(days=1), self.boundary, tzinfo=self.zone)
        return start.astimezone(UTC), end.astimezone(UTC)

    def as_json(self) -> dict[str, str]:
        return {"time_zone": self.time_zone, "boundary": self.boundary.strftime("%H:%M")}


DEFAULT_RULE = NightRule()
"""For a mission that configures no night: UTC, noon to noon."""


class Nights:
    """Each mission's night rule (by upper-case mission name), with :data:`DEFAULT_RULE` for the others."""

    def __init__(self, rules: Mapping[str, NightRule] | None = None, default: NightRule = DEFAULT_RULE) -> None:
        self.rules: Mapping[str, NightRule] = MappingProxyType({m.upper(): r for m, r in (rules or {}).items()})
        self.default = default

    def rule(self, mission: str) -> NightRule:
        return self.rules.get(mission.upper(), self.default)

    def night_of(self, mission: str, moment: datetime | None) -> date | None:
        """The night of an observation of ``mission`` at ``moment``; None for a product without a time."""
        return None if moment is None else self.rule(mission).night_of(moment)

    def tonight(self, missions: Iterable[str] = (), now: datetime | None = None) -> date:
        """The night in progress for ``missions`` (the latest of their nights when they differ; default rule
        when none is given): the night an observer of several sites is most likely following."""
        now = now or datetime.now(UTC)
        rules = [self.rule(m) for m in missions] or [self.default]
        return max(rule.tonight(now) for rule in rules)
