"""The bus topology as data: every command has one queue to go to; each event type is a command or news."""

from __future__ import annotations

from dataclasses import replace

import pytest

from skyport.bus import OutgoingMessage
from skyport.bus.topic import topic_matches
from skyport.bus.topology import (
    COMMANDS,
    DEAD_LETTER_EXCHANGE,
    WORK_QUEUES,
    is_command,
    queue_arguments,
    retry_queue_arguments,
    work_queues,
)
from skyport.events import EVENT_MODELS, CloudEvent, DatasetNew, IngestFailed
from skyport.events.envelope import EventData

DATA_EVENT_FAMILIES = ("dataset.", "access.")


@pytest.mark.parametrize("event_type", sorted(COMMANDS))
def test_every_command_has_exactly_one_work_queue_to_go_to(event_type: str) -> None:
    # A command with no queue would fail every publish; with two, two services would do the same work.
    takers = [q.name for q in WORK_QUEUES if any(topic_matches(p, event_type) for p in q.bindings)]

    assert len(takers) == 1, takers


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_every_event_type_is_either_a_command_or_a_data_event(event_type: str) -> None:
    # A new event type must be decided: work some service must do (mandatory), or news for whoever listens.
    assert is_command(event_type) != event_type.startswith(DATA_EVENT_FAMILIES)


def test_commands_are_routed_by_their_event_type() -> None:
    # The work queues bind the event type itself, so a command must keep the routing key that is exactly that.
    for event_type in COMMANDS:
        assert EVENT_MODELS[event_type].routing_key is EventData.routing_key, event_type


def test_a_command_is_published_as_mandatory_and_a_data_event_is_not() -> None:
    command = OutgoingMessage.from_event(CloudEvent.create(IngestFailed(transfer_id="t", reason="r"), source="/t"))
    news = OutgoingMessage.from_event(
        CloudEvent.create(DatasetNew(mission="KECK", level="0", propid="1011", obsets=["001"]), source="/t")
    )

    assert command.must_be_routed
    assert not news.must_be_routed
    assert replace(news, mandatory=True).must_be_routed


def test_work_queues_are_quorum_queues_that_dead_letter_and_retry_into_themselves() -> None:
    assert queue_arguments()["x-queue-type"] == "quorum"
    assert queue_arguments()["x-dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
    assert queue_arguments()["x-delivery-limit"] > 0
    retry = retry_queue_arguments("ingestor.transfer-received")
    assert retry["x-dead-letter-routing-key"] == "ingestor.transfer-received"
    assert retry["x-dead-letter-exchange"] == ""  # the default exchange: straight back to the queue
    assert "x-queue-type" not in queue_arguments(transient=True)


def test_a_service_gets_only_its_own_queues() -> None:
    assert [q.name for q in work_queues({"ingestor"})] == ["ingestor.transfer-received"]
    assert work_queues({"gateway", "monitor"}) == []
    assert work_queues() == list(WORK_QUEUES)
