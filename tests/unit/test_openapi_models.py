"""Every JSON answer the OpenAPI documents show is the model the service answers with: the same properties, of
the same types, the same ones required, down every nested object; and every error code is documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from skyport.api import catalog, gateway
from skyport.api.errors import ErrorBody, ErrorCode
from skyport.transfer import TransferStatus, TransferStatuses

SERVICES = Path(__file__).resolve().parents[2] / "services"
DOCUMENTS = {name: SERVICES / name / "openapi.yaml" for name in ("catalog", "receiver", "gateway")}

ANSWERS: dict[tuple[str, str, str, str], type[BaseModel]] = {
    ("catalog", "/v1/products", "get", "200"): catalog.ProductPage,
    ("catalog", "/v1/products/{archive_id}", "get", "200"): catalog.ProductDetail,
    ("catalog", "/v1/me", "get", "200"): catalog.Me,
    ("catalog", "/v1/nights", "get", "200"): catalog.NightRules,
    ("catalog", "/v1/position", "get", "200"): catalog.Position,
    ("catalog", "/v1/access/visible", "post", "200"): catalog.Visible,
    ("catalog", "/v1/programs/{mission}/{propid}/members", "get", "200"): catalog.Members,
    ("catalog", "/v1/programs/{mission}/{propid}/members/{username}", "put", "200"): catalog.MembershipChange,
    ("catalog", "/v1/programs/{mission}/{propid}/release", "post", "200"): catalog.Released,
    ("catalog", "/v1/tokens", "post", "201"): catalog.IssuedToken,
    ("receiver", "/v1/transfers", "post", "200"): TransferStatus,
    ("receiver", "/v1/transfers", "post", "201"): TransferStatus,
    ("receiver", "/v1/transfers/{transfer_id}", "get", "200"): TransferStatus,
    ("receiver", "/v1/transfers/statuses", "post", "200"): TransferStatuses,
    ("receiver", "/v1/transfers/{transfer_id}/content", "put", "200"): TransferStatus,
    ("gateway", "/v1/tickets", "post", "201"): gateway.Ticket,
}


class Document:
    """An OpenAPI document whose ``$ref``s are followed, into other files too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded: dict[Path, Any] = {}

    def resolve(self, node: Any, base: Path | None = None) -> tuple[Any, Path]:
        base = base or self.path
        while isinstance(node, dict) and "$ref" in node:
            file, _, pointer = node["$ref"].partition("#")
            base = (base.parent / file).resolve() if file else base
            if base not in self.loaded:
                self.loaded[base] = yaml.safe_load(base.read_text())
            node = self.loaded[base]
            for key in pointer.strip("/").split("/") if pointer.strip("/") else []:
                node = node[key.replace("~1", "/").replace("~0", "~")]
        return node, base

    def json_answers(self) -> dict[tuple[str, str, str], tuple[Any, Path]]:
        """(path, method, status) of every answer with a JSON body, and its schema."""
        found = {}
        root, _ = self.resolve({"$ref": "#"})
        for path, item in root["paths"].items():
            item, base = self.resolve(item)
            for method, operation in item.items():
                for status, response in operation.get("responses", {}).items():
                    response, where = self.resolve(response, base)
                    content = response.get("content", {}).get("application/json")
                    if content is not None:
                        found[(path, method, status)] = (content["schema"], where)
        return found


def shape(schema: Any, resolve: Any) -> dict[str, Any]:
    """What the comparison looks at: types, enum values, required and nested properties, array items."""
    schema = resolve(schema)
    parts = [resolve(part) for part in schema.get("allOf", [])] or [schema]
    if "allOf" in schema:
        parts.append({k: v for k, v in schema.items() if k != "allOf"})
    types: set[str] = set()
    enum: set[Any] = set()
    properties: dict[str, Any] = {}
    required: set[str] = set()
    items = None
    for part in parts:
        for option in [resolve(o) for o in part.get("anyOf", [])] or [part]:
            kind = option.get("type", [])
            types |= {kind} if isinstance(kind, str) else set(kind)
            enum |= {value for value in option.get("enum", []) if value is not None}
            if "const" in option:
                enum.add(option["const"])
            properties |= {name: shape(p, resolve) for name, p in option.get("properties", {}).items()}
            required |= set(option.get("required", []))
            if "items" in option:
                items = shape(option["items"], resolve)
    described: dict[str, Any] = {"type": sorted(types)}
    if enum:
        described["enum"] = sorted(enum)
    if properties:
        described |= {"properties": properties, "required": sorted(required)}
    if items is not None:
        described["items"] = items
    return described


def model_shape(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="serialization")
    definitions = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[1]]
        return node

    return shape(schema, resolve)


def document_shape(document: Document, schema: Any, base: Path) -> dict[str, Any]:
    here = {"base": base}

    def resolve(node: Any) -> Any:
        node, here["base"] = document.resolve(node, here["base"])
        return node

    return shape(schema, resolve)


@pytest.mark.parametrize("answer", sorted(ANSWERS), ids="-".join)
def test_a_documented_answer_is_its_model(answer: tuple[str, str, str, str]) -> None:
    service, path, method, status = answer
    document = Document(DOCUMENTS[service])
    schema, base = document.json_answers()[(path, method, status)]
    assert document_shape(document, schema, base) == model_shape(ANSWERS[answer])


@pytest.mark.parametrize("service", sorted(DOCUMENTS))
def test_every_documented_json_answer_has_its_model_or_is_an_error(service: str) -> None:
    document = Document(DOCUMENTS[service])
    error = model_shape(ErrorBody)
    for (path, method, status), (schema, base) in document.json_answers().items():
        if status.startswith(("4", "5")):
            # An API documents the error fields it sends (the receiver has no product versions): each one as the
            # model has it, and the ones every error has.
            documented = document_shape(document, schema, base)
            assert documented["required"] == error["required"], (path, method, status)
            for name, field in documented["properties"].items():
                assert field == error["properties"].get(name), (path, method, status, name)
        else:
            # The gateway forwards the catalog's routes: their answers are the catalog's.
            owners = (service, "catalog") if service == "gateway" else (service,)
            assert any((owner, path, method, status) in ANSWERS for owner in owners), (
                f"{method.upper()} {path} {status}"
            )


@pytest.mark.parametrize("service", sorted(DOCUMENTS))
def test_each_document_lists_every_error_code(service: str) -> None:
    document = Document(DOCUMENTS[service])
    errors = [found for (_, _, status), found in document.json_answers().items() if status[0] in "45"]
    assert errors
    for schema, base in errors:
        error, where = document.resolve(schema, base)
        code, _ = document.resolve(error["properties"]["code"], where)
        assert set(code["enum"]) == {code.value for code in ErrorCode}
