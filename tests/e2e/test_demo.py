"""`make demo`'s program: every service in one process on the in-process bus and an embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import html
import json
import os
import re
import signal
import sys
from email.message import EmailMessage
from pathlib import Path

import aiohttp

from services.demo import PROPID
from tests.support.flow import REPO, free_port
from tests.support.waiting import eventually


def _first_email(folder: Path) -> EmailMessage | None:
    """The first message the demo's mailbox kept, parsed; None while there is none."""
    files = sorted(folder.glob("*.eml"))
    if not files:
        return None
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_the_demo_runs_a_night_in_one_process_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYPORT_")}  # the demo's own defaults
    env.update(
        SKYPORT_RECEIVER_PORT=str(free_port()),
        SKYPORT_CATALOG_PORT=str(free_port()),
    )
    env.update(SKYPORT_NOTIFIER_PORT=str(free_port()))
    port = free_port()
    mail_port = free_port()
    home = tmp_path / "demo"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.demo",
        "--home",
        str(home),
        "--count",
        "3",
        "--rate",
        "2",
        "--size",
        "200KB",
        "--port",
        str(port),
        "--mail-port",
        str(mail_port),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output: list[str] = []

    async def read_until(pattern: str) -> re.Match[str]:
        while True:
            raw = await proc.stdout.readline()  # type: ignore[union-attr]
            if not raw:
                raise AssertionError(f"the demo ended before {pattern!r}:\n{''.join(output)}")
            output.append(raw.decode(errors="replace"))
            if match := re.search(pattern, output[-1]):
                return match

    try:
        token = (await asyncio.wait_for(read_until(r"Sign in as the PI \(alice\):\s+(\S+)"), 120)).group(1)
        mail_page = (await asyncio.wait_for(read_until(r"Emails Skyport sent: (\S+)"), 10)).group(1)
        assert mail_page == f"http://127.0.0.1:{mail_port}/mail/"
        await asyncio.wait_for(read_until(r"3 files written, 3 in the catalog"), 120)
        # Not a terminal: progress is a line now and then (and one when the night is catalogued), not every second.
        assert sum("files written" in line for line in output) <= 2, "".join(output)
        # The page is served, and alice's stream holds the night's files.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/") as response:
                assert response.status == 200
                assert "text/html" in response.headers["Content-Type"]
            async with http.ws_connect(
                f"http://127.0.0.1:{port}/v1/stream", headers={"Authorization": f"Bearer {token}"}
            ) as ws:
                kinds = []
                while "live" not in kinds:
                    kinds.append((await asyncio.wait_for(ws.receive_json(), 30))["type"])
        assert kinds.count("file") >= 3
        # Alice is subscribed to her program (fast): the night's first files reach her as an email in the mailbox.
        await eventually(lambda: _first_email(home / "mail") is not None, timeout=60, what="an email in the mailbox")
        message = _first_email(home / "mail")
        assert message is not None
        assert message["To"] == "alice@example.org"
        [attachment] = [p for p in message.iter_attachments() if p.get_filename() == "skyport-notice.json"]
        assert {notice["propid"] for notice in json.loads(attachment.get_content())["notices"]} == {PROPID}
        async with aiohttp.ClientSession() as http:
            async with http.get(mail_page) as response:
                assert response.status == 200
                listing = await response.text()
            name = next(iter(sorted((home / "mail").glob("*.eml")))).name
            assert f'href="/mail/{name}"' in listing
            assert html.escape(str(message["Subject"])) in listing
            async with http.get(f"{mail_page}{name}") as response:
                shown = await response.text()
            assert "skyport-notice.json" in shown
            assert '<iframe sandbox=""' in shown  # the email's HTML part, which can run nothing
            # Its links go through the observer page's address, which forwards them to the notifier: the one-click
            # unsubscribe answers there without signing in.
            unsubscribe = str(message["List-Unsubscribe"]).strip("<>")
            assert unsubscribe.startswith(f"http://127.0.0.1:{port}/v1/unsubscribe?")
            async with http.get(unsubscribe) as response:
                assert response.status == 200
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(read_until(r"Skyport demo stopped"), 60)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class Demo:
    """``python -m services.demo`` as a user runs it, its output read line by line."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.output: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> None:
        self.output = []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.demo",
            "--home",
            str(self.home),
            "--port",
            str(free_port()),
            "--mail-port",
            str(free_port()),
            *args,
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def read_until(self, pattern: str, timeout: float = 120) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        async def read() -> None:
            while True:
                raw = await stdout.readline()
                if not raw:
                    raise AssertionError(f"the demo ended before {pattern!r}:\n{''.join(self.output)}")
                self.output.append(raw.decode(errors="replace"))
                if re.search(pattern, self.output[-1]):
                    return

        await asyncio.wait_for(read(), timeout)

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        await self.read_until(r"Skyport demo stopped", 60)
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def night_files(home: Path) -> dict[str, str]:
    return {
        str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (home / "observatory").rglob("*.fits")
    }


async def test_a_restarted_demo_continues_the_night_and_rewrites_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYPORT_")}
    env.update(
        SKYPORT_RECEIVER_PORT=str(free_port()),
        SKYPORT_CATALOG_PORT=str(free_port()),
        SKYPORT_NOTIFIER_PORT=str(free_port()),
    )
    demo = Demo(tmp_path / "demo", env)
    try:
        await demo.start("--count", "3", "--rate", "4", "--size", "100KB")
        await demo.read_until(r"3 files written, 3 in the catalog")
        await demo.stop()
        first = night_files(demo.home)
        assert len(first) == 3

        await demo.start("--count", "2", "--rate", "4", "--size", "100KB")
        await demo.read_until(r"2 files written, 2 in the catalog")
        await demo.stop()
    finally:
        demo.kill()

    after = night_files(demo.home)
    assert len(after) == 5  # two new files, under new names
    assert {name: after[name] for name in first} == first  # the first run's files are untouched
