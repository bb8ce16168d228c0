"""The preview's arithmetic: which past events a subscription's settings keep, and how many messages the fast
coalescing window, the hourly cap and the digests would have made of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.notifier.levels import LevelOrder
from services.notifier.models import SubscriptionRequest
from services.notifier.preview import digest_sends, fast_sends, summarise, wants
from services.notifier.storage import PastEvent
from services.notifier.subscriptions import Refused, checked

LEVELS = LevelOrder({"JWST": ["1b", "2a", "2b", "3"], "KECK": ["0", "1", "2"]}, {"JWST": "2b"})
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday
WINDOW = timedelta(seconds=60)


def event(minutes: float = 0, **fields: Any) -> PastEvent:
    values: dict[str, Any] = {
        "event_id": f"e{minutes}",
        "event_time": T0 + timedelta(minutes=minutes),
        "type": "new",
        "mission": "JWST",
        "propid": "1011",
        "level": "2b",
        "obsets": ["001"],
        "archive_ids": ["jw01011001001_01101_00001_nrca1_cal"],
        "files": 1,
    } | fields
    return PastEvent(**values)


def request(**fields: Any) -> SubscriptionRequest:
    return SubscriptionRequest.model_validate({"mission": "JWST", "propid": "1011"} | fields)


def at(*minutes: float) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in minutes]


def test_levels_are_compared_in_the_missions_order_or_above_or_exactly() -> None:
    levels_2a_up = request(min_level="2a")
    assert [wants(LEVELS, levels_2a_up, event(level=level)) for level in ("1b", "2a", "2b", "3")] == [
        False,
        True,
        True,
        True,
    ]
    only_2a = request(min_level="2a", or_above=False)
    assert [wants(LEVELS, only_2a, event(level=level)) for level in ("1b", "2a", "2b", "3")] == [
        False,
        True,
        False,
        False,
    ]


def test_triggers_program_obset_and_file_narrow_what_is_kept() -> None:
    assert not wants(LEVELS, request(triggers=["repro"]), event())
    assert not wants(LEVELS, request(propid="2739"), event())
    assert wants(LEVELS, request(obset="001"), event())
    assert not wants(LEVELS, request(obset="002"), event())
    file_only = SubscriptionRequest(archive_id="jw01011001001_01101_00001_nrca1_cal")
    assert wants(LEVELS, file_only, event(mission="KECK", propid="X"))
    assert not wants(LEVELS, file_only, event(archive_ids=["other"]))


async def test_a_jwst_subscription_without_a_level_gets_the_missions_default_and_keck_none() -> None:
    assert (await checked(LEVELS, request())).min_level == "2b"
    assert (await checked(LEVELS, request(min_level="2A"))).min_level == "2a"
    assert (await checked(LEVELS, SubscriptionRequest(mission="KECK", propid="U1"))).min_level is None
    with pytest.raises(Refused) as refused:
        await checked(LEVELS, request(min_level="0"))
    assert refused.value.field == "min_level"


def test_fast_sends_the_first_at_once_and_folds_a_burst_into_one_after_the_window() -> None:
    # 10:00 sent; 10:00.5 and 10:00.9 wait for 10:01 and go as one; 10:05 is alone again.
    sends = fast_sends(at(0, 0.5, 0.9, 5), WINDOW, per_hour=6, until=T0 + timedelta(hours=2))
    assert sends == at(0, 1, 5)


def test_fast_counts_what_still_waits_only_once_its_time_has_come() -> None:
    assert fast_sends(at(0, 0.5), WINDOW, per_hour=6, until=T0 + timedelta(seconds=45)) == at(0)


def test_the_hourly_cap_turns_a_storm_into_a_few_messages() -> None:
    # An event every two minutes for two hours: 3 an hour at most, the rest waiting.
    storm = [2.0 * n for n in range(60)]
    sends = fast_sends(at(*storm), WINDOW, per_hour=3, until=T0 + timedelta(hours=3))
    # Three at once; then each waits for the oldest of the last three to be an hour old; what came after 11:04
    # goes as one at 12:00.
    assert sends == at(0, 2, 4, 60, 62, 64, 120)
    for i, send in enumerate(sends):
        within_an_hour = [s for s in sends[: i + 1] if s > send - timedelta(hours=1)]
        assert len(within_an_hour) <= 3


def test_digests_make_one_message_per_period_reached() -> None:
    daily = request(frequency="daily", time_of_day="08:00", time_zone="UTC")
    # Monday 10:00, 12:00, Tuesday 09:00: Tuesday's 08:00 and Wednesday's 08:00.
    times = at(0, 120, 23 * 60)
    assert digest_sends(daily, times, until=T0 + timedelta(days=3)) == [
        datetime(2026, 11, 3, 8, tzinfo=UTC),
        datetime(2026, 11, 4, 8, tzinfo=UTC),
    ]
    # Wednesday's has not come yet on Tuesday noon.
    assert digest_sends(daily, times, until=datetime(2026, 11, 3, 12, tzinfo=UTC)) == [
        datetime(2026, 11, 3, 8, tzinfo=UTC)
    ]
    weekly = request(frequency="weekly")
    assert len(digest_sends(weekly, times, until=T0 + timedelta(days=8))) == 1


async def test_a_summary_counts_events_notices_messages_and_triggers() -> None:
    events = [
        event(0),
        event(0.2, event_id="r", type="repro"),
        event(0.4, event_id="low", level="2a"),
        event(30, event_id="p", type="public"),
    ]
    preview = summarise(
        LEVELS,
        await checked(LEVELS, request(frequency="fast", triggers=["new", "public"])),
        events,
        now=T0 + timedelta(days=1),
        coalesce_window=60,
        fast_per_hour=6,
    )
    assert (preview.days, preview.events, preview.notices, preview.messages) == (30, 4, 2, 2)
    assert preview.by_trigger == {"new": 1, "first": 0, "repro": 0, "public": 1}
    assert (preview.first, preview.last) == (T0, T0 + timedelta(minutes=30))
    nothing = summarise(LEVELS, request(propid="9"), events, now=T0, coalesce_window=60, fast_per_hour=6)
    assert (nothing.notices, nothing.messages, nothing.first) == (0, 0, None)
