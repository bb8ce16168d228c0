"""The transfer API's OpenAPI document is valid and describes the routes the receiver serves."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

from services.receiver.handlers.http import TransferApi

SPEC = Path(__file__).resolve().parents[2] / "services" / "receiver" / "openapi.yaml"


def test_the_openapi_document_is_valid() -> None:
    validate(yaml.safe_load(SPEC.read_text()))


def test_the_openapi_document_and_the_routes_agree() -> None:
    documented = {
        (method.upper(), path)
        for path, operations in yaml.safe_load(SPEC.read_text())["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "delete", "patch")
    }
    app = TransferApi.__new__(TransferApi)  # the routing table needs no database
    served = {
        (route.method, route.resource.canonical)
        for route in TransferApi.app(app).router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == documented
