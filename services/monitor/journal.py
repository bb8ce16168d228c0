"""The monitor's journal (SQLite): a file is recorded before anything else happens to it, and kept until ingested.

States: ``detected`` (needs DEP) → ``evaluated`` (manifest ready, needs upload) → ``uploaded`` (the archive has
it; followed until) → ``ingested``. ``invalid`` (the file itself is bad, quarantined with the reason) and
``failed`` (the archive refused it) end a file's way until an operator retries it. A transient error keeps the
state, counts an attempt and sets when to try again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import aiosqlite


class FileState(StrEnum):
    DETECTED = "detected"
    EVALUATED = "evaluated"
    UPLOADED = "uploaded"
    INGESTED = "ingested"
    INVALID = "invalid"
    FAILED = "failed"


TERMINAL = (FileState.INGESTED, FileState.INVALID, FileState.FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path            TEXT PRIMARY KEY,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    written_at      REAL    NOT NULL,
    state           TEXT    NOT NULL,
    archive_id      TEXT,
    manifest        TEXT,
    transfer_id     TEXT,
    reason          TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL DEFAULT 0,
    detected_at     REAL    NOT NULL,
    evaluated_at    REAL,
    uploaded_at     REAL,
    finished_at     REAL,
    updated_at      REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS files_due ON files (state, next_attempt_at);
-- Every problem a file met on its way, kept after the file went through: what operators look back on.
CREATE TABLE IF NOT EXISTS history (
    id     INTEGER PRIMARY KEY,
    path   TEXT NOT NULL,
    state  TEXT NOT NULL,
    reason TEXT NOT NULL,
    at     REAL NOT NULL
);
"""


@dataclass(frozen=True)
class JournalEntry:
    path: str
    size: int
    mtime_ns: int
    written_at: float
    state: FileState
    archive_id: str | None
    manifest: str | None
    transfer_id: str | None
    reason: str | None
    attempts: int
    next_attempt_at: float
    detected_at: float
    evaluated_at: float | None
    uploaded_at: float | None
    finished_at: float | None
    updated_at: float


def _entry(row: sqlite3.Row) -> JournalEntry:
    values = dict(row)
    values["state"] = FileState(values["state"])
    return JournalEntry(**values)


