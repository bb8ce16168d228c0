"""Instrument and mission configuration: file matching, header rules, metadata, archive IDs, levels and release.

Load it once per process with :func:`load_instruments` (``deploy/instruments``), then per file::

    match = catalog.match("keck/hires/raw/hires0001.fits")          # which instrument and product, or None
    summary = verify_fits(path)                                      # skyport.fits: is the file sound
    evaluation = match.instrument.evaluate(summary.header, path.name, match.product)   # or InvalidFile
"""

from skyport.instruments.catalog import InstrumentCatalog, InstrumentConfigError, load_instruments
from skyport.instruments.evaluation import Evaluation, check_keyword, koaid
from skyport.instruments.models import (
    ArchiveIdRule,
    FilenameRule,
    ImageContent,
    Instrument,
    IntentRule,
    KeywordRule,
    KeywordType,
    MetadataRule,
    Mission,
    ObsetRule,
    PrefixRule,
    ProductKind,
    ProductMatch,
    ProductSimulation,
    PropidRule,
    ReleaseRule,
    SimulatedImage,
    TimeSource,
)

__all__ = [
    "ArchiveIdRule",
    "Evaluation",
    "FilenameRule",
    "ImageContent",
    "Instrument",
    "InstrumentCatalog",
    "InstrumentConfigError",
    "IntentRule",
    "KeywordRule",
    "KeywordType",
    "MetadataRule",
    "Mission",
    "ObsetRule",
    "PrefixRule",
    "ProductKind",
    "ProductMatch",
    "ProductSimulation",
    "PropidRule",
    "ReleaseRule",
    "SimulatedImage",
    "TimeSource",
    "check_keyword",
    "koaid",
    "load_instruments",
]
