"""The receiver's database in memory: sites, transfers, the outbox and the handled event ids, with transactions
that commit or roll back as PostgreSQL's do. Injected where the service injects ``PostgresReceiverDatabase``."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from services.receiver.storage import Transfer
from skyport.events import CloudEvent, IngestCompleted, IngestFailed
from skyport.http import hash_token
from skyport.transfer import Manifest, TransferState, TransferStatus
from tests.support.fake_database import BaseTables, FakeDatabase


@dataclass
class Tables(BaseTables):
    """What the receiver's schema holds; a transaction works on a copy and puts it back at commit."""

    sites: dict[str, str] = field(default_factory=dict)  # token sha256 -> site name
    transfers: dict[str, Transfer] = field(default_factory=dict)


class FakeSites:
    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    async def site_for(self, token: str) -> str | None:
        return self.tables.sites.get(hash_token(token))


class FakeTransfers:
    """As ``TransferStore``: one transfer per site, archive ID and checksum."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables

    async def create(self, site: str, manifest: Manifest) -> tuple[Transfer, bool]:
        for transfer in self.tables.transfers.values():
            if (transfer.site, transfer.manifest.archive_id, transfer.manifest.sha256) == (
                site,
                manifest.archive_id,
                manifest.sha256,
            ):
                return transfer, False
        transfer_id = str(uuid.uuid4())
        transfer = Transfer(transfer_id, site, manifest, TransferState.CREATED, None, None, None, False, _now())
        self.tables.transfers[transfer_id] = transfer
        return transfer, True

    async def get(self, transfer_id: str, *, for_update: bool = False) -> Transfer | None:
        try:
            key = str(uuid.UUID(transfer_id))
        except ValueError:
            return None
        return self.tables.transfers.get(key)

    async def statuses(self, site: str, transfer_ids: Sequence[str]) -> list[TransferStatus]:
        found = [await self.get(transfer_id) for transfer_id in transfer_ids]
        return [transfer.status() for transfer in found if transfer is not None and transfer.site == site]

    async def set_state(
        self,
        transfer_id: str,
        state: TransferState,
        *,
        reason: str | None = None,
        staged_path: str | None = None,
        version: int | None = None,
        duplicate: bool = False,
    ) -> None:
        old = self.tables.transfers[transfer_id]
        self.tables.transfers[transfer_id] = replace(
            old,
            state=state,
            reason=reason,
            staged_path=staged_path or old.staged_path,
            version=version or old.version,
            duplicate=duplicate,
            updated_at=_now(),
        )

    async def mark_received(self, transfer_id: str, staged_path: str) -> Transfer | None:
        old = self.tables.transfers[transfer_id]
        if old.state is not TransferState.CREATED:
            return None
        await self.set_state(transfer_id, TransferState.RECEIVED, staged_path=staged_path)
        return self.tables.transfers[transfer_id]

    async def record_results(self, results: Sequence[IngestCompleted | IngestFailed]) -> set[str]:
        found = set()
        for result in results:
            if result.transfer_id not in self.tables.transfers:
                continue
            found.add(result.transfer_id)
            if isinstance(result, IngestCompleted):
                await self.set_state(
                    result.transfer_id, TransferState.INGESTED, version=result.version, duplicate=result.duplicate
                )
            else:
                await self.set_state(result.transfer_id, TransferState.FAILED, reason=result.reason)
        return found


class FakeUnitOfWork:
    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.sites = FakeSites(tables)
        self.transfers = FakeTransfers(tables)

    async def publish(self, event: CloudEvent[Any]) -> None:
        self.tables.outbox.append(event)


class FakeReceiverDatabase(FakeDatabase[Tables, FakeUnitOfWork]):
    """Transactions one at a time (as the row locks would order them here), each committed whole or not at all."""

    def __init__(self) -> None:
        super().__init__(Tables(), FakeUnitOfWork)

    def add_site(self, name: str) -> str:
        token = secrets.token_urlsafe(16)
        self.tables.sites[hash_token(token)] = name
        return token

    def transfer(self, transfer_id: str) -> Transfer:
        return self.tables.transfers[transfer_id]


def _now() -> datetime:
    return datetime.now(UTC)
