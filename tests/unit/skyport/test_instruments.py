"""Instrument configuration: the shipped files load, files match, headers evaluate to archive IDs and metadata."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from skyport.fits import InvalidFile, verify_fits
from skyport.instruments import (
    InstrumentCatalog,
    InstrumentConfigError,
    Mission,
    ReleaseRule,
    koaid,
    load_instruments,
)
from skyport.simulator import Simulator

INSTRUMENTS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "instruments"


@pytest.fixture(scope="module")
def catalog() -> InstrumentCatalog:
    return load_instruments(INSTRUMENTS_DIR)


def hires_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "INSTRUME": "HIRES: High Resolution Echelle Spectrometer",
        "TELESCOP": "Keck I",
        "DATE-OBS": "2026-03-15",
        "UT": "03:25:45.67",
        "PROGNAME": "2026A_U123",
        "FRAMENO": 12,
        "OBSTYPE": "Object",
        "TARGNAME": "HD 189733",
        "RA": "20:00:43.71",
        "DEC": "+22:42:39.1",
        "EXPTIME": 300.0,
        "AIRMASS": 1.12,
        "FIL1NAME": "clear",
        "FIL2NAME": "bg12",
        "DECKNAME": "C2",
        "XDISPERS": "RED",
        "ECHANGL": 0.0,
        "XDANGL": 1.2,
        "BINNING": "2,1",
    }
    header.update(changes)
    return {k: v for k, v in header.items() if v is not ...}


def nircam_header(**changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "TELESCOP": "JWST",
        "INSTRUME": "NIRCAM",
        "PROGRAM": "01011",
        "OBSERVTN": "002",
        "VISIT": "001",
        "VISITGRP": "02",
        "SEQ_ID": "1",
        "ACT_ID": "01",
        "EXPOSURE": "00001",
        "DATE-BEG": "2026-03-15T04:12:33.123",
        "DATE-OBS": "2026-03-15",
        "TIME-OBS": "04:12:33.123",
        "TARGPROP": "SMACS0723",
        "TARG_RA": 110.8375,
        "TARG_DEC": -73.454444,
        "EFFEXPTM": 1288.4,
        "EXP_TYPE": "NRC_IMAGE",
        "DETECTOR": "NRCB1",
        "FILTER": "F200W",
        "PUPIL": "CLEAR",
        "CAL_VER": "1.14.0",
        "CRDS_CTX": "jwst_1241.pmap",
    }
    header.update(changes)
    return {k: v for k, v in header.items() if v is not ...}


UNCAL = "jw01011002001_02101_00001_nrcb1_uncal.fits"
CAL = "jw01011002001_02101_00001_nrcb1_cal.fits"


def test_every_shipped_configuration_loads(catalog: InstrumentCatalog) -> None:
    assert set(catalog.missions) == {"KECK", "JWST"}
    products = {(i.mission, i.name): [(p.name, p.level) for p in i.products] for i in catalog.instruments}
    assert products == {
        ("KECK", "HIRES"): [("raw", "0")],
        ("KECK", "KCWI"): [("raw", "0"), ("quicklook", "1")],
        ("JWST", "NIRCAM"): [("uncal", "1b"), ("cal", "2b")],
    }
    assert catalog.missions["KECK"].release.exclusive_access_months == 18
    assert catalog.missions["JWST"].release.exclusive_access_months == 12
    # An instrument without a release rule of its own takes its mission's.
    assert catalog.instrument("keck", "hires").release == catalog.missions["KECK"].release


@pytest.mark.parametrize(
    ("relative_path", "expected"),
    [
        ("keck/hires/raw/hires0001.fits", ("HIRES", "raw")),
        ("keck/kcwi/raw/kb260315_00012.fits", ("KCWI", "raw")),
        ("keck/kcwi/redux/kb260315_00012_icubes.fits", ("KCWI", "quicklook")),
        (f"jwst/nircam/uncal/{UNCAL}", ("NIRCAM", "uncal")),
        (f"jwst/nircam/cal/{CAL}", ("NIRCAM", "cal")),
        ("./keck/hires/raw/hires0002.fits", ("HIRES", "raw")),
        ("keck/hires/raw/.hires0001.fits.part", None),  # a writer's temporary name
        ("keck/hires/raw/hires0001.fits.jpg", None),
        ("keck/hires/hires0001.fits", None),  # not the product's folder
        ("keck/hires/raw/sub/hires0001.fits", None),
        ("keck/kcwi/raw/kb260315_00012_icubes.fits", None),  # a pipeline product in the raw folder
        ("keck/hires/raw/../raw/hires0001.fits", None),
        ("/keck/hires/raw/hires0001.fits", None),
        (f"jwst/nircam/uncal/{CAL}", None),
    ],
)
def test_match_by_folder_and_pattern(
    catalog: InstrumentCatalog, relative_path: str, expected: tuple[str, str] | None
) -> None:
    match = catalog.match(relative_path)
    assert (None if match is None else (match.instrument.name, match.product.name)) == expected


def test_unknown_names_say_what_is_known(catalog: InstrumentCatalog) -> None:
    with pytest.raises(KeyError, match="unknown instrument 'LRIS' for mission KECK"):
        catalog.instrument("KECK", "LRIS")
    with pytest.raises(KeyError, match="unknown mission 'HST'"):
        catalog.level_order("HST")
    with pytest.raises(ValueError, match="'2c' is not a JWST level"):
        catalog.level_at_least("JWST", "2c", "2a")


@pytest.mark.parametrize(
    ("mission", "level", "minimum", "expected"),
    [
        ("JWST", "2b", "2a", True),
        ("JWST", "3", "2b", True),
        ("JWST", "2a", "2b", False),
        ("JWST", "1b", "1b", True),
        ("JWST", "1b", "2a", False),
        ("KECK", "2", "1", True),
        ("KECK", "0", "1", False),
    ],
)
def test_levels_compare_by_the_mission_order(
    catalog: InstrumentCatalog, mission: str, level: str, minimum: str, expected: bool
) -> None:
    assert catalog.level_at_least(mission, level, minimum) is expected


def test_level_order_is_not_string_order() -> None:
    # "10" sorts before "9" as text; a mission with those levels must still compare them by its order.
    mission = Mission(name="TEST", levels=("9", "10"), release=ReleaseRule(exclusive_access_months=0))
    catalog = InstrumentCatalog([mission], [])
    assert catalog.level_at_least("TEST", "10", "9")
    assert not catalog.level_at_least("TEST", "9", "10")
    assert catalog.level_order("TEST") == ("9", "10")


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (datetime(2026, 3, 15, 3, 25, 45, 670000, tzinfo=UTC), "HI.20260315.12345.67"),
        (datetime(2026, 3, 15, 0, 0, 5, 70000, tzinfo=UTC), "HI.20260315.00005.07"),  # zero padding
        (datetime(2026, 3, 15, 0, 0, 0, tzinfo=UTC), "HI.20260315.00000.00"),
        (datetime(2026, 3, 15, 12, 0, 12, 349999, tzinfo=UTC), "HI.20260315.43212.34"),  # hundredths truncated
        # The last hundredth of the day stays on its day: rounding would make 86400.00, a second the day lacks.
        (datetime(2026, 3, 15, 23, 59, 59, 995000, tzinfo=UTC), "HI.20260315.86399.99"),
        (datetime(2026, 3, 15, 23, 59, 59, 999999, tzinfo=UTC), "HI.20260315.86399.99"),
    ],
)
def test_koaid_formatting(when: datetime, expected: str) -> None:
    assert koaid("HI", when) == expected


def test_hires_header_evaluates_to_koaid_and_metadata(catalog: InstrumentCatalog) -> None:
    hires = catalog.instrument("KECK", "HIRES")

    evaluation = hires.evaluate(hires_header(), "hires0012.fits", hires.product("raw"))

    assert evaluation.archive_id == "HI.20260315.12345.67"
    assert (evaluation.mission, evaluation.instrument, evaluation.level) == ("KECK", "HIRES", "0")
    assert (evaluation.propid, evaluation.obset) == ("2026A_U123", None)
    assert evaluation.observed_at == datetime(2026, 3, 15, 3, 25, 45, 670000, tzinfo=UTC)
    assert evaluation.release_date == date(2027, 9, 15)
    meta = evaluation.metadata
    assert meta.target_name == "HD 189733"
    assert meta.ra_deg == pytest.approx(300.182125)  # 20h00m43.71s
    assert meta.dec_deg == pytest.approx(22.710861, abs=1e-6)  # +22d42m39.1s
    assert meta.exptime_s == 300.0
    assert meta.filters == ["bg12"]  # "clear" is no filter
    assert meta.intent == "science"
    assert meta.header["DECKNAME"] == "C2"
    # What travels in the manifest and the events, with the ObsCore fields the instrument configuration gives.
    sent = json.loads(meta.model_dump_json())
    assert sent["observed_at"] == "2026-03-15T03:25:45.670000Z"
    assert (sent["release_date"], sent["calib_level"], sent["dataproduct_type"]) == ("2027-09-15", 1, "spectrum")
    assert (sent["em_min_m"], sent["em_max_m"]) == (0.3e-6, 1.0e-6)
    assert (sent["software_version"], sent["reference_files"]) == (None, [])


def test_the_last_hundredth_of_a_day_keeps_its_date(catalog: InstrumentCatalog) -> None:
    hires = catalog.instrument("KECK", "HIRES")
    header = hires_header(UT="23:59:59.995")

    assert hires.evaluate(header, "hires0012.fits", hires.product("raw")).archive_id == "HI.20260315.86399.99"


def test_older_frames_with_utc_instead_of_ut(catalog: InstrumentCatalog) -> None:
    hires = catalog.instrument("KECK", "HIRES")
    header = hires_header(UT=..., UTC="03:25:45.67")

    assert hires.evaluate(header, "hires0012.fits", hires.product("raw")).archive_id == "HI.20260315.12345.67"


def test_sexagesimal_south_and_degrees(catalog: InstrumentCatalog) -> None:
    hires = catalog.instrument("KECK", "HIRES")
    south = hires.evaluate(
        hires_header(RA="23:06:29.28", DEC="-05:02:28.6"), "hires0012.fits", hires.product("raw")
    ).metadata
    assert south.ra_deg == pytest.approx(346.622)
    assert south.dec_deg == pytest.approx(-5.041278, abs=1e-6)

    nircam = catalog.instrument("JWST", "NIRCAM")
    degrees = nircam.evaluate(nircam_header(), UNCAL, nircam.product("uncal")).metadata
    assert (degrees.ra_deg, degrees.dec_deg) == (110.8375, -73.454444)


def test_nircam_archive_id_program_obset_and_release(catalog: InstrumentCatalog) -> None:
    nircam = catalog.instrument("JWST", "NIRCAM")

    uncal = nircam.evaluate(nircam_header(), UNCAL, nircam.product("uncal"))
    cal = nircam.evaluate(nircam_header(), CAL, nircam.product("cal"))

    assert uncal.archive_id == "jw01011002001_02101_00001_nrcb1_uncal"
    assert cal.archive_id == "jw01011002001_02101_00001_nrcb1_cal"
    assert (uncal.level, cal.level) == ("1b", "2b")
    assert (uncal.propid, uncal.obset) == ("1011", "002")
    assert uncal.release_date == date(2027, 3, 15)
    assert uncal.metadata.filters == ["F200W"]
    assert cal.metadata.header["CAL_VER"] == "1.14.0"
    assert (uncal.metadata.calib_level, cal.metadata.calib_level) == (1, 2)


def test_nircam_time_from_date_obs_and_time_obs(catalog: InstrumentCatalog) -> None:
    nircam = catalog.instrument("JWST", "NIRCAM")
    header = nircam_header(**{"DATE-BEG": ...})

    evaluation = nircam.evaluate(header, UNCAL, nircam.product("uncal"))

    assert evaluation.observed_at == datetime(2026, 3, 15, 4, 12, 33, 123000, tzinfo=UTC)


def test_calibration_intent(catalog: InstrumentCatalog) -> None:
    nircam = catalog.instrument("JWST", "NIRCAM")
    dark = nircam.evaluate(nircam_header(EXP_TYPE="NRC_DARK", TARGPROP=None), UNCAL, nircam.product("uncal"))
    assert (dark.metadata.intent, dark.metadata.target_name) == ("calibration", None)

    hires = catalog.instrument("KECK", "HIRES")
    bias = hires.evaluate(hires_header(OBSTYPE="Bias", RA=None, DEC=None), "hires0012.fits", hires.product("raw"))
    assert (bias.metadata.intent, bias.metadata.ra_deg) == ("calibration", None)


def test_every_problem_is_reported_at_once(catalog: InstrumentCatalog) -> None:
    hires = catalog.instrument("KECK", "HIRES")
    header = hires_header(**{"DATE-OBS": ..., "EXPTIME": -3, "DEC": "+95:00:00", "XDISPERS": "GREEN"})

    with pytest.raises(InvalidFile) as caught:
        hires.evaluate(header, "hires0012.fits", hires.product("raw"))

    reason = str(caught.value)
    assert "missing required keyword DATE-OBS" in reason
    assert "EXPTIME=-3 is below its minimum 0" in reason
    assert "DEC='+95:00:00' is above its maximum 90" in reason
    assert "XDISPERS='GREEN' is not one of 'RED', 'UV'" in reason
    assert "no observation time" not in reason  # the missing DATE-OBS says it already


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"EXPTIME": "long"}, "EXPTIME='long' is not a number"),
        ({"FRAMENO": 12.5}, "FRAMENO=12.5 is not an integer"),
        ({"UT": "25:00:00"}, "UT='25:00:00' is not a time"),
        ({"DATE-OBS": "2026-02-30"}, "DATE-OBS='2026-02-30' is not a valid calendar date"),
        ({"RA": "24:00:00"}, "RA='24:00:00' is not below its exclusive maximum 24"),
        ({"PROGNAME": "U123"}, "PROGNAME='U123' does not match the pattern"),
        ({"TARGNAME": "   "}, None),  # nullable: a blank target is fine
        ({"XDISPERS": ""}, "XDISPERS has no value"),
        ({"FRAMENO": 99}, "the file name gives FRAMENO as '0012' but the header has 99"),
    ],
)
def test_keyword_rules(catalog: InstrumentCatalog, changes: dict[str, Any], reason: str | None) -> None:
    hires = catalog.instrument("KECK", "HIRES")
    header = hires_header(**changes)
    if reason is None:
        hires.evaluate(header, "hires0012.fits", hires.product("raw"))
        return
    with pytest.raises(InvalidFile, match=reason.replace("(", r"\(")):
        hires.evaluate(header, "hires0012.fits", hires.product("raw"))


def test_nircam_file_name_must_agree_with_the_header(catalog: InstrumentCatalog) -> None:
    nircam = catalog.instrument("JWST", "NIRCAM")
    with pytest.raises(InvalidFile, match="the file name gives OBSERVTN as '002' but the header has '003'"):
        nircam.evaluate(nircam_header(OBSERVTN="003"), UNCAL, nircam.product("uncal"))
    with pytest.raises(InvalidFile, match="does not follow NIRCAM's naming rule"):
        nircam.evaluate(nircam_header(), "exposure1.fits", nircam.product("uncal"))


def test_kcwi_prefix_follows_the_camera(catalog: InstrumentCatalog) -> None:
    kcwi = catalog.instrument("KECK", "KCWI")
    header = {k: v for k, v in hires_header().items() if k not in ("INSTRUME", "TELESCOP", "OBSTYPE", "EXPTIME")}
    header.update({"INSTRUME": "KCWI", "CAMERA": "RED", "IMTYPE": "OBJECT", "XPOSURE": 600.0})
    header.update({"BUNIT": "FLAM16", "CTYPE3": "AWAV"})
    header = {k: v for k, v in header.items() if k in kcwi.rules_for(kcwi.product("quicklook"))}

    cube = kcwi.evaluate(header, "kr260315_00012_icubes.fits", kcwi.product("quicklook"))
    assert cube.archive_id == "KR.20260315.12345.67_icubes"
    assert cube.level == "1"

    header["CAMERA"] = "GREEN"
    with pytest.raises(InvalidFile, match="CAMERA='GREEN' is not one of 'BLUE', 'RED'"):
        kcwi.evaluate(header, "kr260315_00012_icubes.fits", kcwi.product("quicklook"))


@pytest.mark.parametrize(
    ("months", "observed", "released"),
    [
        (18, date(2026, 3, 15), date(2027, 9, 15)),
        (12, date(2026, 2, 28), date(2027, 2, 28)),
        (6, date(2026, 8, 31), date(2027, 2, 28)),  # no 31 February: the month's last day
        (0, date(2026, 3, 15), date(2026, 3, 15)),
    ],
)
def test_release_date_counts_calendar_months(months: int, observed: date, released: date) -> None:
    assert ReleaseRule(exclusive_access_months=months).release_date(observed) == released


# --- configuration errors ------------------------------------------------------------------------------


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "instruments"
    shutil.copytree(INSTRUMENTS_DIR, copy)
    return copy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('[keywords.EXPTIME]\ntype = "float"', '[keywords.EXPTIME]\ntype = "number"'), "keywords.EXPTIME.type"),
        (('level = "0"', 'level = "3"'), r"products\[0\]\.level: '3' is not a KECK level"),
        (('exptime = "EXPTIME"', 'exptime = "EXPTIM"'), "metadata.exptime names EXPTIM, which has no rule"),
        (('name = "HIRES"', 'name = "HIRES"\ncolour = "red"'), "colour: Extra inputs are not permitted"),
        (('pattern = "hires[0-9]*.fits"', 'pattern = "../hires*.fits"'), r"products\.0\.pattern"),
        (('[archive_id]\nkind = "koaid"', '[archive_id]\nkind = "koaid'), "not valid TOML"),
    ],
)
def test_a_bad_file_names_itself_and_the_field(config_copy: Path, edit: tuple[str, str], message: str) -> None:
    path = config_copy / "keck" / "hires.toml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))

    with pytest.raises(InstrumentConfigError, match=message) as caught:
        load_instruments(config_copy)
    assert str(path) in str(caught.value)


def test_two_products_cannot_claim_the_same_files(config_copy: Path) -> None:
    text = (config_copy / "keck" / "hires.toml").read_text().replace('name = "HIRES"', 'name = "HIRES2"', 1)
    (config_copy / "keck" / "hires2.toml").write_text(text)

    with pytest.raises(InstrumentConfigError, match="are also those of HIRES raw"):
        load_instruments(config_copy)


def test_an_instrument_needs_its_mission_file(config_copy: Path) -> None:
    (config_copy / "keck" / "mission.toml").unlink()
    with pytest.raises(InstrumentConfigError, match=r"has no mission\.toml"):
        load_instruments(config_copy)


# --- adding an instrument is adding a file ---------------------------------------------------------------

MADE_UP_INSTRUMENT = """
# A made-up wide-field imager on Keck I, added by dropping this one file next to the others.
name = "WIDECAM"

