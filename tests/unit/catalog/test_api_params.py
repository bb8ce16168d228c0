"""The catalog API's pure pieces: search parameters, cursors, LIKE escaping, and download scripts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from multidict import MultiDict

from services.catalog.bulk import TOKEN_VARIABLE, ScriptFile, local_name, render_script
from services.catalog.handlers.params import BadParameter, decode_cursor, parse_search
from services.catalog.storage.sql import escape_like, glob_to_like
from skyport.cursor import encode_cursor


def search(*pairs: tuple[str, str]) -> object:
    return parse_search(MultiDict(pairs), default_limit=100, max_limit=1000)


def test_a_file_name_glob_has_two_wildcards_and_nothing_else_is_special() -> None:
    assert glob_to_like("hires_00*.fits") == "hires\\_00%.fits"
    assert glob_to_like("a?b%c\\d") == "a_b\\%c\\\\d"
    assert escape_like("50%_off") == "50\\%\\_off"


def test_a_cursor_goes_round_and_a_made_up_one_is_refused() -> None:
    assert decode_cursor(encode_cursor(123456789)) == 123456789
    for forged in ("", "seq:12", "c2VxOi0x", "!!!", encode_cursor(5)[:-2]):
        with pytest.raises(BadParameter) as refused:
            decode_cursor(forged)
        assert refused.value.parameter == "cursor"


def test_observation_times_are_mjd_or_iso_and_the_same_moment_either_way() -> None:
    as_iso = parse_search(MultiDict([("t_min", "2026-03-15T12:00:00Z")]), default_limit=1, max_limit=1)
    as_mjd = parse_search(MultiDict([("t_min", "61114.5")]), default_limit=1, max_limit=1)
    naive = parse_search(MultiDict([("t_min", "2026-03-15T12:00:00")]), default_limit=1, max_limit=1)
    assert as_iso.filter.t_min == as_mjd.filter.t_min == naive.filter.t_min == 61114.5


@pytest.mark.parametrize(
    ("pairs", "parameter"),
    [
        ([("ra", "10"), ("dec", "20")], "radius"),
        ([("ra", "10"), ("dec", "20"), ("radius", "10.0001")], "radius"),
        ([("ra", "-0.1"), ("dec", "20"), ("radius", "1")], "ra"),
        ([("ra", "10"), ("dec", "inf"), ("radius", "1")], "dec"),
        ([("t_max", "nan")], "t_max"),
        ([("level", "")], "level"),
        ([("filename", "x" * 257)], "filename"),
    ],
)
def test_a_bad_search_parameter_is_named(pairs: list[tuple[str, str]], parameter: str) -> None:
    with pytest.raises(BadParameter) as refused:
        search(*pairs)
    assert refused.value.parameter == parameter


@pytest.mark.parametrize("radius", ["1.1e-308", "5e-324", "1e-12"])
def test_a_radius_too_small_for_any_sky_cell_is_still_a_cone(radius: str) -> None:
    found = parse_search(MultiDict([("ra", "10"), ("dec", "-20"), ("radius", radius)]), default_limit=1, max_limit=1)
    assert found.filter.cone is not None
    assert found.filter.cone.radius == float(radius)
    assert found.filter.cone.ranges  # the deepest cells that hold the centre


def test_a_file_is_saved_under_its_archive_id_whatever_its_name() -> None:
    assert local_name("HI.20260315.12345.67", "hires0001.fits") == "HI.20260315.12345.67.fits"
    assert local_name("jw01011_cal", "jw01011_cal.FITS.gz") == "jw01011_cal.fits.gz"
    assert local_name("../../etc/passwd", "x") == "_.._etc_passwd"
    assert local_name("-rf", "a.fits") == "rf.fits"


def test_a_script_quotes_what_came_from_outside_and_never_holds_a_token() -> None:
    script = render_script(
        [ScriptFile("A'; rm -rf ~; '", 1, "$(reboot).fits", "ab" * 32, 10)],
        public_url="https://archive.test",
        search="target=$(reboot)\nrm -rf ~",
        who="alice",
        generated=datetime(2026, 3, 15, tzinfo=UTC),
        script_name="get.sh",
    )
    fetch = next(line for line in script.splitlines() if line.strip().startswith("fetch "))
    assert fetch.split()[1] == "'https://archive.test/v1/files/A%27%3B%20rm%20-rf%20~%3B%20%27?version=1'"
    assert fetch.split()[2] == "A___rm_-rf_____.fits"
    assert "\nrm -rf ~" not in script  # the search is a comment on one line
    assert f'[ -n "${TOKEN_VARIABLE}" ]' in script
    assert script.rstrip().endswith("main")
