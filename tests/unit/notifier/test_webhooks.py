"""What a webhook receiver's answer means, which URLs are accepted, and the signature a receiver checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.notifier.webhooks import check_url, outcome_of, retry_after, signature, verify


def test_answers_are_sorted_into_sent_retried_stopped_and_refused() -> None:
    assert [outcome_of(s) for s in (200, 204, 500, 503, 429, 410, 404, 400, 301)] == [
        "accepted",
        "accepted",
        "temporary",
        "temporary",
        "temporary",
        "permanent",
        "rejected",
        "rejected",
        "rejected",
    ]


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after("120", now) == 120.0
    assert retry_after("Tue, 01 Dec 2026 12:00:30 GMT", now) == 30.0
    assert retry_after("Tue, 01 Dec 2026 11:00:00 GMT", now) == 0.0
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


def test_a_plain_http_receiver_is_refused_unless_allowed() -> None:
    assert check_url("https://example.org/hook", allow_http=False) == "https://example.org/hook"
    with pytest.raises(ValueError, match="https"):
        check_url("http://example.org/hook", allow_http=False)
    assert check_url("http://127.0.0.1:8080/hook", allow_http=True) == "http://127.0.0.1:8080/hook"
    with pytest.raises(ValueError, match="must be https"):
        check_url("ftp://example.org/hook", allow_http=True)
    with pytest.raises(ValueError, match="host"):
        check_url("https:///hook", allow_http=False)


def test_a_signature_holds_for_its_body_and_time_only() -> None:
    body = b'{"notices":[]}'
    header = signature("secret", 1_800_000_000, body)
    assert verify("secret", header, body, now=1_800_000_010)
    assert not verify("secret", header, body + b" ", now=1_800_000_010)
    assert not verify("other", header, body, now=1_800_000_010)
    assert not verify("secret", header, body, now=1_800_001_000)  # an old body replayed
    assert not verify("secret", "v1=abc", body)
