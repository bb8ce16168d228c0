"""The gateway's own logic without servers: tickets, the backlog/live seam, slow clients, parameters."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from services.gateway.catalog_client import Membership, Page, User
from services.gateway.handlers.http import GatewayApi, _stream_parameters
from services.gateway.streams import (
    CLOSE_TOO_SLOW,
    Change,
    ChangeBatch,
    GatewayMetrics,
    Stream,
    file_view,
    send_backlog,
)
from services.gateway.tickets import Tickets
from skyport.api.catalog import Product
from skyport.cursor import encode_cursor
from skyport.http import ApiError
from tests.support.waiting import eventually

PROGRAM = ("KECK", "2026B_U1")
OTHER = ("KECK", "2026B_U2")
ALICE = User("alice", False, (Membership("KECK", "2026B_U1", "pi", None),))


class RecordingSocket:
    """Stands in for the WebSocket: remembers how it was closed."""

    def __init__(self) -> None:
        self.closed_with: tuple[int, bytes] | None = None

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closed_with = (code, message)
        return True


def product(seq: int, program: tuple[str, str] = PROGRAM, **fields: Any) -> Product:
    """A product as the catalog's search answers it (its JSON, read with the catalog's model)."""
    archived = "2026-11-21T10:00:00+00:00"
    return Product.model_validate(
        {
            "cursor": encode_cursor(seq),
            "archive_id": f"HI.20261121.{seq:05d}.00",
            "version": 1,
            "mission": program[0],
            "propid": program[1],
            "public": False,
            "obset": None,
            "level": "0",
            "product": "raw",
            "intent": "science",
            "original_filename": f"hires{seq:04d}.fits",
            "release_date": "2028-05-21",
            "public_since": None,
            "released_early": False,
            "obs_collection": "KECK/HIRES",
            "obs_id": f"HI.20261121.{seq:05d}",
            "dataproduct_type": "spectrum",
            "calib_level": 0,
            "target_name": "HD 189733",
            "s_ra": 300.18,
            "s_dec": 22.71,
            "t_min": 61365.4,
            "t_max": 61365.41,
            "t_exptime": 600.0,
            "em_min": None,
            "em_max": None,
            "instrument_name": "HIRES",
            "facility_name": "Keck I",
            "access_format": "application/fits",
            "access_estsize": 300,
            "filters": [],
            "header": {},
            "observed_at": "2026-11-21T09:40:00+00:00",
            "night": "2026-11-20",
            "written_at": archived,
            "first_archived_at": archived,
            "archived_at": archived,
            "sha256": "0" * 64,
            "size_bytes": 300_000,
            "software_version": None,
            "access_url": f"http://catalog/v1/files/HI.20261121.{seq:05d}.00?version=1",
            **fields,
        }
    )


def batch(*products: Product) -> ChangeBatch:
    """Changes read together from the catalog order, as the feed hands them to the hub."""
    return ChangeBatch([Change.of(p) for p in products])


def stream(limit: int = 10, *, protocol: int = 1, user: User = ALICE) -> tuple[Stream, RecordingSocket]:
    ws = RecordingSocket()
    made = Stream(
        ws,  # type: ignore[arg-type]
        user,
        "token",
        selection=None,
        night=date(2026, 11, 21),
        queue_limit=limit,
        metrics=GatewayMetrics(CollectorRegistry()),
        abort=lambda: None,
        protocol=protocol,
    )
    return made, ws


def queued(s: Stream) -> list[dict[str, Any]]:
    messages = []
    while not s.queue.empty():
        messages.append(json.loads(s.queue.get_nowait()))
    return messages


def test_a_ticket_is_good_once_and_only_until_it_expires() -> None:
    now = [100.0]
    tickets = Tickets(30, clock=lambda: now[0])
    ticket = tickets.issue("secret", ALICE)
    assert ticket.startswith("tk_")
    assert "secret" not in ticket
    found = tickets.redeem(ticket)
    assert found is not None
    assert found.token == "secret"
    assert found.user == ALICE
    assert tickets.redeem(ticket) is None  # used
    late = tickets.issue("secret", ALICE)
    now[0] += 31
    assert tickets.redeem(late) is None  # expired
    assert tickets.redeem("tk_forged") is None


async def test_changes_held_during_the_backlog_follow_it_without_gap_or_duplicate() -> None:
    s, _ = stream()
    # Live changes 5..7 arrive while the backlog (up to position 5) is being read.
    for seq in (5, 6, 7):
        s.offer(batch(product(seq)))
    assert queued(s) == []
    s.go_live(5)
    messages = queued(s)
    assert [m["type"] for m in messages] == ["live", "file", "file"]
    assert messages[0]["cursor"] == encode_cursor(5)
    assert [m["cursor"] for m in messages[1:]] == [encode_cursor(6), encode_cursor(7)]
    s.offer(batch(product(7)))  # seen already: dropped
    s.offer(batch(product(8, OTHER)))  # not a program of alice's: only the position moves
    assert queued(s) == []
    assert s.position == 8


async def test_a_heartbeat_carries_the_position_even_when_nothing_visible_changed() -> None:
    s, _ = stream()
    s.go_live(3)
    queued(s)
    s.offer(batch(product(9, OTHER)))
    s.heartbeat()
    [beat] = queued(s)
    assert beat["type"] == "heartbeat"
    assert beat["cursor"] == encode_cursor(9)


async def test_a_client_that_cannot_keep_up_is_disconnected_with_4008() -> None:
    s, ws = stream(limit=10)
    s.go_live(0)
    for seq in range(1, 12):
        s.offer(batch(product(seq)))
    assert s.closing
    await eventually(lambda: ws.closed_with is not None, timeout=5, what="the close")  # the close runs as a task
    assert ws.closed_with is not None
    assert ws.closed_with[0] == CLOSE_TOO_SLOW
    assert b"too slow" in ws.closed_with[1]


def test_file_view_states_and_download_path() -> None:
    assert file_view(product(1))["state"] == "new"
    assert file_view(product(1, version=2))["state"] == "reprocessed"
    assert file_view(product(1, version=2, public=True))["state"] == "public"
    assert file_view(product(1, archive_id="a/b"))["download_url"] == "/v1/files/a%2Fb?version=1"


def test_a_file_message_carries_the_catalogs_values_as_the_catalog_wrote_them() -> None:
    view = file_view(product(1))
    assert view["observed_at"] == "2026-11-21T09:40:00+00:00"  # the page shows it; its text is unchanged
    assert view["night"] == "2026-11-20"
    assert view["target_name"] == "HD 189733"
    assert not {"header", "access_url"} & set(view)  # the protocol's fields only


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("night=2026-13-01", "night must be a date YYYY-MM-DD"),
        ("cursor=bogus", "is not one Skyport gave out"),  # code unknown_cursor
        ("program=KECK", "program must be MISSION/PROPID"),
        ("colour=blue", "unknown parameter 'colour'"),
        ("protocol=0", "protocol must be a whole number from 1"),
        ("protocol=two", "protocol must be a whole number from 1"),
    ],
)
def test_bad_stream_parameters_are_refused_with_a_message(query: str, message: str) -> None:
    with pytest.raises(ApiError) as refused:
        _stream_parameters(make_mocked_request("GET", f"/v1/stream?{query}"))
    assert refused.value.status == 400
    assert message in refused.value.body["error"]
    assert refused.value.body["code"] in ("bad_parameter", "unknown_cursor")


def test_stream_parameters() -> None:
    night, after, selection, protocol = _stream_parameters(
        make_mocked_request("GET", f"/v1/stream?night=2026-11-21&program=keck/2026B_U1&cursor={encode_cursor(4)}")
    )
    assert protocol == 1  # a client that does not say speaks the first protocol
    assert _stream_parameters(make_mocked_request("GET", "/v1/stream?protocol=7"))[3] == 7
    assert night == date(2026, 11, 21)
    assert after == encode_cursor(4)
    assert selection == frozenset({("KECK", "2026B_U1")})


class SearchingCatalog:
    """Stands in for the catalog's search: remembers what the backlog asked for, answers with ``products``."""

    def __init__(self, products: list[Product]) -> None:
        self.products = products
        self.asked: list[list[tuple[str, str]]] = []

    async def search(self, token: str, params: list[tuple[str, str]]) -> Page:
        self.asked.append(list(params))
        return Page(self.products, encode_cursor(len(self.products)), False)


