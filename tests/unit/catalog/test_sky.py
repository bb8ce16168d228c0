"""HEALPix cells and cone ranges for the catalog's positional index, against cdshealpix and brute force."""

from __future__ import annotations

import itertools
import math

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Latitude, Longitude
from cdshealpix.nested import lonlat_to_healpix

from services.catalog.sky import STORAGE_ORDER, angular_distance, cone, cone_depth, healpix_index


def random_sky(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions uniform on the sphere, in degrees."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 360, count), np.degrees(np.arcsin(rng.uniform(-1, 1, count)))


def test_the_cell_numbers_are_those_of_cdshealpix() -> None:
    ra, dec = random_sky(50_000, seed=1)
    # Poles, the equator, RA 0/360, and the boundary between the polar caps and the equatorial belt.
    belt = math.degrees(math.asin(2 / 3))
    ra = np.concatenate([ra, [0.0, 359.999999999, 45.0, 90.0, 180.0, 270.0, 12.3, 12.3, 200.0, 200.0]])
    dec = np.concatenate([dec, [0.5, -0.5, 89.9999999, -89.9999999, 90.0, -90.0, belt + 1e-9, belt - 1e-9, -belt, 0.0]])

    expected = lonlat_to_healpix(Longitude(ra * u.deg), Latitude(dec * u.deg), STORAGE_ORDER)
    ours = np.array([healpix_index(a, d) for a, d in zip(ra.tolist(), dec.tolist(), strict=True)], dtype=np.uint64)

    assert np.array_equal(ours, expected)


def test_a_cell_number_fits_a_bigint() -> None:
    assert 0 <= healpix_index(359.9999999, -89.9999999) < 12 << (2 * STORAGE_ORDER) < 2**63


@pytest.mark.parametrize(
    ("ra", "dec", "radius"),
    [
        (150.0, 2.2, 1 / 3600),  # one arcsecond
        (150.0, 2.2, 1 / 60),  # one arcminute
        (10.0, -45.0, 0.5),
        (359.9, 0.1, 2.0),  # across RA 0
        (0.05, 89.5, 1.5),  # over the north pole
        (123.0, -88.0, 5.0),  # over the south pole
        (45.0, 41.8, 3.0),  # on the belt's edge
        (270.0, 10.0, 30.0),
        (200.0, -20.0, 120.0),  # more than a hemisphere
    ],
)
def test_a_cone_s_ranges_hold_every_position_inside_it(ra: float, dec: float, radius: float) -> None:
    rng = np.random.default_rng(int(ra * 1000 + dec * 10 + radius * 100))
    # Uniform positions, and a dense cloud around the cone's edge where mistakes would hide.
    sky_ra, sky_dec = random_sky(20_000, seed=7)
    offsets = rng.uniform(0, 1.3 * radius, 5_000)
    angles = rng.uniform(0, 2 * math.pi, 5_000)
    near_dec = np.clip(dec + offsets * np.sin(angles), -90, 90)
    near_ra = (ra + offsets * np.cos(angles) / max(math.cos(math.radians(dec)), 0.05)) % 360
    all_ra, all_dec = np.concatenate([sky_ra, near_ra]).tolist(), np.concatenate([sky_dec, near_dec]).tolist()
    positions = list(zip(all_ra, all_dec, strict=True))

    search = cone(ra, dec, radius)

    inside = [(a, d) for a, d in positions if angular_distance(a, d, ra, dec) <= radius]
    assert inside, "the test needs positions inside the cone"
    missed = [(a, d) for a, d in inside if not search.may_contain(healpix_index(a, d))]
    assert missed == []
    candidates = sum(search.may_contain(healpix_index(a, d)) for a, d in positions)
    if radius < 90:
        assert candidates < 6 * len(inside)  # the ranges are tight enough to be worth an index


def test_ranges_are_sorted_and_neither_overlap_nor_touch() -> None:
    for radius in (1 / 3600, 0.01, 0.5, 3.0, 20.0):
        ranges = cone(33.3, -12.5, radius).ranges
        assert all(first < end for first, end in ranges)
        assert all(previous[1] < following[0] for previous, following in itertools.pairwise(ranges))
        assert len(ranges) <= 16


def test_the_cone_depth_follows_the_radius() -> None:
    depths = [cone_depth(r) for r in (90.0, 10.0, 1.0, 1 / 60, 1 / 3600, 1e-9)]
    assert depths == sorted(depths)
    assert depths[0] == 0
    assert depths[-1] == 27


@pytest.mark.parametrize(
    ("ra", "dec", "radius", "message"),
    [
        (10.0, 91.0, 1.0, "declination"),
        (10.0, -90.5, 1.0, "declination"),
        (10.0, 0.0, 0.0, "radius"),
        (10.0, 0.0, -1.0, "radius"),
        (10.0, 0.0, 181.0, "radius"),
        (math.nan, 0.0, 1.0, "finite"),
        (10.0, 0.0, math.inf, "radius"),
    ],
)
def test_impossible_cones_are_refused_with_a_reason(ra: float, dec: float, radius: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cone(ra, dec, radius)


def test_right_ascension_wraps_around() -> None:
    assert healpix_index(-10.0, 5.0) == healpix_index(350.0, 5.0)
    assert cone(370.0, 5.0, 1.0).ranges == cone(10.0, 5.0, 1.0).ranges


def test_angular_distances() -> None:
    assert angular_distance(0, 0, 90, 0) == pytest.approx(90)
    assert angular_distance(10, 89.9, 190, 89.9) == pytest.approx(0.2)
    assert angular_distance(359.99, 0, 0.01, 0) == pytest.approx(0.02)
    assert angular_distance(0, 90, 123, 90) == pytest.approx(0, abs=1e-12)
    assert angular_distance(1, 1, 1, 1 + 1 / 3600) == pytest.approx(1 / 3600, rel=1e-6)
