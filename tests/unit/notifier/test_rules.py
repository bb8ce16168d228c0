"""The notifier's rules without servers: digest times, level order, signed links, subscription requests."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest
from pydantic import ValidationError

from services.notifier.levels import LevelOrder
from services.notifier.mailer import outcome_of
from services.notifier.models import SubscriptionRequest
from services.notifier.schedule import next_delivery
from services.notifier.signing import Signer

LEVELS = LevelOrder({"JWST": ["1b", "2a", "2b", "3"], "KECK": ["0", "1", "2"]})


def test_a_daily_digest_is_at_the_subscribers_time_in_their_zone() -> None:
    # 18:00 UTC is 08:00 in Honolulu; at 18:30 UTC the next 08:00 there is tomorrow's.
    after = datetime(2026, 3, 15, 18, 30, tzinfo=UTC)

    assert next_delivery("daily", time(8, 0), "Pacific/Honolulu", after) == datetime(2026, 3, 16, 18, 0, tzinfo=UTC)
    assert next_delivery("daily", time(20, 0), "UTC", after) == datetime(2026, 3, 15, 20, 0, tzinfo=UTC)
    assert next_delivery("fast", time(8, 0), "UTC", after) == after


def test_weekly_is_monday_monthly_the_first_hourly_the_next_hour() -> None:
    after = datetime(2026, 3, 15, 18, 30, tzinfo=UTC)  # a Sunday

    assert next_delivery("weekly", time(8, 0), "UTC", after) == datetime(2026, 3, 16, 8, 0, tzinfo=UTC)
    assert next_delivery("monthly", time(8, 0), "UTC", after) == datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
    assert next_delivery("hourly", time(8, 15), "UTC", after) == datetime(2026, 3, 15, 19, 15, tzinfo=UTC)


def test_a_daily_digest_keeps_its_local_hour_across_a_change_of_summer_time() -> None:
    before = next_delivery("daily", time(8, 0), "Europe/Paris", datetime(2026, 3, 27, 12, 0, tzinfo=UTC))
    after = next_delivery("daily", time(8, 0), "Europe/Paris", datetime(2026, 3, 29, 12, 0, tzinfo=UTC))

    assert (before.hour, after.hour) == (7, 6)  # 08:00 CET, then 08:00 CEST


def test_level_or_above_follows_the_missions_order_not_the_alphabet() -> None:
    # "2b or above" matches 2b and 3, never 2a; a string comparison would put "3" below "2b" in other orders.
    assert "2b" in LEVELS.at_or_below("JWST", "3")
    assert "2b" in LEVELS.at_or_below("JWST", "2b")
    assert "2b" not in LEVELS.at_or_below("JWST", "2a")
    assert LEVELS.level("jwst", "2B") == "2b"
    with pytest.raises(ValueError, match="lowest first: 1b, 2a, 2b, 3"):
        LEVELS.level("JWST", "4")


def test_a_signature_is_for_one_subscription_and_one_purpose() -> None:
    signer = Signer("k" * 40, "https://skyport.test/")
    signature = signer.sign("unsubscribe", "7")

    assert signer.verify("unsubscribe", "7", signature)
    assert not signer.verify("unsubscribe", "8", signature)
    assert not signer.verify("download", "7", signature)
    assert not Signer("x" * 40, "https://skyport.test").verify("unsubscribe", "7", signature)
    assert signer.unsubscribe_url([7]).startswith("https://skyport.test/v1/unsubscribe?s=7&sig=")


def test_a_subscription_names_a_program_an_obset_or_a_file() -> None:
    assert SubscriptionRequest(mission="jwst", propid="1011").mission == "JWST"
    assert SubscriptionRequest(archive_id="HI.20260315.12345.67").frequency == "daily"
    for wrong in ({"mission": "JWST"}, {"obset": "001"}, {"archive_id": "X", "obset": "1", "propid": "1"}):
        with pytest.raises(ValidationError):
            SubscriptionRequest.model_validate(wrong)
    with pytest.raises(ValidationError):
        SubscriptionRequest(mission="JWST", propid="1011", triggers=["sometimes"])  # type: ignore[list-item]


def test_smtp_answers_are_accepted_temporary_or_permanent() -> None:
    assert [outcome_of(c) for c in (250, 421, 450, 550, 554, None)] == [
        "accepted",
        "temporary",
        "temporary",
        "permanent",
        "permanent",
        "temporary",
    ]
