"""Whether a file is finished, by its instrument's completion rule, and why a file is not one of an instrument's."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from skyport.fits import Structure, probe_structure
from skyport.instruments import InstrumentCatalog
from skyport.instruments.models import CompletionRule, Instrument

_COMPRESSED_SUFFIXES = (".gz", ".fz", ".bz2", ".xz", ".zst", ".zip", ".z")


@dataclass(frozen=True)
class Look:
    """One look at a file: its size and modification time, its structure, and whether its marker is there."""

    size: int
    mtime_ns: int
    structure: Structure
    marker: bool

    @property
    def stamp(self) -> tuple[int, int]:
        return (self.size, self.mtime_ns)


def look_at(path: Path, marker_suffix: str | None) -> Look:
    """Look at ``path`` (blocking: reads a few header blocks). Raises FileNotFoundError when it is gone."""
    before = os.stat(path)
    structure = probe_structure(path)
    after = os.stat(path)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        # Written to while it was read: the structure describes bytes that are no longer the file's.
        structure = Structure(False, False, waiting_for="the file changed while it was looked at")
    marker = False
    if marker_suffix is not None:
        with contextlib.suppress(FileNotFoundError):
            # A marker older than the file belongs to an earlier write of it (the file is being rewritten).
            marker = os.stat(path.with_name(path.name + marker_suffix)).st_mtime_ns >= after.st_mtime_ns
    return Look(after.st_size, after.st_mtime_ns, structure, marker)


@dataclass(frozen=True)
class Decision:
    """Take the file now, or wait (``reason`` says for what); ``look_again``: only time ends the wait."""

    take: bool
    reason: str | None = None
    look_again: bool = False


def decide(
    rule: CompletionRule,
    look: Look,
    unchanged_for: float,
    *,
    closed_as: tuple[int, int] | None,
    incomplete_timeout: float,
) -> Decision:
    """Apply the instrument's completion rule to one look at a file (pure: the monitor supplies time and signals).

    The rule decides when the writer is done; the bytes must also form whole FITS, except that a file whose fault
    no writing can mend (not FITS, an unparsable card) is taken at once, and one unchanged for
    ``incomplete_timeout`` is taken anyway: DEP then reports either with the reason instead of the monitor waiting
    for ever.
    """
    structure = look.structure
    waiting_for = _rule_unmet(rule, look, unchanged_for, closed_as)
    if waiting_for is not None:
        if structure.broken is None and not structure.complete and unchanged_for < incomplete_timeout:
            # Being written: say so, and look again soon (a file abandoned half-way is looked at only on change).
            return Decision(False, f"still being written: {structure.waiting_for}", look_again=True)
        return Decision(False, waiting_for, look_again=rule.rule == "quiet")
    if structure.broken is not None:
        return Decision(True)
    if rule.rule == "fits" and structure.complete and not structure.declared:
        return Decision(
            False,
            "its primary header does not say how many extensions follow (no NEXTEND), so the 'fits' completion "
            "rule cannot tell it from a file whose writer paused between two HDUs; `skyport monitor retry PATH` "
            "takes it as it is",
        )
    if structure.complete:
        return Decision(True)
    if unchanged_for >= incomplete_timeout:
        return Decision(True, f"never looked complete ({structure.waiting_for}); evaluated anyway")
    return Decision(False, f"still being written: {structure.waiting_for}", look_again=True)


def _rule_unmet(
    rule: CompletionRule, look: Look, unchanged_for: float, closed_as: tuple[int, int] | None
) -> str | None:
    """What the rule itself still waits for, or None when it says the writer is done."""
    if rule.rule == "marker" and not look.marker:
        return f"waiting for its marker file (the file's name + {rule.marker_suffix}, newer than it)"
    if rule.rule == "signal":
        if closed_as is None:
            return "waiting for the instrument's 'closed' signal (skyport monitor closed PATH)"
        if closed_as != look.stamp:
            return (
                f"changed after the instrument said it was closed ({closed_as[0]} bytes then, {look.size} now): "
                "waiting for a new 'closed' signal"
            )
    if rule.rule == "quiet" and unchanged_for < (rule.quiet_seconds or 0):
        return f"waiting until it is unchanged for {rule.quiet_seconds:g} s"
    return None


class Naming:
    """Which files in the instruments' folders are theirs, which are their writers' own, and why the rest are not."""

    def __init__(self, catalog: InstrumentCatalog) -> None:
        self.catalog = catalog
        self._folders: dict[str, list[Instrument]] = {}
        for match in catalog.products():
            holders = self._folders.setdefault(match.product.folder, [])
            if match.instrument not in holders:
                holders.append(match.instrument)

    def instruments_of_folder(self, folder: str) -> list[Instrument]:
        return self._folders.get(folder, [])

    def data_file_of_marker(self, relative: str) -> str | None:
        """The data file a marker names (``x.fits.done`` -> ``x.fits``), if ``relative`` is a marker."""
        path = PurePosixPath(relative)
        for instrument in self.instruments_of_folder(str(path.parent)):
            suffix = instrument.completion.marker_suffix
            if instrument.completion.rule == "marker" and path.name.endswith(suffix):
                data = str(path.parent / path.name[: -len(suffix)])
                if self.catalog.match(data) is not None:
                    return data
        return None

    def is_writers_own(self, relative: str) -> bool:
        """A temporary name of the folder's writer, or a marker: neither taken nor reported."""
        path = PurePosixPath(relative)
        for instrument in self.instruments_of_folder(str(path.parent)):
            if any(fnmatchcase(path.name, glob) for glob in instrument.completion.temporary):
                return True
        return self.data_file_of_marker(relative) is not None

    def why_not_taken(self, relative: str) -> str | None:
        """Why a file inside an instrument's folder is not one of its files; None outside the instruments' folders."""
        path = PurePosixPath(relative)
        folder = str(path.parent)
        instruments = self.instruments_of_folder(folder)
        if not instruments:
            for known in self._folders:
                if folder.startswith(known + "/"):
                    names = " and ".join(i.name for i in self._folders[known])
                    return f"in a subfolder of {known}: {names} files are read from that folder itself"
            return None
        rules = "; ".join(
            f"{i.name}'s naming rule ({', '.join(p.pattern for p in i.products if p.folder == folder)})"
            for i in instruments
        )
        reason = f"does not match {rules}"
        lower = path.name.lower()
        if lower.endswith(_COMPRESSED_SUFFIXES):
            reason += "; compressed FITS is not configured for this instrument"
        return reason
