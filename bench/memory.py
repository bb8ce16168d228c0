"""Benchmark: DEP's cost per file before and after the one-pass verification (issue 11): CPU and peak memory.

Run it by hand from the repository root (``.venv/bin/python bench/memory.py --help``); it is not a test. Linux only
(it reads /proc/self/status). Two figures, each for the old DEP (astropy opens the file memory-mapped to verify
it, then ``sha256_file`` reads it a second time) and the new one (``verify_fits`` reads it once):

- **CPU per 1 MB file**: ``time.process_time`` of DEP's evaluation of ``--files`` simulated Keck HIRES raw files
  of 1 MB (checksums written), old and new taking turns file by file so the machine's other load falls on both;
  mean and median in milliseconds.
- **peak resident set for a big file**: each variant evaluates one file of ``--size-gb`` GB (a FITS image with
  DATASUM and CHECKSUM, written by this script into ``--tmp`` and deleted at the end) in a process of its own,
  which prints its ``VmHWM`` (the peak resident set, memory-mapped pages counted) before and after the evaluation.

The old verification is the reference kept by the unit tests (``tests/unit/skyport/test_fits_streaming.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # ``tests.unit`` holds the old verification, kept as the reference

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from services.monitor.dep import evaluate  # noqa: E402
from skyport.fits import CHECKSUM_PLACEHOLDER, DataSum, checksum_value, padding, sha256_file, verify_fits  # noqa: E402
from skyport.instruments import InstrumentCatalog, load_instruments  # noqa: E402
from skyport.simulator import Simulator  # noqa: E402
from tests.unit.skyport.test_fits_streaming import reference_verify  # noqa: E402

INSTRUMENTS_DIR = REPO / "deploy" / "instruments"
SLAB_BYTES = 16 << 20


def old_evaluate(catalog: InstrumentCatalog, root: Path, relative_path: str) -> str:
    """DEP before issue 11: the astropy verification, the header rules, then a second read for the sha256."""
    match = catalog.match(relative_path)
    assert match is not None
    path = root / relative_path
    summary = reference_verify(path)
    match.instrument.evaluate(summary.header, path.name, match.product)
    digest, _ = sha256_file(path)
    return digest


def cpu_per_file(files: int, tmp: Path) -> dict[str, list[float]]:
    catalog = load_instruments(INSTRUMENTS_DIR)
    root = tmp / "cpu"
    simulator = Simulator(catalog, root, seed=11, night=date(2026, 3, 15))
    written = []
    for _ in range(files + 3):
        planned = simulator._plan(simulator.resolve("HIRES", "raw"), 1_000_000, checksum=True)
        written.append(simulator._write(planned, "rename", 0.0, 4 << 20, False, None))
    costs: dict[str, list[float]] = {"old": [], "new": []}
    for number, simulated in enumerate(written):
        timings = {}
        started = time.process_time()
        old_digest = old_evaluate(catalog, root, simulated.relative_path)
        timings["old"] = time.process_time() - started
        started = time.process_time()
        manifest = evaluate(catalog, root, simulated.relative_path, simulated.size_bytes, shared=False)
        timings["new"] = time.process_time() - started
        assert manifest.sha256 == old_digest
        if number >= 3:  # the first files warm the imports and caches of both
            for variant, seconds in timings.items():
                costs[variant].append(seconds * 1000)
    return costs


def write_big_file(path: Path, size_bytes: int) -> None:
    """A 16-bit image of about ``size_bytes`` with DATASUM and CHECKSUM, written slab by slab (constant memory)."""
    width = 4096
    rows = max(1, size_bytes // (2 * width))
    slab = np.random.default_rng(5).integers(0, 60_000, size=SLAB_BYTES // 2, dtype=np.uint16).astype(">u2")
    slab_bytes = slab.tobytes()
    data_bytes = rows * width * 2
    datasum = DataSum()
    for start in range(0, data_bytes, SLAB_BYTES):
        datasum.update(slab_bytes[: min(SLAB_BYTES, data_bytes - start)])
    header = fits.Header()
    header["SIMPLE"], header["BITPIX"], header["NAXIS"] = True, 16, 2
    header["NAXIS1"], header["NAXIS2"] = width, rows
    header["CHECKSUM"] = CHECKSUM_PLACEHOLDER
    header["DATASUM"] = str(datasum.value)
    header["CHECKSUM"] = checksum_value(header.tostring().encode("ascii"), datasum.value)
    with open(path, "wb") as stream:
        stream.write(header.tostring().encode("ascii"))
        for start in range(0, data_bytes, SLAB_BYTES):
            stream.write(slab_bytes[: min(SLAB_BYTES, data_bytes - start)])
        stream.write(padding(data_bytes))


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(variant: str, path: Path) -> None:
    """Evaluate one file with one variant and print the peak resident set before and after, as JSON."""
    before = peak_kib()
    started = time.process_time()
    if variant == "old":
        reference_verify(path)
        sha256_file(path)
    else:
        verify_fits(path)
    print(json.dumps({"before_kib": before, "after_kib": peak_kib(), "cpu_s": time.process_time() - started}))


def peak_for_big_file(size_gb: float, tmp: Path) -> dict[str, dict[str, float]]:
    path = tmp / "big.fits"
    write_big_file(path, int(size_gb * 1e9))
    results = {}
    try:
        for variant in ("old", "new"):
            output = subprocess.run(
                [sys.executable, __file__, "--child", variant, str(path)], check=True, capture_output=True, text=True
            ).stdout
            results[variant] = json.loads(output.strip().splitlines()[-1])
    finally:
        path.unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=40, help="1 MB files for the CPU figure")
    parser.add_argument("--size-gb", type=float, default=2.0, help="size of the big file for the memory figure")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the files are written")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    free = shutil.disk_usage(args.tmp).free
    if free < args.size_gb * 1e9 * 1.5:
        parser.error(f"{args.tmp} has {free / 1e9:.1f} GB free: too little for a {args.size_gb} GB file")
    work = Path(tempfile.mkdtemp(prefix="skyport-bench-memory-", dir=args.tmp))
    try:
        costs = cpu_per_file(args.files, work)
        print(f"DEP CPU per 1 MB file (HIRES raw, checksums written; {args.files} files, ms):")
        for variant, label in (("old", "astropy memmap + sha256_file"), ("new", "one pass")):
            values = costs[variant]
            print(f"  {variant} ({label}): mean {statistics.mean(values):.2f}  median {statistics.median(values):.2f}")
        peaks = peak_for_big_file(args.size_gb, work)
        print(f"peak resident set evaluating one {args.size_gb:g} GB file (VmHWM of a process of its own):")
        for variant, figures in peaks.items():
            print(
                f"  {variant}: {figures['after_kib'] / 1024:.0f} MB (at start {figures['before_kib'] / 1024:.0f} MB), "
                f"CPU {figures['cpu_s']:.1f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
