"""``skyport monitor status``, ``retry`` and ``closed``: what the monitor holds, sending files again, closed files."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from services.monitor.journal import FileState, Journal, JournalMissing
from services.monitor.settings import MonitorJournalSettings

_T = TypeVar("_T")


def add_commands(commands: Any) -> None:
    parser = commands.add_parser("monitor", help="the observatory monitor's journal: status and retries")
    sub = parser.add_subparsers(dest="monitor_command", required=True)
    status = sub.add_parser("status", help="files per state, and every problem with its reason")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--limit", type=int, default=50, help="problems to list")
    status.set_defaults(func=_status)
    retry = sub.add_parser("retry", help="send files back to the start (after fixing their cause)")
    retry.add_argument("paths", nargs="*", metavar="PATH", help="files, relative to the watch root")
    retry.add_argument("--failed", action="store_true", help="every file the archive failed")
    retry.add_argument("--invalid", action="store_true", help="every file DEP found invalid")
    retry.set_defaults(func=_retry)
    closed = sub.add_parser(
        "closed",
        help="the instrument's software says these files are closed (the 'signal' completion rule)",
        description="Tell the monitor that the instrument has finished writing these files: the equivalent of a "
        "keyword callback, for instruments whose completion rule is 'signal'. Works while the monitor is down too.",
    )
    closed.add_argument("paths", nargs="+", metavar="PATH", help="files: absolute, or relative to the watch root")
    closed.set_defaults(func=_closed)


def _with_journal(settings: MonitorJournalSettings, use: Callable[[Journal], Awaitable[_T]]) -> _T | None:
    """Run ``use`` on the existing journal; None (after one line on stderr) when there is none: never create one."""

    async def main() -> _T:
        journal = await Journal.open(settings.journal_path, create=False)
        try:
            return await use(journal)
        finally:
            await journal.close()

    try:
        return asyncio.run(main())
    except JournalMissing as exc:
        print(f"skyport monitor: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    settings = MonitorJournalSettings()

    async def main(journal: Journal) -> dict[str, Any]:
        counts = await journal.counts()
        problems = await journal.problems(args.limit)
        history = await journal.history(args.limit)
        return {
            "journal": str(settings.journal_path),
            "counts": {state.value: counts.get(state, 0) for state in FileState},
            "problems": [
                {
                    "path": p.path,
                    "state": p.state.value,
                    "archive_id": p.archive_id,
                    "reason": p.reason,
                    "attempts": p.attempts,
                    "next_attempt_at": _iso(p.next_attempt_at) if p.state in _RETRIED else None,
                    "updated_at": _iso(p.updated_at),
                }
                for p in problems
            ],
            "history": [{**h, "at": _iso(float(str(h["at"])))} for h in history],
        }

    report = _with_journal(settings, main)
    if report is None:
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"journal {report['journal']}")
    print("  ".join(f"{state}: {count}" for state, count in report["counts"].items()))
    if report["problems"]:
        print("\nnow:")
    for p in report["problems"]:
        retrying = f" (retry {p['attempts']} at {p['next_attempt_at']})" if p["next_attempt_at"] else ""
        print(f"  {p['state']:<9} {p['path']}{retrying}\n            {p['reason']}")
    if report["history"]:
        print("\nrecent problems, newest first:")
    for h in report["history"]:
        print(f"  {h['at']}  {h['path']}: {h['reason']}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    chosen = {FileState.FAILED: args.failed, FileState.INVALID: args.invalid}
    states = [state for state, wanted in chosen.items() if wanted]
    if not args.paths and not states:
        print("skyport monitor retry: name files, or --failed / --invalid")
        return 2
    settings = MonitorJournalSettings()
    count = _with_journal(settings, lambda journal: journal.reset(args.paths, states))
    if count is None:
        return 1
    print(f"{count} file(s) sent back to the start; a running monitor takes them within a second")
    return 0


def _closed(args: argparse.Namespace) -> int:
    settings = MonitorJournalSettings()
    root = settings.watch_root.resolve()
    files: list[tuple[str, int, int]] = []
    for given in args.paths:
        path = Path(given) if os.path.isabs(given) else root / given
        try:
            relative = path.resolve().relative_to(root).as_posix()
            stat = path.stat()
        except ValueError:
            print(f"skyport monitor closed: {given} is not below the watch root {root} (SKYPORT_WATCH_ROOT)")
            return 2
        except OSError as exc:
            print(f"skyport monitor closed: {given}: {exc.strerror}")
            return 2
        files.append((relative, stat.st_size, stat.st_mtime_ns))

    async def main(journal: Journal) -> int:
        for relative, size, mtime_ns in files:
            await journal.signal_closed(relative, size, mtime_ns)
        return len(files)

    count = _with_journal(settings, main)
    if count is None:
        return 1
    print(f"{count} file(s) closed; a running monitor takes them within a second")
    return 0


# Files waiting for an automatic retry: the only ones with a next attempt worth showing.
_RETRIED = (FileState.DETECTED, FileState.EVALUATED, FileState.UPLOADED)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
