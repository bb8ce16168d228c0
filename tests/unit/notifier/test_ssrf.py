"""Webhook receivers must be on the public internet: hosts that resolve to loopback, private, link-local,
multicast or reserved addresses are refused when a subscription is made and again before each POST (a fake
resolver stands in for DNS, so the answers can change between the two, as DNS can)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from services.notifier.levels import LevelOrder
from services.notifier.models import SubscriptionRequest
from services.notifier.subscriptions import Refused, checked
from services.notifier.webhooks import (
    NotPublic,
    PublicResolver,
    Unresolved,
    WebhookSender,
    check_receiver,
    not_public,
)


class FakeDns:
    """A resolver whose answers a test sets (and changes); it records the names it was asked."""

    def __init__(self, **answers: list[str]) -> None:
        self.answers = {name.replace("_", "."): addresses for name, addresses in answers.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


PUBLIC = "93.184.215.14"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.5", "private"),
        ("fc00::5", "private"),
        ("169.254.169.254", "link-local"),  # the cloud's metadata service
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # an IPv4-mapped IPv6 address is its IPv4 address
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
    ],
)
def test_addresses_that_are_not_public_say_what_they_are(address: str, kind: str) -> None:
    assert not_public(address) == kind


def test_public_addresses_pass() -> None:
    assert not_public(PUBLIC) is None
    assert not_public("2606:2800:21f:cb07:6820:80da:af6b:8b2c") is None


async def test_a_host_resolving_to_a_public_address_is_accepted() -> None:
    dns = FakeDns(hooks_example_org=[PUBLIC])
    url = "https://hooks.example.org/skyport"
    assert await check_receiver(url, allow_http=False, resolve=dns) == url
    assert dns.asked == ["hooks.example.org"]


@pytest.mark.parametrize(
    "addresses",
    [["127.0.0.1"], ["10.0.0.7"], [PUBLIC, "192.168.1.1"], ["169.254.169.254"], ["::1"]],
)
async def test_a_host_with_any_address_that_is_not_public_is_refused(addresses: list[str]) -> None:
    dns = FakeDns(internal_example_org=addresses)
    with pytest.raises(NotPublic, match=r"internal\.example\.org"):
        await check_receiver("https://internal.example.org/hook", allow_http=False, resolve=dns)


async def test_an_address_in_the_url_is_judged_without_dns() -> None:
    dns = FakeDns()
    for url in ("https://127.0.0.1/hook", "https://[::1]:8443/hook", "https://169.254.169.254/latest"):
        with pytest.raises(NotPublic):
            await check_receiver(url, allow_http=False, resolve=dns)
    assert await check_receiver(f"https://{PUBLIC}/hook", allow_http=False, resolve=dns) == f"https://{PUBLIC}/hook"
    assert dns.asked == []


async def test_a_host_that_does_not_resolve_is_refused_and_development_checks_no_address() -> None:
    with pytest.raises(Unresolved):
        await check_receiver("https://nowhere.example.org/hook", allow_http=False, resolve=FakeDns())
    dns = FakeDns()
    assert await check_receiver("http://127.0.0.1:8080/hook", allow_http=True, resolve=dns)
    assert dns.asked == []


async def test_a_subscription_to_a_private_receiver_is_refused_by_field() -> None:
    levels = LevelOrder({"KECK": ["0", "1", "2"]})
    request = SubscriptionRequest(
        mission="KECK", propid="U1", channel="webhook", webhook_url="https://intranet.example.org/hook"
    )
    with pytest.raises(Refused) as refused:
        await checked(levels, request, resolve=FakeDns(intranet_example_org=["10.0.0.2"]))
    assert refused.value.field == "webhook_url"
    assert "private" in str(refused.value)


class _NoSession:
    """A session that fails the test if a POST is made."""

    def post(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the body was sent")


async def test_before_each_post_the_host_is_resolved_again_and_a_private_answer_is_not_sent_to() -> None:
    dns = FakeDns(hooks_example_org=["10.0.0.9"])  # public when subscribed; DNS changed since
    sender = WebhookSender(_NoSession(), timeout=5, allow_private=False, resolve=dns)  # type: ignore[arg-type]

    result = await sender.post("https://hooks.example.org/hook", "whsec_x", "fast-1-r0", b"{}")

    assert (result.outcome, result.status) == ("rejected", None)
    assert "10.0.0.9" in result.response
    dns.answers.clear()  # and a name that stopped resolving is tried again later
    later = await sender.post("https://hooks.example.org/hook", "whsec_x", "fast-1-r0", b"{}")
    assert later.outcome == "temporary"


class _Inner(AbstractResolver):
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0) for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_the_connections_resolver_refuses_what_the_check_would_so_the_address_checked_is_the_one_used() -> None:
    assert [r["host"] for r in await PublicResolver(_Inner([PUBLIC])).resolve("hooks.example.org", 443)] == [PUBLIC]
    with pytest.raises(OSError, match="private"):
        await PublicResolver(_Inner([PUBLIC, "10.0.0.1"])).resolve("hooks.example.org", 443)
