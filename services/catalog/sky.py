"""Positions on the sky for the catalog: the HEALPix cell of a product, and a cone as ranges of cells.

Every product with a position stores its HEALPix cell number in the NESTED scheme at order
:data:`STORAGE_ORDER` (29, cells of about 0.4 milliarcseconds) in a B-tree-indexed ``bigint``. In the nested
scheme the cells inside a coarser cell of depth ``d`` are the contiguous numbers
``[cell << 2(29 - d), (cell + 1) << 2(29 - d))``, so a cone search becomes a handful of index range scans:

1. ``cdshealpix`` covers the cone with cells of depth at most :func:`cone_depth` (a depth chosen from the
   radius so that a few cells cover it; cells partly in the cone are included, so nothing inside is missed);
2. each cell becomes its range of order-29 numbers, and ranges that touch are merged;
3. the rows found in those ranges are then filtered by their exact angular distance.

No PostgreSQL extension is needed, so the same schema runs on the embedded PostgreSQL of the demo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STORAGE_ORDER = 29
"""The order of the stored cell numbers: the deepest cdshealpix offers, fine enough to never matter."""

_MAX_CONE_DEPTH = 27
"""cdshealpix refines a cone's border two depths deeper than the cells it returns, up to its own maximum, 29."""

_NSIDE = 1 << STORAGE_ORDER
_CELL_SIZE_DEG_AT_DEPTH_0 = math.degrees(math.sqrt(4 * math.pi / 12))  # 58.6°: the side of a base cell


@dataclass(frozen=True)
class Cone:
    """A cone on the sky (degrees) and the ranges of order-29 cell numbers that cover it."""

    ra: float
    dec: float
    radius: float
    ranges: tuple[tuple[int, int], ...]
    """Half-open ``[first, end)`` ranges of cell numbers, sorted, neither overlapping nor touching."""

    def may_contain(self, cell: int) -> bool:
        """Whether a stored cell number falls in one of the ranges (what the index scan does)."""
        return any(first <= cell < end for first, end in self.ranges)


def check_position(ra: float, dec: float) -> float:
    """The right ascension brought into [0, 360); ValueError for a declination outside [-90, 90] or a non-number."""
    if not (math.isfinite(ra) and math.isfinite(dec)):
        raise ValueError(f"a position needs finite coordinates, not ra={ra!r}, dec={dec!r}")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"declination {dec!r} is outside [-90, 90] degrees")
    ra = ra % 360.0
    return 0.0 if ra >= 360.0 else ra  # -1e-20 % 360 is 360.0 in floating point


def healpix_index(ra: float, dec: float) -> int:
    """The NESTED HEALPix cell number at :data:`STORAGE_ORDER` of a position in degrees (ICRS).

    This is the standard HEALPix projection (Górski et al. 2005, as in HEALPix C++ ``loc2pix``) written out in
    Python: cdshealpix gives the same numbers (the unit tests compare them on random and edge positions) but
    builds a thread pool on every call, which costs some 0.3 ms per product against about 5 µs here.
    """
    ra = check_position(ra, dec)
    z = math.sin(math.radians(dec))
    za = abs(z)
    tt = ra / 90.0  # in [0, 4): the longitude in quarters of the sphere
    if za <= 2.0 / 3.0:  # equatorial belt
        temp1 = _NSIDE * (0.5 + tt)
        temp2 = _NSIDE * (z * 0.75)
        jp = int(temp1 - temp2)  # index of the ascending edge line
        jm = int(temp1 + temp2)  # index of the descending edge line
        ifp = jp >> STORAGE_ORDER
        ifm = jm >> STORAGE_ORDER
        face = (ifp | 4) if ifp == ifm else (ifp if ifp < ifm else ifm + 8)
        ix = jm & (_NSIDE - 1)
        iy = _NSIDE - (jp & (_NSIDE - 1)) - 1
        return _nested(face, ix, iy)
    # polar caps: cos(dec) / sqrt((1 + |z|) / 3) is sqrt(3 (1 - |z|)) without its loss of precision at the poles
    ntt = min(3, int(tt))
    tp = tt - ntt
    tmp = _NSIDE * math.cos(math.radians(dec)) / math.sqrt((1.0 + za) / 3.0)
    jp = min(int(tp * tmp), _NSIDE - 1)
    jm = min(int((1.0 - tp) * tmp), _NSIDE - 1)
    if z >= 0:
        return _nested(ntt, _NSIDE - jm - 1, _NSIDE - jp - 1)
    return _nested(ntt + 8, jp, jm)


