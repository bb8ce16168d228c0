"""The night simulator: realistic FITS files for the configured instruments, written as instruments write them.

Used by the tests, the demo and the benchmarks, and by ``skyport simulate``::

    simulator = Simulator(load_instruments(Path("deploy/instruments")), root, seed=42, night=date(2026, 3, 15))
    simulated = simulator.write_file("HIRES", "raw", size_bytes=10_000_000, mode="inplace", chunk_delay=0.05)
    bad = simulator.write_bad_file(BadKind.WRONG_DATASUM, "NIRCAM", "cal")
    async with contextlib.aclosing(simulator.run(count=100, rate_per_s=5, sizes=[50_000, 10_000_000])) as files:
        async for simulated in files:
            ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from skyport.simulator.cli import add_arguments, main, parse_size

if TYPE_CHECKING:
    from skyport.simulator.headers import SimulationError
    from skyport.simulator.night import DEFAULT_SIZE, BadKind, SimulatedFile, Simulator

# The simulator itself needs astropy; it is imported on first use, so that building the ``skyport`` command line
# (which imports add_arguments) stays fast.
_LAZY = {
    "DEFAULT_SIZE": "skyport.simulator.night",
    "BadKind": "skyport.simulator.night",
    "SimulatedFile": "skyport.simulator.night",
    "Simulator": "skyport.simulator.night",
    "SimulationError": "skyport.simulator.headers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_SIZE",
    "BadKind",
    "SimulatedFile",
    "SimulationError",
    "Simulator",
    "add_arguments",
    "main",
    "parse_size",
]
