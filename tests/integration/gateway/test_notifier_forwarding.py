"""The notifier through the gateway's one address: real catalog, notifier and gateway processes.

A person's subscriptions are made, listed and removed at the gateway's address with their catalog token, and
the links of the notifier's emails (unsubscribe) answer there too, without signing in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from services.catalog import cli as catalog
from skyport.db import Database
from tests.support.flow import Flow
from tests.support.smtp import smtp_server


@pytest.fixture
async def gateway(flow: Flow) -> AsyncIterator[Flow]:
    with smtp_server() as (_, port):
        flow.smtp_port = port
        await flow.start("catalog")
        await flow.start("notifier")
        await flow.start("gateway")
        yield flow


async def _token_with_email(flow: Flow, username: str) -> str:
    db = await Database.connect(flow.database_url, "catalog", min_size=1, max_size=1)
    try:
        await catalog.add_user(db, username, email=f"{username}@example.org")
        return await catalog.issue_token(db, username)
    finally:
        await db.close()


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        is_json = response.content_type == "application/json"
        return response.status, await response.json() if is_json else await response.text()


async def test_a_person_manages_subscriptions_at_the_gateways_address(gateway: Flow) -> None:
    token = await _token_with_email(gateway, "alice")
    base = gateway.gateway_url
    async with aiohttp.ClientSession() as http:
        assert await _call(http, "GET", f"{base}/v1/subscriptions", token) == (200, {"subscriptions": []})
        status, made = await _call(
            http, "POST", f"{base}/v1/subscriptions", token, json={"mission": "keck", "propid": "2026B_U042"}
        )
        assert status == 201, made
        assert (made["mission"], made["propid"], made["username"]) == ("KECK", "2026B_U042", "alice")
        status, listed = await _call(http, "GET", f"{base}/v1/subscriptions", token)
        assert [s["subscription_id"] for s in listed["subscriptions"]] == [made["subscription_id"]]

        # The notifier's own refusals come back as it made them.
        status, refused = await _call(http, "POST", f"{base}/v1/subscriptions", token, json={"mission": "KECK"})
        assert (status, refused["code"]) == (400, "inconsistent_fields")
        status, refused = await _call(http, "GET", f"{base}/v1/subscriptions")
        assert (status, refused["code"]) == (401, "unauthorized")
        other = await _token_with_email(gateway, "bob")
        status, refused = await _call(http, "DELETE", f"{base}/v1/subscriptions/{made['subscription_id']}", other)
        assert (status, refused["code"]) == (404, "not_found"), "bob cannot remove alice's subscription"

        status, _ = await _call(http, "DELETE", f"{base}/v1/subscriptions/{made['subscription_id']}", token)
        assert status == 204
        assert await _call(http, "GET", f"{base}/v1/subscriptions", token) == (200, {"subscriptions": []})


async def test_an_emails_unsubscribe_link_answers_at_the_gateway_without_signing_in(gateway: Flow) -> None:
    async with aiohttp.ClientSession() as http:
        status, page = await _call(http, "GET", f"{gateway.gateway_url}/v1/unsubscribe?s=1&sig=forged")
    assert status == 400
    assert "This unsubscribe link is not valid." in page
