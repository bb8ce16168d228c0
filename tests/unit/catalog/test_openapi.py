"""The catalog API's OpenAPI document is valid and describes the routes and search parameters it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openapi_spec_validator import validate

from services.catalog.handlers.http import CatalogApi
from services.catalog.handlers.params import SEARCH_PARAMETERS

SPEC = Path(__file__).resolve().parents[3] / "services" / "catalog" / "openapi.yaml"


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def test_the_openapi_document_is_valid() -> None:
    validate(document())


def test_the_openapi_document_and_the_routes_agree() -> None:
    documented = {
        (method.upper(), path)
        for path, operations in document()["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "delete", "patch")
    }
    api = CatalogApi.__new__(CatalogApi)  # the routing table needs no database
    served = {
        (route.method, route.resource.canonical)
        for route in CatalogApi.app(api).router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert served == documented


def test_the_search_and_its_script_document_every_parameter_they_take() -> None:
    spec = document()

    def names(path: str) -> set[str]:
        found = set()
        for parameter in spec["paths"][path]["get"]["parameters"]:
            if "$ref" in parameter:
                parameter = spec["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
            found.add(parameter["name"])
        return found

    assert names("/v1/products") == SEARCH_PARAMETERS
    assert names("/v1/products/download-script") == SEARCH_PARAMETERS - {"count"}
