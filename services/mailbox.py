"""The demo's and ``make run``'s mailbox: an SMTP server that keeps every message as an .eml file, and a page to
read them.

A new user has no mail server, yet should see the emails Skyport would send. The notifier sends to this server as
to any other (SMTP, ``SKYPORT_SMTP_SECURITY=none`` on 127.0.0.1); nothing here is part of the notifier, which
neither knows nor cares that its mail stops here. Each accepted message is written to the folder as it came
(``<UTC time>-<random>.eml``, readable by any mail program), and ``/mail/`` lists them newest first: subject, to,
date; ``/mail/<name>`` shows one, its text part, its HTML part in a sandboxed frame (no scripts, no same origin,
and the page's Content-Security-Policy, which the frame inherits, loads nothing from elsewhere), and its
attachments' names; ``/mail/<name>/raw`` gives the file itself.

``python -m services.mailbox --folder var/mail`` runs it alone (``deploy/dev/run-local``); the demo runs it in its
own event loop (:func:`serve`). A development tool: it listens on 127.0.0.1 and asks no one for credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import html
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# A message's name as the folder keeps it: nothing that could climb out of the folder.
_NAME = re.compile(r"^[0-9TZ.\-]+-[0-9a-f]{8}\.eml$")
# The frame inherits this policy (srcdoc): an email's HTML shows, but fetches nothing, runs nothing, posts nothing.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; form-action 'none'"
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;width:100%}"
    "td,th{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd}pre{white-space:pre-wrap;background:#f6f6f6;"
    "padding:1em}iframe{width:100%;height:40em;border:1px solid #ccc}dt{font-weight:bold}"
)


class EmlFolder:
    """aiosmtpd's handler: each message it accepts becomes one .eml file in ``folder``, whole, as it came.

    The file is written under a temporary name and renamed, so the page never lists half a message.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(4)}.eml"
        content = bytes(envelope.original_content or envelope.content)
        await asyncio.to_thread(self._write, name, content)
        return f"250 OK: kept as {name}"

    def _write(self, name: str, content: bytes) -> None:
        partial = self.folder / f".{name}.partial"
        partial.write_bytes(content)
        os.replace(partial, self.folder / name)


@dataclass(frozen=True)
class Summary:
    """One message as the list shows it."""

    name: str
    subject: str
    to: str
    date: str


