"""A site credential rotated or removed while the receiver runs is refused at once, not at the next restart."""

from __future__ import annotations

import uuid

import aiohttp
import pytest

from tests.support.flow import Flow


async def status_with(flow: Flow, token: str) -> int:
    """The receiver's answer to a request with this credential: 404 (no such transfer) once it is accepted."""
    url = f"http://127.0.0.1:{flow.receiver_port}/v1/transfers/{uuid.uuid4()}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status


async def test_a_rotated_or_removed_credential_is_refused_at_once(flow: Flow) -> None:
    await flow.start("receiver")
    old = flow.token
    assert await status_with(flow, old) == 404  # accepted (and, before, remembered for the life of the process)

    new = (await flow.skyport("receiver", "rotate-site", flow.site)).strip()

    assert new not in ("", old)
    assert await status_with(flow, old) == 401
    assert await status_with(flow, new) == 404

    await flow.skyport("receiver", "remove-site", flow.site)

    assert await status_with(flow, new) == 401
    again = (await flow.skyport("receiver", "add-site", flow.site)).strip()
    assert await status_with(flow, again) == 404
    assert await status_with(flow, new) == 401

    for command in ("rotate-site", "remove-site"):
        with pytest.raises(AssertionError, match="no site named 'nowhere'"):
            await flow.skyport("receiver", command, "nowhere")
