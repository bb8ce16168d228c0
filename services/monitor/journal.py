"""The monitor's journal (SQLite): a file is recorded before anything else happens to it, and kept until ingested.

Before that, a file the monitor has seen but may not take is noted too, so nothing vanishes without a trace:
``waiting`` (not finished by its instrument's completion rule, or not readable yet; the reason says what it waits
for) and ``ignored`` (in an instrument's folder but not one of its files: the reason names the naming rule).
A sent file that changes is recorded afresh (``detected``), with ``replaces``: what was sent before (newest first),
when the completion rule that took it was the monitor's own guess, so that the archive replaces the partial file.

States: ``detected`` (needs DEP) → ``evaluated`` (manifest ready, needs upload) → ``uploaded`` (the archive has
it; followed until) → ``ingested``. ``invalid`` (the file itself is bad, quarantined with the reason) and
``failed`` (the archive refused it) end a file's way until an operator retries it. A transient error keeps the
state, counts an attempt and sets when to try again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import aiosqlite


class FileState(StrEnum):
    WAITING = "waiting"
    DETECTED = "detected"
    EVALUATED = "evaluated"
    UPLOADED = "uploaded"
    INGESTED = "ingested"
    INVALID = "invalid"
    FAILED = "failed"
    IGNORED = "ignored"


TERMINAL = (FileState.INGESTED, FileState.INVALID, FileState.FAILED)
# Seen, not taken: the monitor looks at these again when they change, and at every rescan.
NOTED = (FileState.WAITING, FileState.IGNORED)
# The archive has (or had) the file's content.
SENT = (FileState.UPLOADED, FileState.INGESTED)

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
    updated_at      REAL    NOT NULL,
    replaces        TEXT    -- JSON: what was sent before for this file and is to be replaced (Manifest.replaces)
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
-- "This file is closed", from the instrument's software (`skyport monitor closed PATH`), with the size and
-- modification time it had then: the signal completion rule.
CREATE TABLE IF NOT EXISTS signals (
    id       INTEGER PRIMARY KEY,
    path     TEXT    NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    at       REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS signals_path ON signals (path, id);
"""


# _SYNC_NOTE: why the monitor's own connection may commit without an fsync (synchronous=NORMAL in WAL mode).
# A commit still reaches the operating system before the call returns, so a crash of the monitor loses nothing;
# only a power cut or a kernel crash can roll back the last commits, and each one the monitor makes is one the
# journal finds again by itself: the start-up scan looks again at every file not journaled as it is now (a lost
# `detected`, `waiting` or `ignored` row is written again), a lost `evaluated` is evaluated again, a lost
# `uploaded` is sent again (the receiver finds the transfer it already has for the same manifest) and a lost
# `ingested` is asked about again. Nothing is ever deleted or sent on the strength of a row alone. An fsync per
# commit (four per file) cost more than the rest of the monitor's bookkeeping. The commands (`skyport monitor
# closed`, `retry`) keep synchronous=FULL: the instrument's "closed" signal is a promise made to someone else.


class JournalMissing(FileNotFoundError):
    """The journal file does not exist (and was not to be created): the message names the path and the setting."""


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
    replaces: str | None = None


def _entry(row: sqlite3.Row) -> JournalEntry:
    values = dict(row)
    values["state"] = FileState(values["state"])
    return JournalEntry(**values)