def _nested(face: int, ix: int, iy: int) -> int:
    return (face << (2 * STORAGE_ORDER)) | _spread_bits(ix) | (_spread_bits(iy) << 1)


def _spread_bits(value: int) -> int:
    """Bit i of ``value`` (below 2**32) moved to bit 2i: the Morton interleaving of the nested scheme."""
    value = (value | (value << 16)) & 0x0000FFFF0000FFFF
    value = (value | (value << 8)) & 0x00FF00FF00FF00FF
    value = (value | (value << 4)) & 0x0F0F0F0F0F0F0F0F
    value = (value | (value << 2)) & 0x3333333333333333
    return (value | (value << 1)) & 0x5555555555555555


def cone_depth(radius: float) -> int:
    """The depth of the cells that cover a cone: one below the deepest whose cells are wider than the radius.

    Coarser cells mean fewer ranges but more rows read outside the cone. Measured on random cones, cells as
    wide as the radius give about 3 ranges holding 3.7 times the rows inside the cone; half as wide (this
    depth) about 5 ranges holding 2.3 times; a quarter, about 9 ranges for 1.6 times.
    """
    if radius >= _CELL_SIZE_DEG_AT_DEPTH_0:
        return 0
    if radius <= _CELL_SIZE_DEG_AT_DEPTH_0 / 2**_MAX_CONE_DEPTH:
        # Smaller than the deepest cells: the ratio below could overflow (a subnormal radius such as 1e-308).
        return _MAX_CONE_DEPTH
    return min(_MAX_CONE_DEPTH, math.floor(math.log2(_CELL_SIZE_DEG_AT_DEPTH_0 / radius)) + 1)


def cone(ra: float, dec: float, radius: float) -> Cone:
    """The cone of ``radius`` degrees around (ra, dec) and its cell ranges; ValueError for impossible values.

    The radius must be above 0 and at most 180 degrees (the whole sky).
    """
    ra = check_position(ra, dec)
    if not (math.isfinite(radius) and 0.0 < radius <= 180.0):
        raise ValueError(f"the radius must be above 0 and at most 180 degrees, not {radius!r}")
    if radius >= 90.0:
        # Beyond a hemisphere the covering is most of the sky anyway: read it all, keep the distance filter.
        return Cone(ra, dec, radius, ((0, 12 << (2 * STORAGE_ORDER)),))
    import astropy.units as u  # imported here: astropy takes a second to load and only searches need it
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix.nested import cone_search

    depth = cone_depth(radius)
    cells, depths, _ = cone_search(Longitude(ra * u.deg), Latitude(dec * u.deg), radius * u.deg, depth)
    ranges = []
    for cell, cell_depth in zip(cells.tolist(), depths.tolist(), strict=True):
        shift = 2 * (STORAGE_ORDER - int(cell_depth))
        ranges.append((int(cell) << shift, (int(cell) + 1) << shift))
    return Cone(ra, dec, radius, merge_ranges(ranges))


def merge_ranges(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Half-open ranges sorted, with overlapping or touching ones joined."""
    merged: list[tuple[int, int]] = []
    for first, end in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    return tuple(merged)


def angular_distance(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """The angle between two positions, in degrees (the haversine formula, accurate at small angles).

    The catalog's SQL filter (``services.catalog.storage.sql.cone_condition``) computes the same expression.
    """
    sin_ddec = math.sin(math.radians(dec1 - dec2) / 2)
    sin_dra = math.sin(math.radians(ra1 - ra2) / 2)
    h = sin_ddec**2 + math.cos(math.radians(dec1)) * math.cos(math.radians(dec2)) * sin_dra**2
    return math.degrees(2 * math.asin(math.sqrt(min(1.0, h))))
