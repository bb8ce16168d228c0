"""The ingestor on the real PostgreSQL: a complete file replaces a partial one, in whichever order they arrive."""

from __future__ import annotations

from astropy.io import fits

from skyport.simulator import Simulator
from tests.integration.ingestor.conftest import Site


def written_twice(site: Site) -> str:
    """A HIRES file: its content stands for the partial file, and :func:`complete` makes it whole."""
    return Simulator(site.instruments, site.root, seed=11).write_file("HIRES", size_bytes=100_000).relative_path


def complete(site: Site, relative: str) -> None:
    with fits.open(site.root / relative, mode="update") as hdul:
        hdul[0].header["HISTORY"] = "the rest of the file"
        hdul[0].add_checksum()


async def test_a_complete_file_replaces_the_partial_one_archived_before_it(site: Site) -> None:
    relative = written_twice(site)
    partial, partial_bytes = site.manifest(relative)
    await site.ingest(partial, partial_bytes)
    complete(site, relative)
    whole, whole_bytes = site.manifest(relative, [partial])
    await site.ingest(whole, whole_bytes)

    assert await site.archived() == [(1, whole.sha256)]
    (stored,) = [p for p in site.storage.root.rglob("*") if p.is_file()]  # the partial file is gone
    assert stored.read_bytes() == whole_bytes
    archived = await site.events("file.archived")
    assert [(e["version"], e["sha256"], e.get("replaces")) for e in archived] == [
        (1, partial.sha256, None),
        (1, whole.sha256, {"sha256": partial.sha256, "size_bytes": partial.size_bytes}),
    ]
    # The partial file sent again (a retry, a redelivery) is acknowledged as the version that replaced it.
    await site.ingest(partial, partial_bytes)
    assert await site.archived() == [(1, whole.sha256)]
    assert [(e["version"], e["duplicate"]) for e in await site.events("ingest.completed")][-1] == (1, True)


async def test_a_partial_file_arriving_after_the_complete_one_is_never_a_version(site: Site) -> None:
    relative = written_twice(site)
    partial, partial_bytes = site.manifest(relative)
    complete(site, relative)
    whole, whole_bytes = site.manifest(relative, [partial])
    await site.ingest(whole, whole_bytes)  # the complete file's transfer overtook the partial one's
    await site.ingest(partial, partial_bytes)

    assert await site.archived() == [(1, whole.sha256)]
    assert [e.get("replaces") for e in await site.events("file.archived")] == [None]
    assert [(e["version"], e["duplicate"]) for e in await site.events("ingest.completed")] == [(1, False), (1, True)]
