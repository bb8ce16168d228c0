"""The night simulator: its files are what DEP expects, bad files are rejected for the right reason, seeds repeat."""

from __future__ import annotations

import argparse
import re
from contextlib import aclosing
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from skyport.fits import InvalidFile, looks_complete, verify_fits
from skyport.instruments import InstrumentCatalog, koaid, load_instruments
from skyport.simulator import BadKind, SimulatedFile, SimulationError, Simulator, add_arguments, main, parse_size

INSTRUMENTS_DIR = Path(__file__).resolve().parents[3] / "deploy" / "instruments"
NIGHT = date(2026, 3, 15)
SMALL = 40_000


@pytest.fixture(scope="module")
def catalog() -> InstrumentCatalog:
    return load_instruments(INSTRUMENTS_DIR)


def rejection(catalog: InstrumentCatalog, simulated: SimulatedFile) -> str:
    """The reason DEP gives for a bad file (verify, then evaluate); fails the test if DEP accepts it."""
    match = catalog.match(simulated.relative_path)
    assert match is not None  # a bad file still has a name the monitor picks up
    try:
        summary = verify_fits(simulated.path)
        match.instrument.evaluate(summary.header, simulated.path.name, match.product)
    except InvalidFile as exc:
        return str(exc)
    raise AssertionError(f"{simulated.relative_path} ({simulated.bad}) was accepted")


def leftovers(root: Path) -> list[Path]:
    """Temporary files a writer left behind."""
    return list(root.rglob(".*.part"))


def dep(catalog: InstrumentCatalog, root: Path, simulated: SimulatedFile) -> tuple[str, str, str, str | None]:
    """What DEP makes of a file: match by path, verify, evaluate."""
    match = catalog.match(simulated.relative_path)
    assert match is not None, simulated.relative_path
    summary = verify_fits(root / simulated.relative_path)
    evaluation = match.instrument.evaluate(summary.header, simulated.path.name, match.product)
    return evaluation.archive_id, evaluation.level, evaluation.propid, evaluation.obset


@pytest.mark.parametrize(
    ("instrument", "product", "level", "archive_id"),
    [
        # Keck's night of 15 March (Hawaii) begins at 19:00 HST, 05:00 UT on the 16th: KOAIDs carry the UT date.
        ("HIRES", "raw", "0", r"HI\.20260316\.\d{5}\.\d{2}"),
        ("KCWI", "raw", "0", r"KB\.20260316\.\d{5}\.\d{2}"),
        ("KCWI", "quicklook", "1", r"KB\.20260316\.\d{5}\.\d{2}_icubes"),
        ("NIRCAM", "uncal", "1b", r"jw\d{5}\d{3}001_02101_\d{5}_nrc(a|b)(\d|long)_uncal"),
        ("NIRCAM", "cal", "2b", r"jw\d{5}\d{3}001_02101_\d{5}_nrc(a|b)(\d|long)_cal"),
    ],
)
def test_each_product_evaluates_to_the_expected_archive_id(
    catalog: InstrumentCatalog, tmp_path: Path, instrument: str, product: str, level: str, archive_id: str
) -> None:
    simulator = Simulator(catalog, tmp_path, seed=21, night=NIGHT)

    simulated = simulator.write_file(instrument, product, size_bytes=SMALL)

    assert simulated.path == tmp_path / simulated.relative_path
    assert looks_complete(simulated.path)
    found = dep(catalog, tmp_path, simulated)
    assert found == (simulated.archive_id, level, simulated.propid, simulated.obset)
    assert simulated.archive_id is not None
    assert re.fullmatch(archive_id, simulated.archive_id)
    mission = catalog.instrument("KECK" if instrument != "NIRCAM" else "JWST", instrument).mission
    assert simulated.propid in catalog.missions[mission].simulate.programs
    assert simulated.observed_at is not None
    if mission == "KECK":
        # The KOAID is the observation time's: DEP and the simulator agree with the formula, not just each other.
        prefix = simulated.archive_id.split(".")[0]
        assert simulated.archive_id.startswith(koaid(prefix, simulated.observed_at))
        assert simulated.obset is None
    else:
        assert simulated.archive_id == simulated.path.name.removesuffix(".fits")
        assert simulated.archive_id[2:7] == f"{int(simulated.propid or 0):05d}"
        assert simulated.archive_id[7:10] == simulated.obset