def read(path: Path) -> EmailMessage:
    with path.open("rb") as source:
        message = email.message_from_binary_file(source, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # the default policy makes EmailMessage
    return message


def messages(folder: Path) -> list[Summary]:
    """The folder's messages, newest first (their names start with the time they came)."""
    found = []
    for path in sorted(folder.glob("*.eml"), reverse=True):
        if not _NAME.match(path.name):
            continue
        with contextlib.suppress(OSError):
            message = read(path)
            found.append(
                Summary(path.name, str(message["Subject"] or ""), str(message["To"] or ""), str(message["Date"] or ""))
            )
    return found


FOLDER = web.AppKey("folder", Path)


def app(folder: Path) -> web.Application:
    """The mailbox's pages, reading ``folder`` at each request (the SMTP server may be another process)."""
    application = web.Application()
    application[FOLDER] = folder
    application.router.add_get("/", _to_list)
    application.router.add_get("/mail", _to_list)
    application.router.add_get("/mail/", _list)
    application.router.add_get("/mail/{name}", _show)
    application.router.add_get("/mail/{name}/raw", _raw)
    return application


async def _to_list(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/mail/")


def _page(title: str, body: str) -> web.Response:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    response = web.Response(text=text, content_type="text/html")
    response.headers["Content-Security-Policy"] = _POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _list(request: web.Request) -> web.Response:
    folder = request.app[FOLDER]
    found = await asyncio.to_thread(messages, folder)
    rows = "".join(
        f'<tr><td><a href="/mail/{m.name}">{html.escape(m.subject) or "(no subject)"}</a></td>'
        f"<td>{html.escape(m.to)}</td><td>{html.escape(m.date)}</td></tr>"
        for m in found
    )
    body = (
        f"<h1>Emails Skyport sent</h1><p>{len(found)} message(s), newest first, kept as .eml files in "
        f"<code>{html.escape(str(folder))}</code>. This page does not refresh itself: reload it.</p>"
        f"<table><thead><tr><th>Subject</th><th>To</th><th>Date</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return _page("Emails Skyport sent", body)


def _path(request: web.Request) -> Path:
    name = request.match_info["name"]
    path = request.app[FOLDER] / name
    if not _NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound(text="no such message")
    return path


async def _show(request: web.Request) -> web.Response:
    path = _path(request)
    message = await asyncio.to_thread(read, path)
    text = message.get_body(preferencelist=("plain",))
    rich = message.get_body(preferencelist=("html",))
    attachments = [part.get_filename() or "(unnamed)" for part in message.iter_attachments()]
    headers = "".join(
        f"<dt>{name}</dt><dd>{html.escape(str(message[name] or ''))}</dd>"
        for name in ("Subject", "From", "To", "Date", "Message-ID", "List-Unsubscribe")
        if message[name] is not None
    )
    parts = [f'<p><a href="/mail/">All messages</a> · <a href="/mail/{path.name}/raw">the .eml file</a></p>']
    parts.append(f"<dl>{headers}</dl>")
    if attachments:
        listed = "".join(f"<li>{html.escape(name)}</li>" for name in attachments)
        parts.append(f"<h2>Attachments</h2><ul>{listed}</ul>")
    if rich is not None:
        # An empty sandbox: the email's HTML cannot run scripts, submit forms or reach this page's origin.
        parts.append(f'<h2>HTML part</h2><iframe sandbox="" srcdoc="{html.escape(rich.get_content())}"></iframe>')
    if text is not None:
        parts.append(f"<h2>Text part</h2><pre>{html.escape(text.get_content())}</pre>")
    return _page(str(message["Subject"] or "(no subject)"), "".join(parts))


async def _raw(request: web.Request) -> web.FileResponse:
    path = _path(request)
    return web.FileResponse(
        path, headers={"Content-Type": "message/rfc822", "Content-Disposition": f'attachment; filename="{path.name}"'}
    )


@dataclass(frozen=True)
class Running:
    """The mailbox's two servers as started: where the SMTP server and the page listen."""

    smtp_port: int
    page_url: str


@contextlib.asynccontextmanager
async def serve(
    folder: Path, *, host: str = "127.0.0.1", smtp_port: int = 0, http_port: int = 0
) -> AsyncIterator[Running]:
    """The SMTP server and the page in the running event loop (port 0: any free one), until the block ends."""
    handler = EmlFolder(folder)
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(
        lambda: SMTP(handler, hostname="skyport-mailbox", data_size_limit=MAX_MESSAGE_BYTES), host, smtp_port
    )
    runner = web.AppRunner(app(folder), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, http_port)
        await site.start()
        page_port = runner.addresses[0][1]
        yield Running(smtp.sockets[0].getsockname()[1], f"http://{host}:{page_port}/mail/")
    finally:
        await runner.cleanup()
        smtp.close()
        await smtp.wait_closed()


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(args.folder, host=args.host, smtp_port=args.smtp_port, http_port=args.port) as running:
        print(
            f"mailbox: SMTP on {args.host}:{running.smtp_port}, messages in {args.folder}, read them at "
            f"{running.page_url}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.mailbox",
        description="An SMTP server that keeps every message as an .eml file, and a page that lists and shows them "
        "(development only: no credentials, no TLS).",
    )
    parser.add_argument("--folder", type=Path, default=Path("var/mail"), help="where the .eml files go")
    parser.add_argument("--host", default="127.0.0.1", help="the address of both servers (default 127.0.0.1)")
    parser.add_argument("--smtp-port", type=int, default=8025, help="the SMTP server's port (default 8025)")
    parser.add_argument("--port", type=int, default=8085, help="the page's port (default 8085)")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
