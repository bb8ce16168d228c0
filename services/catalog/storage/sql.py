"""SQL helpers shared by the catalog's storage modules: numbered parameters, table aliases, LIKE patterns, cones."""

from __future__ import annotations

import re
from typing import Any

from services.catalog.sky import Cone

_ALIAS = re.compile(r"^[a-z_][a-z0-9_]*$")


class Params:
    """The positional parameters (``$1``, ``$2``, ...) of a query put together from fragments.

    >>> params = Params("KECK")
    >>> f"mission = $1 AND {visible_condition(viewer, params)}"   # adds $2 when the rule needs the user id
    """

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        """Append ``value``; returns its placeholder."""
        self.values.append(value)
        return f"${len(self.values)}"


def check_alias(alias: str) -> str:
    """A table alias safe to splice into SQL."""
    if not _ALIAS.match(alias):
        raise ValueError(f"{alias!r} is not a plain table alias")
    return alias


def cone_condition(cone: Cone, params: Params, alias: str = "p") -> str:
    """A SQL condition: the products row ``alias`` lies within ``cone`` (see :mod:`services.catalog.sky`).

    The cell ranges let PostgreSQL read a few stretches of the ``products_healpix`` index; the haversine
    distance (the same formula as :func:`services.catalog.sky.angular_distance`) then keeps exactly the rows
    inside the cone.
    """
    a = check_alias(alias)
    ranges = " OR ".join(
        f"({a}.healpix >= {params.add(first)} AND {a}.healpix < {params.add(end)})" for first, end in cone.ranges
    )
    ra, dec, radius = params.add(cone.ra), params.add(cone.dec), params.add(cone.radius)
    distance = (
        f"2 * asind(sqrt(least(1.0, sind(({a}.s_dec - {dec}) / 2) ^ 2 "
        f"+ cosd({a}.s_dec) * cosd({dec}) * sind(({a}.s_ra - {ra}) / 2) ^ 2)))"
    )
    return f"(({ranges}) AND {distance} <= {radius})"


def escape_like(text: str) -> str:
    """``text`` with the LIKE wildcards (and the escape character, backslash) matching only themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def glob_to_like(pattern: str) -> str:
    """A file-name glob (``*`` any run of characters, ``?`` any one) as a LIKE pattern; nothing else is special."""
    return escape_like(pattern).replace("*", "%").replace("?", "_")
