"""Each mission's level order, from the instrument configuration: "level X or above" without string comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from skyport.instruments import InstrumentCatalog


class LevelOrder:
    """The missions' processing levels, lowest first (``levels`` in each ``mission.toml``)."""

    def __init__(self, levels: Mapping[str, Sequence[str]], defaults: Mapping[str, str] | None = None) -> None:
        self._levels = {mission.upper(): tuple(order) for mission, order in levels.items()}
        self._defaults = {mission.upper(): level for mission, level in (defaults or {}).items()}

    @classmethod
    def of(cls, instruments: InstrumentCatalog) -> LevelOrder:
        missions = instruments.missions.items()
        return cls(
            {name: mission.levels for name, mission in missions},
            {name: m.notify_default_level for name, m in missions if m.notify_default_level is not None},
        )

    def missions(self) -> dict[str, tuple[str, ...]]:
        """Each mission's levels, lowest first."""
        return dict(self._levels)

    def default(self, mission: str) -> str | None:
        """The level a subscription to ``mission`` that names none starts from (``notify_default_level``)."""
        return self._defaults.get(mission.upper())

    def level(self, mission: str, level: str) -> str:
        """``level`` as the mission's configuration spells it; ValueError naming the mission's levels otherwise."""
        order = self._levels.get(mission.upper())
        if order is None:
            known = ", ".join(sorted(self._levels)) or "none"
            raise ValueError(f"{mission!r} is not a mission of this archive (missions: {known})")
        for known_level in order:
            if known_level.casefold() == level.casefold():
                return known_level
        raise ValueError(f"{level!r} is not a {mission.upper()} level (lowest first: {', '.join(order)})")

    def at_or_below(self, mission: str, level: str) -> list[str]:
        """The levels a subscription's minimum may be for an event at ``level`` to match it.

        A mission or level the configuration does not know matches only a minimum of that very level.
        """
        try:
            spelled = self.level(mission, level)
        except ValueError:
            return [level]
        order = self._levels[mission.upper()]
        return list(order[: order.index(spelled) + 1])