class Journal:
    """One SQLite connection; every change is committed (durable) before the caller goes on."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> Journal:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = sqlite3.Row
        # WAL with synchronous=FULL: a committed record survives a power cut, and readers (the status
        # command) never block the monitor.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(_SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def record(self, path: str, size: int, mtime_ns: int) -> bool:
        """Note a complete file; True when it is new, or changed since it was last recorded (then it starts over)."""
        now = time.time()
        cursor = await self.db.execute(
            "INSERT INTO files (path, size, mtime_ns, written_at, state, detected_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'detected', ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "written_at = excluded.written_at, state = 'detected', archive_id = NULL, manifest = NULL, "
            "transfer_id = NULL, reason = NULL, attempts = 0, next_attempt_at = 0, "
            "detected_at = excluded.detected_at, evaluated_at = NULL, uploaded_at = NULL, finished_at = NULL, "
            "updated_at = excluded.updated_at "
            "WHERE files.size != excluded.size OR files.mtime_ns != excluded.mtime_ns",
            (path, size, mtime_ns, mtime_ns / 1e9, now, now),
        )
        await self.db.commit()
        return cursor.rowcount > 0

    async def get(self, path: str) -> JournalEntry | None:
        async with self.db.execute("SELECT * FROM files WHERE path = ?", (path,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _entry(row)

    async def due(self, states: Iterable[FileState], now: float, limit: int = 100) -> list[JournalEntry]:
        wanted = [s.value for s in states]
        marks = ",".join("?" * len(wanted))
        async with self.db.execute(
            f"SELECT * FROM files WHERE state IN ({marks}) AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, detected_at LIMIT ?",
            (*wanted, now, limit),
        ) as cursor:
            return [_entry(row) for row in await cursor.fetchall()]

    async def next_due_at(self, states: Iterable[FileState]) -> float | None:
        wanted = [s.value for s in states]
        marks = ",".join("?" * len(wanted))
        async with self.db.execute(
            f"SELECT min(next_attempt_at) FROM files WHERE state IN ({marks})", wanted
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # Each transition names the entry it started from: if the file was written again meanwhile (new size or
    # mtime, so recorded afresh), the stale result is dropped instead of overwriting the new version's state.

    async def evaluated(self, entry: JournalEntry, archive_id: str, manifest: str) -> None:
        await self._update(
            entry,
            state=FileState.EVALUATED,
            archive_id=archive_id,
            manifest=manifest,
            evaluated_at=time.time(),
            reason=None,
            attempts=0,
            next_attempt_at=0,
        )

    async def uploaded(self, entry: JournalEntry, transfer_id: str) -> None:
        await self._update(
            entry,
            state=FileState.UPLOADED,
            transfer_id=transfer_id,
            uploaded_at=time.time(),
            reason=None,
            attempts=0,
            next_attempt_at=0,
        )

    async def ingested(self, entry: JournalEntry) -> None:
        await self._update(entry, state=FileState.INGESTED, finished_at=time.time(), reason=None)

    async def invalid(self, entry: JournalEntry, reason: str) -> None:
        await self._update(entry, state=FileState.INVALID, reason=reason, finished_at=time.time())

    async def failed(self, entry: JournalEntry, reason: str) -> None:
        await self._update(entry, state=FileState.FAILED, reason=reason, finished_at=time.time())

    async def history(self, limit: int = 50) -> list[dict[str, object]]:
        """The latest problems, newest first, including those of files that went through in the end."""
        async with self.db.execute(
            "SELECT path, state, reason, at FROM history ORDER BY id DESC LIMIT ?", (limit,)
        ) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def retry_later(
        self, entry: JournalEntry, reason: str, delay: float, *, state: FileState | None = None
    ) -> None:
        """A transient error: keep the file, say why, and try again after ``delay`` seconds."""
        changes: dict[str, object] = {
            "reason": reason,
            "attempts": entry.attempts + 1,
            "next_attempt_at": time.time() + delay,
        }
        if state is not None:
            changes["state"] = state
        await self._update(entry, **changes)

    async def reset(self, paths: Iterable[str] | None = None, states: Iterable[FileState] = ()) -> int:
        """Operator's retry: send files (by path, or all in ``states``) back to the start."""
        where, params = _selection(paths, states)
        cursor = await self.db.execute(
            "UPDATE files SET state = 'detected', reason = NULL, attempts = 0, next_attempt_at = 0, "
            f"transfer_id = NULL, finished_at = NULL, updated_at = ? WHERE {where}",
            (time.time(), *params),
        )
        await self.db.commit()
        return cursor.rowcount

    async def counts(self) -> dict[FileState, int]:
        async with self.db.execute("SELECT state, count(*) FROM files GROUP BY state") as cursor:
            return {FileState(state): count for state, count in await cursor.fetchall()}

    async def problems(self, limit: int = 50) -> list[JournalEntry]:
        """Invalid and failed files, and files waiting to be retried, newest first."""
        async with self.db.execute(
            "SELECT * FROM files WHERE state IN ('invalid', 'failed') OR (reason IS NOT NULL AND state NOT IN "
            "('ingested')) ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        ) as cursor:
            return [_entry(row) for row in await cursor.fetchall()]

    async def _update(self, entry: JournalEntry, **changes: object) -> bool:
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{column} = ?" for column in changes)
        values = [v.value if isinstance(v, FileState) else v for v in changes.values()]
        cursor = await self.db.execute(
            f"UPDATE files SET {assignments} WHERE path = ? AND size = ? AND mtime_ns = ?",
            (*values, entry.path, entry.size, entry.mtime_ns),
        )
        if cursor.rowcount and changes.get("reason"):
            state = changes.get("state", entry.state)
            await self.db.execute(
                "INSERT INTO history (path, state, reason, at) VALUES (?, ?, ?, ?)",
                (entry.path, str(state), changes["reason"], changes["updated_at"]),
            )
        await self.db.commit()
        return cursor.rowcount > 0


def _selection(paths: Iterable[str] | None, states: Iterable[FileState]) -> tuple[str, list[object]]:
    paths = list(paths or [])
    wanted = [s.value for s in states]
    clauses: list[str] = []
    params: list[object] = []
    if paths:
        clauses.append(f"path IN ({','.join('?' * len(paths))})")
        params.extend(paths)
    if wanted:
        clauses.append(f"state IN ({','.join('?' * len(wanted))})")
        params.extend(wanted)
    if not clauses:
        raise ValueError("name the files to retry, or the states whose files to retry")
    return " OR ".join(clauses), params
