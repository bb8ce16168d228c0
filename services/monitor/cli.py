"""``skyport monitor status`` and ``skyport monitor retry``: what the monitor holds, and sending files again."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from services.monitor.journal import FileState, Journal
from services.monitor.settings import MonitorSettings


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


def _status(args: argparse.Namespace) -> int:
    settings = MonitorSettings()

    async def main() -> dict[str, Any]:
        journal = await Journal.open(settings.journal_path)
        try:
            counts = await journal.counts()
            problems = await journal.problems(args.limit)
            history = await journal.history(args.limit)
        finally:
            await journal.close()
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
                    "next_attempt_at": _iso(p.next_attempt_at)
                    if p.state not in (FileState.INVALID, FileState.FAILED)
                    else None,
                    "updated_at": _iso(p.updated_at),
                }
                for p in problems
            ],
            "history": [{**h, "at": _iso(float(str(h["at"])))} for h in history],
        }

    report = asyncio.run(main())
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
    states = [s for s, wanted in ((FileState.FAILED, args.failed), (FileState.INVALID, args.invalid)) if wanted]
    if not args.paths and not states:
        print("skyport monitor retry: name files, or --failed / --invalid")
        return 2
    settings = MonitorSettings()

    async def main() -> int:
        journal = await Journal.open(settings.journal_path)
        try:
            return await journal.reset(args.paths, states)
        finally:
            await journal.close()

    count = asyncio.run(main())
    print(f"{count} file(s) sent back to the start; a running monitor takes them within a second")
    return 0


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
