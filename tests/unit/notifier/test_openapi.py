"""The notifier's OpenAPI document is valid and names exactly the routes the API serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openapi_spec_validator import validate

from services.notifier.handlers.http import NotifierApi

SPEC = Path(__file__).resolve().parents[3] / "services" / "notifier" / "openapi.yaml"


def test_the_document_is_valid_and_agrees_with_the_routes() -> None:
    document: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    validate(document)
    app = NotifierApi(None, None, None, None).app()  # type: ignore[arg-type]  # routes only: nothing is called
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource and r.method != "HEAD"}
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}

    assert served == documented