[[products]]
name = "raw"
level = "0"
folder = "keck/widecam/raw"
pattern = "wc[0-9]*.fits"
[products.simulate]
filename = "wc{FRAMENO:05d}.fits"
shape = [-1, 512]

[[products]]
name = "stacked"
level = "2"
folder = "keck/widecam/stacks"
pattern = "wc[0-9]*_stack.fits"
archive_id_suffix = "_stack"
[products.simulate]
filename = "wc{FRAMENO:05d}_stack.fits"
derived_from = "raw"
shape = [-1, 512]
images = [{ dtype = "float32", content = "flux" }]

[[observed_at]]
datetime = "DATE-BEG"

[propid]
keyword = "PROGNAME"

[archive_id]
kind = "koaid"
prefix = "WC"

[metadata]
target = "OBJECT"
ra = "RA"
dec = "DEC"
exptime = "EXPTIME"
filters = ["FILTER"]
catalog = ["FRAMENO"]

[keywords.DATE-BEG]
type = "datetime"
required = true
[keywords.PROGNAME]
type = "str"
required = true
[keywords.FRAMENO]
type = "int"
required = true
minimum = 1
[keywords.OBJECT]
type = "str"
nullable = true
[keywords.RA]
type = "float"
unit = "deg"
nullable = true
minimum = 0
exclusive_maximum = 360
[keywords.DEC]
type = "float"
unit = "deg"
nullable = true
minimum = -90
maximum = 90
[keywords.EXPTIME]
type = "float"
unit = "ms"
required = true
minimum = 0
[keywords.FILTER]
type = "str"
values = ["g", "r", "i", "z"]

