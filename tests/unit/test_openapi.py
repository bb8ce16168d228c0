"""The receiver's and the gateway's OpenAPI documents are valid and describe the routes their servers serve."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from services.gateway.handlers.http import _CATALOG, GatewayApi
from services.receiver.handlers.http import TransferApi

SERVICES = Path(__file__).resolve().parents[2] / "services"
SPEC = SERVICES / "receiver" / "openapi.yaml"
GATEWAY_SPEC = SERVICES / "gateway" / "openapi.yaml"


def _operations(spec: Path) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation, following a path item's reference into another document."""
    found = set()
    for path, item in yaml.safe_load(spec.read_text())["paths"].items():
        if "$ref" in item:
            document, _, pointer = item["$ref"].partition("#")
            keys = [key.replace("~1", "/").replace("~0", "~") for key in pointer.strip("/").split("/")]
            item = yaml.safe_load((spec.parent / document).read_text())
            for key in keys:
                item = item[key]
        found |= {(method.upper(), path) for method in item if method in ("get", "post", "put", "delete", "patch")}
    return found


def test_the_openapi_document_is_valid() -> None:
    # The manifest's metadata is the events' own schema (schemas/v1), referenced by a relative path.
    validate(yaml.safe_load(SPEC.read_text()), base_uri=SPEC.as_uri())


def test_the_openapi_document_and_the_routes_agree() -> None:
    app = TransferApi.__new__(TransferApi)  # the routing table needs no database
    served = {
        (route.method, route.resource.canonical)
        for route in TransferApi.app(app).router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == _operations(SPEC)


def test_the_gateway_document_is_valid_with_the_catalog_routes_it_borrows() -> None:
    validate(yaml.safe_load(GATEWAY_SPEC.read_text()), base_uri=GATEWAY_SPEC.as_uri())


def test_the_gateway_document_shows_its_own_routes_and_every_forwarded_one() -> None:
    documented = _operations(GATEWAY_SPEC)
    own = {("POST", "/v1/tickets"), ("GET", "/v1/stream")}
    assert own <= documented
    forwarded = documented - own
    for method, path in forwarded:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        assert any(m == method and pattern.match(concrete) for m, pattern in _CATALOG), (method, path)
    for method, pattern in _CATALOG:
        assert any(m == method and pattern.match(re.sub(r"\{[^}]+\}", "x", p)) for m, p in forwarded), pattern
    served = {
        (route.method, route.resource.canonical)
        for route in GatewayApi.app(GatewayApi.__new__(GatewayApi)).router.routes()
        if route.resource is not None
    }
    assert {("POST", "/v1/tickets"), ("GET", "/v1/stream")} <= served
