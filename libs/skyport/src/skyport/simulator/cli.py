"""``skyport simulate``: write a simulated observing night into the folders a monitor watches."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skyport.simulator.night import SimulatedFile

# This module is imported to build the ``skyport`` command line: astropy and the instrument models are imported
# only when ``skyport simulate`` runs, so that other commands start fast.

DEFAULT_SIZES = "100KB,1MB,10MB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``10MB`` (decimal), ``4MiB`` (binary), ``2880`` (bytes)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 50KB, 10MB, 1.5GB or 4MiB")
    number, unit = float(match[1]), (match[2] or "").lower()
    factor = _BINARY[unit[0]] if "i" in unit else _UNITS[unit[:1]]
    return int(number * factor)


def _parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``skyport simulate``."""
    parser.add_argument("--root", type=Path, required=True, help="the monitor's watch root; files go to ROOT/<folder>")
    parser.add_argument(
        "--instruments-dir",
        type=Path,
        default=Path("deploy/instruments"),
        help="instrument configuration folder (default: deploy/instruments)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--count", type=int, help="write this many files (default: until interrupted)")
    amount.add_argument("--duration", type=float, metavar="SECONDS", help="write files for this long")
    parser.add_argument("--rate", type=float, default=1.0, metavar="FILES_PER_S", help="cadence (default: 1)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--size", type=parse_size, help="size of every file, e.g. 10MB")
    sizes.add_argument(
        "--sizes", type=_parse_sizes, help=f"sizes drawn from, e.g. 50KB,10MB,200MB (default: {DEFAULT_SIZES})"
    )
    parser.add_argument("--seed", type=int, help="same seed and night, same files (default: a new seed, printed)")
    parser.add_argument(
        "--night",
        type=date.fromisoformat,
        help="the observing night, YYYY-MM-DD: the local date at the site when it begins (default: tonight)",
    )
    parser.add_argument("--instruments", help="comma-separated instruments to simulate, e.g. HIRES,KECK/KCWI")
    parser.add_argument(
        "--program",
        action="append",
        default=[],
        metavar="MISSION=PROPID",
        help="observe for this program (repeatable; default: each mission.toml's [simulate] programs)",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "rename", "inplace"),
        default="auto",
        help="write in place or under a hidden name then rename (default: as each instrument does)",
    )
    parser.add_argument(
        "--write-rate",
        type=parse_size,
        metavar="BYTES_PER_S",
        help="how fast each file is written, e.g. 100MB (default: as fast as the disk takes it)",
    )
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="fraction of bad files, 0 to 1 (default 0)")
    parser.add_argument("--fsync", action="store_true", help="fsync every file before it is complete")


@dataclass
class _Tally:
    files: int = 0
    bad: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, simulated: SimulatedFile) -> None:
        self.files += 1
        self.bytes += simulated.size_bytes
        self.bad += simulated.bad is not None


def main(args: argparse.Namespace) -> int:
    """Run ``skyport simulate`` with parsed arguments; the exit status."""
    try:
        from skyport.instruments import InstrumentConfigError, load_instruments
        from skyport.simulator.headers import SimulationError
        from skyport.simulator.night import Simulator
    except ImportError as exc:  # the library installed without its fits extra (astropy, numpy)
        print(f"skyport simulate: {exc.name} is not installed: pip install 'skyport[fits]'", file=sys.stderr)
        return 2

    try:
        catalog = load_instruments(args.instruments_dir)
    except InstrumentConfigError as exc:
        print(f"skyport simulate: {exc}", file=sys.stderr)
        return 2
    programs: dict[str, list[str]] = {}
    for item in args.program:
        mission, _, propid = item.partition("=")
        if not propid:
            print(f"skyport simulate: --program {item!r} is not MISSION=PROPID", file=sys.stderr)
            return 2
        programs.setdefault(mission.upper(), []).append(propid)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    sizes = [args.size] if args.size else (args.sizes or _parse_sizes(DEFAULT_SIZES))
    instruments = [name.strip() for name in args.instruments.split(",")] if args.instruments else None
    chunk_bytes = 4 << 20
    chunk_delay = chunk_bytes / args.write_rate if args.write_rate else 0.0
    simulator = Simulator(catalog, args.root, seed=seed, night=args.night, programs=programs)
    # Without --night, each mission's tonight at its site (skyport.nights), which may differ by a day.
    nights = sorted({simulator.night_of(mission) for mission in catalog.missions})
    night = " or ".join(str(n) for n in nights) if args.night is None else args.night
    repeat = f"--seed {seed}" + (f" --night {nights[0]}" if len(nights) == 1 else "")
    tally = _Tally()
    amount = f"{args.count} files" if args.count else (f"{args.duration:g} s" if args.duration else "until interrupted")
    print(
        f"simulating {amount} at {args.rate:g} files/s into {args.root} "
        f"(sizes {', '.join(_human(s) for s in sizes)}; seed {seed}, night {night})",
        flush=True,
    )

    async def simulate() -> None:
        async for simulated in simulator.run(
            count=args.count,
            duration=args.duration,
            rate_per_s=args.rate,
            sizes=sizes,
            instruments=instruments,
            mode=args.mode,
            chunk_delay=chunk_delay,
            bad_fraction=args.bad_fraction,
            fsync=args.fsync,
        ):
            tally.add(simulated)
            _print_file(tally.files, simulated)

    status = 0
    try:
        asyncio.run(simulate())
    except KeyboardInterrupt:
        status = 0 if args.count is None and args.duration is None else 130
    except (SimulationError, KeyError, ValueError) as exc:
        print(f"skyport simulate: {exc}", file=sys.stderr)
        status = 1
    elapsed = max(time.monotonic() - tally.started, 1e-9)
    print(
        f"wrote {tally.files} files ({tally.bad} bad), {_human(tally.bytes)} in {elapsed:.1f} s "
        f"({tally.files / elapsed:.2f} files/s, {_human(tally.bytes / elapsed)}/s); "
        f"repeat with {repeat}",
        flush=True,
    )
    return status


def _print_file(number: int, simulated: SimulatedFile) -> None:
    what = f"BAD {simulated.bad.value}" if simulated.bad else f"level {simulated.level} {simulated.propid}"
    print(
        f"{number:>5}  {simulated.closed_at:%H:%M:%S}  {simulated.relative_path}  {simulated.archive_id or '-'}  "
        f"{what}  {_human(simulated.size_bytes)}  {simulated.mode} {simulated.write_seconds:.2f} s",
        flush=True,
    )
