"""The dataset events the catalog emits: their files, their download links, and their grouping.

The CloudEvents subject of every dataset event is its program (``<mission>/<propid>``): the outbox relay
publishes one subject's events in commit order, so a program's ``first`` always precedes its ``new``, and
its events keep their order with its ``access.changed`` events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from typing import TypeVar

from pydantic import AnyUrl

from services.catalog.storage.products import AnnouncedFile
from skyport.events import AccessChanged, CloudEvent, DatasetEvent, DatasetFile, DatasetPublic

SOURCE = "/skyport/catalog"

E = TypeVar("E", bound=DatasetEvent | AccessChanged)


def download_url(public_url: str, archive_id: str, version: int) -> str:
    """Where a version is downloaded: ``<SKYPORT_CATALOG_PUBLIC_URL>/v1/files/<archive ID>?version=N``."""
    return f"{public_url}/v1/files/{archive_id}?version={version}"


def dataset_file(public_url: str, announced: AnnouncedFile) -> DatasetFile:
    return DatasetFile(
        archive_id=announced.archive_id,
        version=announced.version,
        size_bytes=announced.size_bytes,
        sha256=announced.sha256,
        url=AnyUrl(download_url(public_url, announced.archive_id, announced.version)),
        obset=announced.obset,
        original_filename=announced.original_filename,
    )


def program_event(data: E, correlation_id: str | None = None) -> CloudEvent[E]:
    """Wrap a dataset or access event in an envelope whose subject is its program."""
    event = CloudEvent.create(data, source=SOURCE, correlation_id=correlation_id)
    return event.model_copy(update={"subject": f"{data.mission}/{data.propid}"})


def obsets_of(files: Iterable[AnnouncedFile]) -> list[str]:
    return sorted({f.obset for f in files if f.obset is not None})


def public_events(files: Sequence[AnnouncedFile], public_url: str, max_files: int) -> list[CloudEvent[DatasetPublic]]:
    """``dataset.public`` events for products made public together: one per program and level.

    A program and level with more than ``max_files`` files is announced in several events of at most that
    many files each, so that no message grows without bound.
    """
    events = []

    def group_key(f: AnnouncedFile) -> tuple[str, str, str]:
        return f.mission, f.propid, f.level

    for (mission, propid, level), group in groupby(sorted(files, key=group_key), key=group_key):
        members = sorted(group, key=lambda f: f.archive_id)
        for start in range(0, len(members), max_files):
            chunk = members[start : start + max_files]
            events.append(
                program_event(
                    DatasetPublic(
                        mission=mission,
                        propid=propid,
                        level=level,
                        obsets=obsets_of(chunk),
                        files=[dataset_file(public_url, f) for f in chunk],
                    )
                )
            )
    return events
