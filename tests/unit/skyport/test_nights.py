"""Observing nights: a file belongs to the night of its site that it was observed in, whatever the UT date."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from skyport.instruments import InstrumentConfigError, load_instruments
from skyport.nights import DEFAULT_RULE, NightRule, Nights
from skyport.simulator import Simulator
from tests.support.flow import INSTRUMENTS

HAWAII = ZoneInfo("Pacific/Honolulu")
KECK = NightRule(time_zone="Pacific/Honolulu")


@pytest.mark.parametrize(
    ("local", "night"),
    [
        (datetime(2026, 11, 21, 23, 30), date(2026, 11, 21)),
        (datetime(2026, 11, 22, 1, 30), date(2026, 11, 21)),  # after midnight: still the night of the 21st
        (datetime(2026, 11, 21, 15, 0), date(2026, 11, 21)),  # 01:00 UT on the 22nd: the afternoon's calibrations
        (datetime(2026, 11, 21, 12, 0), date(2026, 11, 21)),  # the boundary begins the night
        (datetime(2026, 11, 21, 11, 59, 59), date(2026, 11, 20)),  # the morning ends the night before
        (datetime(2026, 11, 22, 11, 59), date(2026, 11, 21)),
    ],
)
def test_a_keck_file_belongs_to_the_night_that_began_at_the_last_noon_in_hawaii(local: datetime, night: date) -> None:
    assert KECK.night_of(local.replace(tzinfo=HAWAII)) == night
    assert KECK.night_of(local.replace(tzinfo=HAWAII).astimezone(UTC)) == night  # the zone of the time is no matter


def test_a_naive_time_is_utc_as_instrument_times_are() -> None:
    assert KECK.night_of(datetime(2026, 11, 22, 9, 30)) == date(2026, 11, 21)  # 23:30 in Hawaii


def test_a_night_s_span_is_noon_to_noon_local_even_across_a_change_of_summer_time() -> None:
    assert KECK.span(date(2026, 11, 21)) == (
        datetime(2026, 11, 21, 22, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 22, 0, tzinfo=UTC),
    )
    paranal = NightRule(time_zone="America/Santiago")  # summer time ends on 5 April 2026 at 00:00 local
    start, end = paranal.span(date(2026, 4, 4))
    assert end - start == (datetime(2026, 4, 5, 16, 0, tzinfo=UTC) - datetime(2026, 4, 4, 15, 0, tzinfo=UTC))
    assert paranal.night_of(start) == date(2026, 4, 4)
    assert paranal.night_of(end) == date(2026, 4, 5)


def test_tonight_is_the_night_in_progress_at_the_site() -> None:
    # 15:00 UT on 1 December is 05:00 in Hawaii: Keck's night of 30 November is not over; at UTC it is the 1st.
    now = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    assert KECK.tonight(now) == date(2026, 11, 30)
    nights = Nights({"keck": KECK})
    assert nights.rule("KECK") is KECK
    assert nights.rule("JWST") is DEFAULT_RULE
    assert nights.tonight(["KECK"], now) == date(2026, 11, 30)
    assert nights.tonight([], now) == date(2026, 12, 1)  # UTC noon to noon
    assert nights.night_of("KECK", None) is None  # a product without a time belongs to no night


def test_the_shipped_missions_say_their_nights() -> None:
    catalog = load_instruments(INSTRUMENTS)
    keck, jwst = catalog.mission("KECK").night, catalog.mission("JWST").night
    assert (keck.time_zone, keck.boundary) == ("Pacific/Honolulu", time(12))
    # JWST has no site night: its "night" is the UT date, as MAST and its file names go.
    assert (jwst.time_zone, jwst.boundary) == ("UTC", time(0))
    assert catalog.nights().night_of("JWST", datetime(2026, 11, 22, 23, 59, tzinfo=UTC)) == date(2026, 11, 22)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("time_zone", "Mars/Olympus_Mons", "not an IANA time zone"),
        ("boundary", "12:00:30", "whole minutes"),
        ("sunset", "18:00", "sunset"),
    ],
)
def test_a_wrong_night_in_a_mission_file_is_refused_with_the_field(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    folder = tmp_path / "keck"
    folder.mkdir()
    mission = 'name = "KECK"\nlevels = ["0"]\n[release]\nexclusive_access_months = 18\n'
    (folder / "mission.toml").write_text(f'{mission}[night]\n{key} = "{value}"\n')
    with pytest.raises(InstrumentConfigError, match=message) as refused:
        load_instruments(tmp_path)
    assert "night." in str(refused.value)


def test_the_simulated_night_is_an_observing_night_of_each_site(tmp_path: Path) -> None:
    catalog = load_instruments(INSTRUMENTS)
    asked = Simulator(catalog, tmp_path / "a", seed=3, night=date(2026, 11, 21))
    hires = asked.write_file("HIRES", "raw", size_bytes=30_000)
    assert hires.observed_at is not None
    assert catalog.nights().night_of("KECK", hires.observed_at) == date(2026, 11, 21)
    assert hires.observed_at.astimezone(HAWAII).hour >= 19  # the evening, not the afternoon before

    keck = catalog.mission("KECK").night
    before = keck.tonight()
    tonight = Simulator(catalog, tmp_path / "b", seed=3)  # the demo's: tonight at each site, what the page shows
    assert tonight.night_of("KECK") in {before, keck.tonight()}
    written = tonight.write_file("HIRES", "raw", size_bytes=30_000)
    assert written.observed_at is not None
    assert keck.night_of(written.observed_at) == tonight.night_of("KECK")
