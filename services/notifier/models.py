"""The notifier's own types: a subscription as asked for and as kept, and the words it is made of."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Trigger = Literal["new", "first", "repro", "public"]
Frequency = Literal["fast", "hourly", "daily", "weekly", "monthly"]
Channel = Literal["email", "webhook", "page"]
TRIGGERS: tuple[Trigger, ...] = ("new", "first", "repro", "public")

_WORD = r"^[A-Za-z0-9_\-]{1,64}$"
_ARCHIVE_ID = r"^[A-Za-z0-9_.\-]{1,128}$"
_TIME = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class SubscriptionRequest(BaseModel):
    """What a person asks for (``POST /v1/subscriptions``; ``skyport notifier subscribe``).

    A program (``mission`` and ``propid``), an obset of a program (and ``obset``), or one file (``archive_id``,
    with or without its program). ``min_level`` is "this level or above" in the mission's level order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mission: str | None = Field(default=None, pattern=_WORD)
    propid: str | None = Field(default=None, pattern=_WORD)
    obset: str | None = Field(default=None, pattern=_WORD)
    archive_id: str | None = Field(default=None, pattern=_ARCHIVE_ID)
    triggers: list[Trigger] = Field(default_factory=lambda: list(TRIGGERS), min_length=1, max_length=4)
    min_level: str | None = Field(
        default=None,
        pattern=_WORD,
        description="A level of the mission; none: the mission's notify_default_level (JWST 2b), if it has one",
    )
    or_above: bool = Field(default=True, description="min_level or above (true) or min_level only (false)")
    frequency: Frequency = "daily"
    time_of_day: str = Field(default="08:00", pattern=_TIME, description="HH:MM in time_zone")
    time_zone: str = Field(default="UTC", min_length=1, max_length=64, description="An IANA time zone name")
    channel: Channel = "email"
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="The receiver of a webhook subscription (https outside development)"
    )

    @field_validator("mission")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return None if value is None else value.upper()

    @field_validator("triggers")
    @classmethod
    def _distinct(cls, value: list[Trigger]) -> list[Trigger]:
        return [trigger for trigger in TRIGGERS if trigger in value]

    @model_validator(mode="after")
    def _what(self) -> Self:
        if self.archive_id is None and (self.mission is None or self.propid is None):
            raise ValueError("name a program (mission and propid), an obset of one (and obset), or an archive_id")
        if (self.mission is None) != (self.propid is None):
            raise ValueError("mission and propid come together")
        if self.obset is not None and self.archive_id is not None:
            raise ValueError("an obset or an archive_id, not both")
        if self.min_level is not None and self.mission is None:
            raise ValueError("min_level is in a mission's level order: name the mission (and propid)")
        if (self.channel == "webhook") != (self.webhook_url is not None):
            raise ValueError("a webhook subscription names its webhook_url, and only a webhook subscription does")
        return self

    @property
    def local_time(self) -> time:
        hours, minutes = self.time_of_day.split(":")
        return time(int(hours), int(minutes))


class Subscription(BaseModel):
    """A subscription as kept, and as the API answers it."""

    model_config = ConfigDict(frozen=True)

    subscription_id: int
    username: str
    email: str
    mission: str | None
    propid: str | None
    obset: str | None
    archive_id: str | None
    triggers: list[Trigger]
    min_level: str | None
    or_above: bool = True
    frequency: Frequency
    time_of_day: str
    time_zone: str
    channel: Channel
    webhook_url: str | None = None
    active: bool
    stopped_at: datetime | None
    stopped_reason: str | None
    created_at: datetime

    @property
    def what(self) -> str:
        """The subscription's object in words: ``KECK 2026A_U123``, ``KECK 2026A_U123 obset 002``, a file."""
        if self.archive_id is not None:
            return f"file {self.archive_id}"
        text = f"{self.mission} {self.propid}"
        return text if self.obset is None else f"{text} obset {self.obset}"


class SubscriptionCreated(Subscription):
    """A subscription as made: a webhook subscription's signing secret is in this answer, and in no other."""

    webhook_secret: str | None = None


class SubscriptionList(BaseModel):
    subscriptions: list[Subscription]


class SubscriptionChange(BaseModel):
    """``PATCH /v1/subscriptions/{id}``: the settings to change; what is left out stays as it is.

    What a subscription is about (program, obset, file) is not changed here: that is another subscription.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    triggers: list[Trigger] | None = Field(default=None, min_length=1, max_length=4)
    min_level: str | None = Field(default=None, pattern=_WORD)
    or_above: bool | None = None
    frequency: Frequency | None = None
    time_of_day: str | None = Field(default=None, pattern=_TIME)
    time_zone: str | None = Field(default=None, min_length=1, max_length=64)
    channel: Channel | None = None
    webhook_url: str | None = Field(default=None, max_length=2048)

    def changes(self) -> dict[str, object]:
        """The fields the body names, with their new values (``min_level: null`` clears the level)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class Preview(BaseModel):
    """What a subscription's settings would have done over the last ``days`` days (``POST .../preview``)."""

    days: int
    events: int = Field(description="Dataset events of the program or file that the person may see now")
    notices: int = Field(description="Of those, the ones the triggers and level keep: one notice each")
    messages: int = Field(description="Emails (or webhook POSTs, or in-page notices) after coalescing, cap, digest")
    by_trigger: dict[Trigger, int]
    first: datetime | None
    last: datetime | None


class MissionLevels(BaseModel):
    mission: str
    levels: list[str] = Field(description="Lowest first")
    default_level: str | None = Field(description="A subscription's level when it names none (or above)")


class Levels(BaseModel):
    """``GET /v1/subscriptions/levels``: what ``min_level`` may be, mission by mission."""

    missions: list[MissionLevels]


class InboxNotice(BaseModel):
    """One in-page notice: one program, trigger and level of one delivery."""

    id: int
    created_at: datetime
    read: bool
    subject: str
    subscription_id: int | None
    trigger: str
    mission: str
    propid: str
    title: str | None = None
    level: str
    obsets: list[str]
    files: list[dict[str, Any]]
    repro: list[dict[str, Any]] = Field(default_factory=list)
    notices: list[dict[str, Any]] = Field(description="The events as an email's JSON attachment holds them")


class Inbox(BaseModel):
    notices: list[InboxNotice]
    unread: int


class InboxRead(BaseModel):
    """``POST /v1/inbox/read``: some notices (``ids``) or every one (``all``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ids: list[int] = Field(default_factory=list, max_length=1000)
    all: bool = False

    @model_validator(mode="after")
    def _some(self) -> Self:
        if not self.ids and not self.all:
            raise ValueError("name the notices read (ids) or say all")
        return self