def test_pipeline_products_follow_their_raw_file(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    simulator = Simulator(catalog, tmp_path, seed=5, night=NIGHT)

    raw = simulator.write_file("KCWI", "raw", size_bytes=SMALL)
    cube = simulator.write_file("KCWI", "quicklook", size_bytes=SMALL)
    uncal = simulator.write_file("NIRCAM", "uncal", size_bytes=SMALL)
    cal = simulator.write_file("NIRCAM", "cal", size_bytes=SMALL)

    assert cube.archive_id == f"{raw.archive_id}_icubes"
    assert (cube.propid, cube.observed_at) == (raw.propid, raw.observed_at)
    assert uncal.archive_id is not None
    assert cal.archive_id == uncal.archive_id.removesuffix("_uncal") + "_cal"
    uncal_header, cal_header = verify_fits(uncal.path).header, verify_fits(cal.path).header
    for keyword in ("DETECTOR", "FILTER", "DATE-BEG", "NGROUPS", "TARGPROP"):
        assert cal_header[keyword] == uncal_header[keyword]


def test_files_are_real_images_of_about_the_requested_size(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    simulator = Simulator(catalog, tmp_path, seed=8, night=NIGHT)

    for size in (60_000, 1_500_000):
        simulated = simulator.write_file("HIRES", "raw", size_bytes=size)
        assert abs(simulated.size_bytes - size) < 0.05 * size + 4 * 2880
        summary = verify_fits(simulated.path)
        assert summary.hdu_count == 4  # the primary header and one image per CCD
        assert all(hdu.shape and hdu.shape[-1] > 1 for hdu in summary.hdus[1:])


def test_write_modes_leave_only_the_final_name(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    simulator = Simulator(catalog, tmp_path, seed=9, night=NIGHT)

    renamed = simulator.write_file("NIRCAM", "uncal", size_bytes=SMALL, mode="rename")
    in_place = simulator.write_file(
        "HIRES", "raw", size_bytes=SMALL, mode="inplace", chunk_delay=0.001, chunk_bytes=2880
    )

    assert (renamed.mode, in_place.mode) == ("rename", "inplace")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([renamed.path.name, in_place.path.name])
    assert in_place.closed_at >= in_place.started_at


def test_same_seed_same_bytes(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    def night(root: Path, seed: int) -> list[tuple[str, bytes]]:
        simulator = Simulator(catalog, root, seed=seed, night=NIGHT)
        files = [
            simulator.write_file("HIRES", "raw", size_bytes=SMALL),
            simulator.write_file("KCWI", "raw", size_bytes=SMALL),
            simulator.write_file("KCWI", "quicklook", size_bytes=SMALL),
            simulator.write_file("NIRCAM", "uncal", size_bytes=SMALL),
            simulator.write_bad_file(BadKind.WRONG_DATASUM, "NIRCAM", "cal", size_bytes=SMALL),
        ]
        return [(f.relative_path, f.path.read_bytes()) for f in files]

    first = night(tmp_path / "a", seed=1234)
    again = night(tmp_path / "b", seed=1234)
    other = night(tmp_path / "c", seed=1235)

    assert first == again
    assert [name for name, _ in first] != [name for name, _ in other] or first != other


def test_chunked_writing_does_not_change_the_bytes(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    whole = Simulator(catalog, tmp_path / "a", seed=3, night=NIGHT).write_file("KCWI", "quicklook", size_bytes=SMALL)
    chunked = Simulator(catalog, tmp_path / "b", seed=3, night=NIGHT).write_file(
        "KCWI", "quicklook", size_bytes=SMALL, mode="inplace", chunk_bytes=2880
    )
    assert whole.path.read_bytes() == chunked.path.read_bytes()


def test_most_files_carry_checksums_and_all_verify(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    simulator = Simulator(catalog, tmp_path, seed=6, night=NIGHT, checksum_fraction=0.5)
    files = [simulator.write_file("NIRCAM", "uncal", size_bytes=10_000) for _ in range(12)]

    with_checksum = [f for f in files if f.checksum]
    assert 0 < len(with_checksum) < len(files)
    for simulated in files:
        assert verify_fits(simulated.path).checksum_verified is simulated.checksum


@pytest.mark.parametrize("kind", list(BadKind))
@pytest.mark.parametrize(("instrument", "product"), [("HIRES", "raw"), ("KCWI", "quicklook"), ("NIRCAM", "cal")])
def test_bad_files_are_rejected_with_a_clear_reason(
    catalog: InstrumentCatalog, tmp_path: Path, kind: BadKind, instrument: str, product: str
) -> None:
    simulator = Simulator(catalog, tmp_path, seed=13, night=NIGHT)

    bad = simulator.write_bad_file(kind, instrument, product, size_bytes=SMALL)

    assert bad.bad is kind
    assert bad.expected_reason
    assert bad.expected_reason in rejection(catalog, bad)
    rejected_by_structure = kind in (BadKind.TRUNCATED, BadKind.NO_END_CARD, BadKind.NOT_FITS, BadKind.EMPTY)
    assert looks_complete(bad.path) is not rejected_by_structure


def test_bad_files_can_aim_at_a_keyword(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    simulator = Simulator(catalog, tmp_path, seed=14, night=NIGHT)

    missing = simulator.write_bad_file("missing-keyword", "HIRES", keyword="DATE-OBS")
    out_of_range = simulator.write_bad_file("out-of-range", "NIRCAM", "uncal", keyword="TARG_DEC")

    assert missing.expected_reason == "missing required keyword DATE-OBS"
    assert out_of_range.expected_reason == "TARG_DEC=-93 is below its minimum -90"
    for bad in (missing, out_of_range):
        assert bad.expected_reason in rejection(catalog, bad)


async def test_run_writes_at_a_cadence_and_repeats(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    async def names(root: Path) -> list[SimulatedFile]:
        simulator = Simulator(catalog, root, seed=77, night=NIGHT)
        return [f async for f in simulator.run(count=8, rate_per_s=200, sizes=[10_000, 30_000], max_concurrent=3)]

    first = await names(tmp_path / "a")
    again = await names(tmp_path / "b")

    assert len(first) == 8
    assert sorted(f.relative_path for f in first) == sorted(f.relative_path for f in again)
    for simulated in first:
        assert dep(catalog, tmp_path / "a", simulated)[0] == simulated.archive_id
        assert simulated.closed_at <= datetime.now(UTC)


async def test_run_can_mix_in_bad_files_and_stop_early(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    simulator = Simulator(catalog, tmp_path, seed=78, night=NIGHT)
    seen = []
    run = simulator.run(rate_per_s=500, sizes=[10_000], bad_fraction=0.5, instruments=["HIRES"])
    async with aclosing(run) as files:
        async for simulated in files:
            seen.append(simulated)
            if len(seen) == 10:
                break

    assert {f.instrument for f in seen} == {"HIRES"}
    assert any(f.bad for f in seen)
    assert not leftovers(tmp_path)


def test_a_configuration_the_simulator_cannot_follow_says_what_to_add(
    catalog: InstrumentCatalog, tmp_path: Path
) -> None:
    hires = catalog.instrument("KECK", "HIRES")
    templates = {k: v for k, v in hires.simulate.header.items() if k != "BINNING"}
    without_binning = hires.model_copy(update={"simulate": hires.simulate.model_copy(update={"header": templates})})
    lonely = InstrumentCatalog(catalog.missions.values(), [without_binning])

    with pytest.raises(SimulationError, match=r"hires.toml \(raw\): BINNING must match .* \[simulate.header\]"):
        Simulator(lonely, tmp_path, seed=1, night=NIGHT).write_file("HIRES", "raw", size_bytes=SMALL)


@pytest.mark.parametrize(
    ("text", "size"),
    [("2880", 2880), ("50KB", 50_000), ("10MB", 10_000_000), ("1.5GB", 1_500_000_000), ("4MiB", 4 << 20)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="skyport simulate")
    add_arguments(parser)
    argv = ["--root", str(tmp_path), "--instruments-dir", str(INSTRUMENTS_DIR), "--count", "4", "--rate", "100"]
    argv += ["--sizes", "10KB,20KB", "--seed", "5", "--night", "2026-03-15", "--instruments", "HIRES,JWST/NIRCAM"]

    status = main(parser.parse_args(argv))

    output = capsys.readouterr().out.splitlines()
    assert status == 0
    assert "seed 5, night 2026-03-15" in output[0]
    assert len([line for line in output if re.match(r"\s+\d+\s", line)]) == 4
    assert output[-1].startswith("wrote 4 files (0 bad)")
    assert "repeat with --seed 5 --night 2026-03-15" in output[-1]
    assert len(list(tmp_path.rglob("*.fits"))) == 4


def test_a_restarted_night_continues_and_never_overwrites_a_file(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    first = Simulator(catalog, tmp_path, seed=1, night=NIGHT)
    before = [first.write_file("HIRES", "raw", size_bytes=SMALL) for _ in range(3)]
    written = {f.path: f.path.read_bytes() for f in before}

    # Started again over the same folders, with another seed, as `make demo` is after Ctrl-C.
    again = Simulator(catalog, tmp_path, seed=2, night=NIGHT)
    after = [again.write_file("HIRES", "raw", size_bytes=SMALL) for _ in range(2)]

    assert [f.path.name for f in after] == ["hires0004.fits", "hires0005.fits"]
    assert {path: path.read_bytes() for path in written} == written  # nothing already written was touched
    assert all(a.observed_at and b.observed_at and a.observed_at > b.observed_at for a in after for b in before)
    assert len({f.archive_id for f in before + after}) == 5


def test_a_taken_file_name_is_skipped_not_overwritten(catalog: InstrumentCatalog, tmp_path: Path) -> None:
    # A file named as the simulator's next one, by another program (no header the simulator can read).
    taken = tmp_path / "jwst" / "nircam" / "uncal"
    planned = Simulator(catalog, tmp_path / "dry", seed=5, night=NIGHT).write_file("NIRCAM", "uncal", size_bytes=SMALL)
    taken.mkdir(parents=True)
    (taken / planned.path.name).write_bytes(b"not ours")

    simulated = Simulator(catalog, tmp_path, seed=5, night=NIGHT).write_file("NIRCAM", "uncal", size_bytes=SMALL)

    assert simulated.path.name != planned.path.name
    assert (taken / planned.path.name).read_bytes() == b"not ours"