class Journal:
    """One SQLite connection; every change is committed before the caller goes on."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path, *, create: bool = True, sync_every_commit: bool = True) -> Journal:
        """Open (and by default create) the journal; ``create=False`` raises :class:`JournalMissing` instead.

        ``sync_every_commit=False`` (the monitor's own connection) leaves the fsync to WAL checkpoints: see
        :data:`_SYNC_NOTE`.
        """
        if not create and not await asyncio.to_thread(path.is_file):
            where = await asyncio.to_thread(path.resolve)
            raise JournalMissing(f"no monitor journal at {where} (set SKYPORT_JOURNAL_PATH to the monitor's journal)")
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, timeout=10)
        db.row_factory = sqlite3.Row
        # WAL: readers (the status command) never block the monitor. See _SYNC_NOTE for synchronous.
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL" if sync_every_commit else "PRAGMA synchronous=NORMAL")
        await db.executescript(_SCHEMA)
        await _upgrade(db)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def record(self, path: str, size: int, mtime_ns: int, *, replaces: str | None = None) -> bool:
        """Note a complete file; True when it is new, or changed since it was last recorded (then it starts over).

        ``replaces`` (JSON, :attr:`Manifest.replaces`): what was sent before for it, for the archive to replace. A
        file not sent yet keeps what it was to replace, whatever happened to it since.
        """
        return bool(await self.record_many([(path, size, mtime_ns, replaces)]))

    async def record_many(self, files: Sequence[tuple[str, int, int, str | None]]) -> set[str]:
        """:meth:`record` for many files (path, size, mtime_ns, replaces) in one statement and one commit.

        Returns the paths recorded afresh. A burst of files closed at once costs one transaction, not one each.
        """
        if not files:
            return set()
        now = time.time()
        rows = json.dumps([[path, size, mtime_ns, replaces] for path, size, mtime_ns, replaces in files])
        # "WHERE true" keeps SQLite from reading the upsert's ON as a join condition (INSERT ... SELECT). Executed
        # and read to the end in one call: a RETURNING statement still in progress would make the commit of any
        # other coroutine on this connection fail ("SQL statements in progress").
        rows_returned = await self.db.execute_fetchall(
            "INSERT INTO files (path, size, mtime_ns, written_at, state, detected_at, updated_at, replaces) "
            "SELECT value ->> 0, value ->> 1, value ->> 2, (value ->> 2) / 1e9, 'detected', ?1, ?1, value ->> 3 "
            "FROM json_each(?2) WHERE true "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "written_at = excluded.written_at, state = 'detected', archive_id = NULL, manifest = NULL, "
            "transfer_id = NULL, reason = NULL, attempts = 0, next_attempt_at = 0, "
            "detected_at = excluded.detected_at, evaluated_at = NULL, uploaded_at = NULL, finished_at = NULL, "
            "updated_at = excluded.updated_at, replaces = coalesce(excluded.replaces, "
            "CASE WHEN files.state NOT IN ('uploaded', 'ingested') THEN files.replaces END) "
            "WHERE files.size != excluded.size OR files.mtime_ns != excluded.mtime_ns "
            "OR files.state IN ('waiting', 'ignored') "
            "RETURNING path",
            (now, rows),
        )
        await self.db.commit()
        return {str(row[0]) for row in rows_returned}

    async def note(self, path: str, size: int, mtime_ns: int, state: FileState, reason: str) -> bool:
        """Note a file seen but not taken (``waiting`` or ``ignored``) with the reason.

        A file taken but not sent yet (or found bad) whose content has changed since goes back to this state: its
        journaled content is not the file's any more.  A sent file keeps its state: the archive has that content.
        The history keeps each new reason once, not every time the file is looked at.
        """
        assert state in NOTED
        now = time.time()
        cursor = await self.db.execute(
            "INSERT INTO files (path, size, mtime_ns, written_at, state, reason, detected_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
            "written_at = excluded.written_at, state = excluded.state, reason = excluded.reason, "
            "updated_at = excluded.updated_at "
            "WHERE (files.state IN ('waiting', 'ignored') AND (files.reason IS NOT excluded.reason "
            "OR files.state != excluded.state OR files.size != excluded.size OR files.mtime_ns != excluded.mtime_ns)) "
            "OR (files.state IN ('detected', 'evaluated', 'invalid', 'failed') "
            "AND (files.size != excluded.size OR files.mtime_ns != excluded.mtime_ns))",
            (path, size, mtime_ns, mtime_ns / 1e9, state.value, reason, now, now),
        )
        changed = cursor.rowcount > 0
        if changed:
            await self.db.execute(
                "INSERT INTO history (path, state, reason, at) SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM history WHERE id = (SELECT max(id) FROM history WHERE path = ?) AND reason = ?)",
                (path, state.value, reason, now, path, reason),
            )
        await self.db.commit()
        return changed

    async def restamp(self, path: str, size: int, mtime_ns: int) -> None:
        """The file was written again with the same content: only its size and time are new."""
        await self.db.execute(
            "UPDATE files SET size = ?, mtime_ns = ?, updated_at = ? WHERE path = ?",
            (size, mtime_ns, time.time(), path),
        )
        await self.db.commit()

    async def remember(self, path: str, state: FileState, reason: str) -> None:
        """Keep a problem in the history only (the file's own row is left as it is)."""
        await self.db.execute(
            "INSERT INTO history (path, state, reason, at) VALUES (?, ?, ?, ?)",
            (path, state.value, reason, time.time()),
        )
        await self.db.commit()

    async def known(self) -> dict[str, tuple[int, int, FileState]]:
        """Every journaled path with the size, modification time and state it was last seen with (for rescans)."""
        async with self.db.execute("SELECT path, size, mtime_ns, state FROM files") as cursor:
            return {row[0]: (row[1], row[2], FileState(row[3])) for row in await cursor.fetchall()}

    async def signal_closed(self, path: str, size: int, mtime_ns: int) -> None:
        """The instrument's software says ``path`` is closed, as it is now (size and modification time)."""
        await self.db.execute(
            "INSERT INTO signals (path, size, mtime_ns, at) VALUES (?, ?, ?, ?)", (path, size, mtime_ns, time.time())
        )
        await self.db.commit()

    async def closed_as(self, path: str) -> tuple[int, int] | None:
        """The size and modification time the latest "closed" signal for ``path`` gave, if there was one."""
        async with self.db.execute(
            "SELECT size, mtime_ns FROM signals WHERE path = ? ORDER BY id DESC LIMIT 1", (path,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    async def latest_signal_id(self) -> int:
        async with self.db.execute("SELECT coalesce(max(id), 0) FROM signals") as cursor:
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])

    async def signals_after(self, last_id: int) -> list[tuple[int, str]]:
        """Signals newer than ``last_id``, oldest first, as (id, path)."""
        async with self.db.execute(
            "SELECT id, path FROM signals WHERE id > ? ORDER BY id LIMIT 1000", (last_id,)
        ) as cursor:
            return [(int(row[0]), str(row[1])) for row in await cursor.fetchall()]

    async def get(self, path: str) -> JournalEntry | None:
        async with self.db.execute("SELECT * FROM files WHERE path = ?", (path,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _entry(row)

    async def get_many(self, paths: Collection[str]) -> dict[str, JournalEntry]:
        """The entries of those of ``paths`` that are journaled, in one query."""
        if not paths:
            return {}
        async with self.db.execute(
            "SELECT * FROM files WHERE path IN (SELECT value FROM json_each(?))", (json.dumps(list(paths)),)
        ) as cursor:
            return {row["path"]: _entry(row) for row in await cursor.fetchall()}

    async def due(
        self, states: Iterable[FileState], now: float, limit: int = 100, *, exclude: Collection[str] = ()
    ) -> list[JournalEntry]:
        """Files in ``states`` whose next attempt is due, oldest first, leaving out the paths in ``exclude``.

        The monitor excludes the files it is already working on: a burst of hundreds is read once, not again
        every time one of them is done.
        """
        wanted = [s.value for s in states]
        marks = ",".join("?" * len(wanted))
        async with self.db.execute(
            f"SELECT * FROM files WHERE state IN ({marks}) AND next_attempt_at <= ? "
            "AND path NOT IN (SELECT value FROM json_each(?)) ORDER BY next_attempt_at, detected_at LIMIT ?",
            (*wanted, now, json.dumps(list(exclude)), limit),
        ) as cursor:
            return [_entry(row) for row in await cursor.fetchall()]

    async def next_due_at(self, states: Iterable[FileState], *, exclude: Collection[str] = ()) -> float | None:
        """When the next file in ``states`` (leaving out the paths in ``exclude``) is due."""
        wanted = [s.value for s in states]
        marks = ",".join("?" * len(wanted))
        async with self.db.execute(
            f"SELECT min(next_attempt_at) FROM files WHERE state IN ({marks}) "
            "AND path NOT IN (SELECT value FROM json_each(?))",
            (*wanted, json.dumps(list(exclude))),
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


async def _upgrade(db: aiosqlite.Connection) -> None:
    """Bring a journal written by an earlier monitor up to this one's table."""
    async with db.execute("SELECT name FROM pragma_table_info('files')") as cursor:
        columns = {row[0] for row in await cursor.fetchall()}
    if "replaces" not in columns:
        await db.execute("ALTER TABLE files ADD COLUMN replaces TEXT")
    # The 'changed' state (a sent file that changed, held for an operator) is gone: the monitor now sends the
    # new content to replace the old. Such a file is marked as sent with a stamp of its own, so that the next
    # scan finds it changed and sends it so.
    await db.execute("UPDATE files SET state = 'ingested', mtime_ns = -1, reason = NULL WHERE state = 'changed'")


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