@pytest.mark.parametrize(("night", "asked"), [(date(2026, 11, 21), "2026-11-21"), (None, "tonight")])
async def test_the_backlog_asks_the_catalog_for_the_night_and_passes_on_its_night(
    night: date | None, asked: str
) -> None:
    s, _ = stream()
    s.night = night
    catalog = SearchingCatalog([product(1, night="2026-11-21")])
    await send_backlog(catalog, s, up_to=5)  # type: ignore[arg-type]
    [params] = catalog.asked
    assert ("night", asked) in params
    assert not {"t_min", "t_max"} & {name for name, _ in params}  # the catalog's night, not a UT day
    [message] = queued(s)
    assert message["file"]["night"] == "2026-11-21"  # the night the catalog gave the file, as live messages do
    assert json.loads(Change.of(product(2, night="2026-11-21")).live_message)["file"]["night"] == "2026-11-21"


def test_the_catalog_is_told_the_address_a_browser_used_or_the_configured_one() -> None:
    request = make_mocked_request("GET", "/v1/products", headers={"Host": "gateway.example:8083"})
    assert api()._forwarded(request) == 'host="gateway.example:8083";proto=http'
    behind_tls = api(public_url="https://skyport.example.org")
    assert behind_tls._forwarded(request) == 'host="skyport.example.org";proto=https'


def api(public_url: str | None = None) -> GatewayApi:
    metrics = GatewayMetrics(CollectorRegistry())
    return GatewayApi(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Tickets(30),
        metrics,
        queue_limit=10,
        heartbeat=15,
        public_url=public_url,
    )
