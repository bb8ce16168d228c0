"""The events the gateway listens to: dataset events wake the catalog feed, access changes reach the streams."""

from __future__ import annotations

from typing import Any

from services.gateway.streams import CatalogFeed, Hub
from skyport.bus import Handler
from skyport.events import AccessChanged, CloudEvent


def on_event(feed: CatalogFeed, hub: Hub) -> Handler:
    async def handle(event: CloudEvent[Any]) -> None:
        data = event.data
        if isinstance(data, AccessChanged):
            hub.access_changed(data.username, (data.mission, data.propid), data.change)
        else:
            # dataset.*: something changed in the catalog order. The feed reads the order itself, so that
            # every client sees changes in that order, whatever order the events arrive in.
            feed.wake()

    return handle
