"""An email from the notices of one delivery: sections per program and trigger, text and HTML parts from the
Jinja2 templates, the events as a JSON attachment, and the one-click unsubscribe headers (RFC 8058).

A new kind of message (an invitation, a reminder) is a new pair of templates and a function that builds its
context here; sending, the ledger and the retries stay as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2

from services.notifier.models import Subscription
from services.notifier.signing import Signer

TEMPLATES = Path(__file__).with_name("templates")
ATTACHMENT = "skyport-notice.json"

_VERBS = {"new": "new", "first": "first data", "repro": "reprocessed", "public": "now public"}


@dataclass(frozen=True)
class NoticeItem:
    """One event as one subscriber may see it: its files narrowed to the subscription's and to what is visible."""

    subscription: Subscription
    event_id: str
    event_time: datetime
    trigger: str
    mission: str
    propid: str
    title: str | None
    level: str
    obsets: list[str]
    files: list[dict[str, Any]]
    repro: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        """The legacy five fields, then the files and what a script needs to act on them."""
        return {
            "mission": self.mission,
            "propid": self.propid,
            "obsets": self.obsets,
            "level": self.level,
            "type": self.trigger,
            "files": self.files,
            "repro": self.repro,
            "event_id": self.event_id,
            "time": self.event_time.isoformat(),
            "subscription_id": self.subscription.subscription_id,
        }


@dataclass
class Section:
    """The items of one program, trigger and level, as the email shows them together."""

    mission: str
    propid: str
    title: str | None
    trigger: str
    level: str
    obsets: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    repro: list[dict[str, Any]] = field(default_factory=list)

    @property
    def verb(self) -> str:
        return _VERBS.get(self.trigger, self.trigger)

    @property
    def builds(self) -> list[str]:
        return sorted({r["software_version"] for r in self.repro if r.get("software_version")})


def sections_of(items: Sequence[NoticeItem]) -> list[Section]:
    sections: dict[tuple[str, str, str, str], Section] = {}
    for item in items:
        key = (item.mission, item.propid, item.trigger, item.level)
        section = sections.setdefault(key, Section(item.mission, item.propid, item.title, item.trigger, item.level))
        section.obsets = sorted(set(section.obsets) | set(item.obsets))
        seen = {(f["archive_id"], f["version"]) for f in section.files}
        section.files += [f for f in item.files if (f["archive_id"], f["version"]) not in seen]
        if item.repro is not None and item.repro not in section.repro:
            section.repro.append(item.repro)
    return list(sections.values())


def subject_of(kind: str, sections: Sequence[Section]) -> str:
    files = sum(len(s.files) for s in sections)
    if kind == "digest":
        programs = len({(s.mission, s.propid) for s in sections})
        return f"Skyport digest: {files:,} file{'s' * (files != 1)} in {programs} program{'s' * (programs != 1)}"
    if len(sections) == 1:
        s = sections[0]
        program = f"{s.mission} {s.propid}" + (f" ({s.title})" if s.title else "")
        if s.trigger == "repro" and s.builds:
            return f"{program}: {len(s.files):,} files reprocessed with build {', '.join(s.builds)}"
        noun = "file" if len(s.files) == 1 else "files"
        return f"{program}: {len(s.files):,} {s.verb} {noun} at level {s.level}"
    return f"Skyport: {files:,} files in {len(sections)} updates"


class Composer:
    """Builds the email of one delivery."""

    def __init__(self, signer: Signer, mail_from: str, listed_files: int, page_url: str | None = None) -> None:
        self.signer = signer
        self.page_url = (page_url or signer.public_url).rstrip("/")
        self.mail_from = mail_from
        self.listed_files = listed_files
        self.domain = urlsplit(signer.public_url).hostname or "skyport.invalid"
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["size"] = _size

    def message_id(self, message_key: str) -> str:
        """The same notices claimed again after a crash go out under the same id: a duplicate is recognisable."""
        return f"<{message_key}@{self.domain}>"

    def edit_url(self, subscription_id: int) -> str:
        """The page's edit form of one subscription (the person signs in there; the link itself grants nothing)."""
        return f"{self.page_url}/#/subscriptions/{subscription_id}"

    @staticmethod
    def attachment(items: Sequence[NoticeItem]) -> dict[str, Any]:
        """The notices as a script reads them: the email's JSON attachment, and a webhook's body."""
        return {"notices": [item.as_json() for item in items]}

    def compose(
        self, kind: str, email: str, message_key: str, items: Sequence[NoticeItem], *, now: datetime | None = None
    ) -> tuple[EmailMessage, dict[str, Any]]:
        """The email and its content as the ledger keeps it (what the JSON attachment holds)."""
        sections = sections_of(items)
        subscriptions = {i.subscription.subscription_id: i.subscription for i in items}
        unsubscribe = self.signer.unsubscribe_url(subscriptions)
        context = {
            "kind": kind,
            "sections": sections,
            "listed": self.listed_files,
            "total_files": sum(len(s.files) for s in sections),
            "download_url": self.signer.download_url(message_key),
            "unsubscribe_url": unsubscribe,
            "subscriptions": [
                {
                    "what": s.what,
                    "frequency": s.frequency,
                    "unsubscribe_url": self.signer.unsubscribe_url([i]),
                    "edit_url": self.edit_url(i),
                }
                for i, s in sorted(subscriptions.items())
            ],
        }
        content = self.attachment(items)
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = email
        message["Subject"] = subject_of(kind, sections)
        message["Date"] = format_datetime(now or datetime.now(UTC))
        message["Message-ID"] = self.message_id(message_key) if message_key else make_msgid(domain=self.domain)
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(self.env.get_template("notice.txt").render(context))
        message.add_alternative(self.env.get_template("notice.html").render(context), subtype="html")
        message.add_attachment(
            json.dumps(content, indent=1).encode(), maintype="application", subtype="json", filename=ATTACHMENT
        )
        return message, content


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{value} B"