[simulate.header]
FRAMENO = "{frameno}"
"""


def test_adding_an_instrument_is_adding_a_file(config_copy: Path, tmp_path: Path) -> None:
    (config_copy / "keck" / "widecam.toml").write_text(MADE_UP_INSTRUMENT)

    catalog = load_instruments(config_copy)
    widecam = catalog.instrument("KECK", "WIDECAM")
    simulator = Simulator(catalog, tmp_path / "root", seed=4, night=date(2026, 3, 15))
    raw = simulator.write_file("WIDECAM", "raw", size_bytes=30_000)
    stack = simulator.write_file("WIDECAM", "stacked", size_bytes=30_000)

    for simulated, product, level in ((raw, "raw", "0"), (stack, "stacked", "2")):
        match = catalog.match(simulated.relative_path)
        assert match is not None
        assert (match.instrument, match.product.name) == (widecam, product)
        evaluation = widecam.evaluate(verify_fits(simulated.path).header, simulated.path.name, match.product)
        assert evaluation.level == level
        assert evaluation.propid in catalog.missions["KECK"].simulate.programs
        # The mission's 18 months from the UT date: Keck's night of 15 March is observed on the 16th, UT.
        assert evaluation.release_date == date(2027, 9, 16)
        assert evaluation.metadata.exptime_s == simulated.evaluation.metadata.exptime_s  # type: ignore[union-attr]
    base = raw.archive_id
    assert base is not None
    assert base.startswith("WC.20260316.")
    assert stack.archive_id == f"{base}_stack"  # the stack follows its raw frame
    # EXPTIME is written in milliseconds; the metadata says seconds.
    raw_header = verify_fits(raw.path).header
    assert raw_header["EXPTIME"] == pytest.approx(1000 * raw.evaluation.metadata.exptime_s)  # type: ignore[union-attr,operator]


def test_matches_can_be_keys(catalog: InstrumentCatalog) -> None:
    # Services keep per-instrument state (metrics, queues) in dictionaries.
    first = catalog.match("keck/hires/raw/hires0001.fits")
    second = catalog.match("keck/hires/raw/hires0002.fits")
    assert first is not None
    assert second is not None
    assert {first: "seen"}[second] == "seen"
    assert len({first.instrument, second.instrument, catalog.instrument("KECK", "KCWI")}) == 2


def test_a_calibrated_file_names_the_software_and_reference_files_that_made_it(
    catalog: InstrumentCatalog, tmp_path: Path
) -> None:
    """What a dataset.repro tells its subscribers comes from the header keywords the configuration names."""
    nircam = catalog.instrument("JWST", "NIRCAM")
    header = nircam_header(
        CAL_VER="1.18.0",
        R_DARK="crds://jwst_nircam_dark_0342.fits",
        R_FLAT="crds://jwst_nircam_flat_0456.fits",
        R_AREA="N/A",  # the step used no reference file of this kind
    )
    cal = nircam.evaluate(header, CAL, nircam.product("cal")).metadata
    assert cal.software_version == "1.18.0"
    assert cal.reference_files == ["crds://jwst_nircam_dark_0342.fits", "crds://jwst_nircam_flat_0456.fits"]
    uncal = nircam.evaluate(nircam_header(CAL_VER=...), UNCAL, nircam.product("uncal")).metadata
    assert (uncal.software_version, uncal.reference_files) == (None, [])

    # The simulator's calibrated files carry them as the real pipeline writes them.
    simulator = Simulator(catalog, tmp_path, seed=3, night=date(2026, 3, 15))
    simulator.write_file("NIRCAM", "uncal", size_bytes=50_000)
    written = simulator.write_file("NIRCAM", "cal", size_bytes=50_000)
    simulated = nircam.evaluate(verify_fits(written.path).header, written.path.name, nircam.product("cal")).metadata
    assert simulated.software_version == "1.14.0"
    assert "crds://jwst_nircam_flat_0312.fits" in simulated.reference_files
    assert all(name.startswith("crds://") for name in simulated.reference_files)  # no 'N/A'
