"""The demo's mailbox: what the notifier sends by SMTP is kept whole and shown without letting the email act."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib

from services.mailbox import serve


def hostile() -> EmailMessage:
    """An email whose every part would run or fetch something if the page let it."""
    message = EmailMessage()
    message["Subject"] = "<script>alert('subject')</script> 3 new files"
    message["From"] = "Skyport <skyport@localhost>"
    message["To"] = "alice@example.org"
    message["Date"] = "Tue, 01 Dec 2026 22:00:00 +0000"
    message.set_content("3 new files\nhttps://example.org/v1/files/KECK.1\n")
    message.add_alternative(
        '<p>Files</p><script>parent.document.title="owned"</script><img src="https://tracker.example/x.png">',
        subtype="html",
    )
    message.add_attachment(b'{"notices": []}', maintype="application", subtype="json", filename="skyport-notice.json")
    return message


async def test_a_sent_email_is_kept_as_it_came_and_listed(tmp_path: Path) -> None:
    async with serve(tmp_path / "mail") as mailbox, aiohttp.ClientSession() as http:
        sent = hostile()
        await aiosmtplib.send(sent, hostname="127.0.0.1", port=mailbox.smtp_port)

        [kept] = list((tmp_path / "mail").glob("*.eml"))
        again = email.message_from_bytes(kept.read_bytes(), policy=email.policy.default)
        assert again["Subject"] == sent["Subject"]
        assert [p.get_filename() for p in again.iter_attachments()] == ["skyport-notice.json"]

        async with http.get(mailbox.page_url) as response:
            listing = await response.text()
        assert f'href="/mail/{kept.name}"' in listing
        assert "alice@example.org" in listing
        assert "&lt;script&gt;alert(&#x27;subject&#x27;)&lt;/script&gt; 3 new files" in listing
        assert "<script>" not in listing


async def test_a_message_shows_its_parts_and_its_html_can_run_and_fetch_nothing(tmp_path: Path) -> None:
    async with serve(tmp_path / "mail") as mailbox, aiohttp.ClientSession() as http:
        await aiosmtplib.send(hostile(), hostname="127.0.0.1", port=mailbox.smtp_port)
        [kept] = list((tmp_path / "mail").glob("*.eml"))

        async with http.get(f"{mailbox.page_url}{kept.name}") as response:
            assert response.status == 200
            page = await response.text()
            policy = response.headers["Content-Security-Policy"]
        assert "<script>" not in page  # the HTML part is an attribute's escaped text, inside an empty sandbox
        assert '<iframe sandbox="" srcdoc="&lt;p&gt;Files&lt;/p&gt;&lt;script&gt;' in page
        assert "https://example.org/v1/files/KECK.1" in page  # the text part
        assert "skyport-notice.json" in page
        # The frame inherits the page's policy: no script, no image from the tracker.
        assert "default-src 'none'" in policy
        assert "script-src" not in policy

        async with http.get(f"{mailbox.page_url}{kept.name}/raw") as response:
            assert response.headers["Content-Type"] == "message/rfc822"
            assert await response.read() == kept.read_bytes()


async def test_only_the_folders_messages_are_served(tmp_path: Path) -> None:
    (tmp_path / "secret.eml").write_text("Subject: not the mailbox's\n\nno")
    async with serve(tmp_path / "mail") as mailbox, aiohttp.ClientSession() as http:
        for name in ("..%2Fsecret.eml", "secret.eml", "20261201T220000.000000Z-0000000g.eml"):
            async with http.get(f"{mailbox.page_url}{name}") as response:
                assert response.status == 404, name
