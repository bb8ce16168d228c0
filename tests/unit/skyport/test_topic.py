"""Topic matching in the in-process bus follows RabbitMQ's rules."""

from __future__ import annotations

import pytest

from skyport.bus.topic import topic_matches


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("dataset.new.jwst.2b.1011", "dataset.new.jwst.2b.1011", True),
        ("dataset.*.jwst.2b.*", "dataset.public.jwst.2b.96090", True),
        ("dataset.*.jwst.2b.*", "dataset.public.jwst.2b", False),
        ("dataset.#", "dataset.new.keck.0.2026b_u123", True),
        ("dataset.#", "dataset", True),
        ("#", "transfer.received", True),
        ("#", "", True),
        ("#.1011", "dataset.new.jwst.2b.1011", True),
        ("#.1011", "dataset.new.jwst.2b.10110", False),
        ("dataset.#.2b.#", "dataset.new.jwst.2b.1011", True),
        ("dataset.#.2b.#", "dataset.new.jwst.2a.1011", False),
        ("*.received", "transfer.received", True),
        ("*.received", "received", False),
        ("transfer.received", "transfer.received.extra", False),
        ("file.*", "file.archived", True),
    ],
)
def test_topic_matching(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected
