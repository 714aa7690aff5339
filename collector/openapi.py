"""The OpenAPI 3.1 document of the collector, generated from the route table.

Paths and methods come from ``collector.routes.ROUTES``; parameter, body and
answer schemas from the msgspec Structs those routes decode and encode with
(``msgspec.json.schema_components``). Nothing here is written by hand but the
descriptions of the usual error answers, so the document cannot disagree with
what the handlers accept and return.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from collector import schemas

if TYPE_CHECKING:
    from collector.routes import Route

_REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="Error")}}},
    }


def _param_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without the ``null`` an optional field has in the Struct
    (an absent parameter is how None is sent)."""
    out = dict(schema)
    if "default" in out and out["default"] is None:
        del out["default"]
    branches = out.get("anyOf")
    if branches:
        kept = [b for b in branches if b != {"type": "null"}]
        del out["anyOf"]
        out.update(kept[0] if len(kept) == 1 else {"anyOf": kept})
    return out


def _parameters(route: Route, components: dict[str, Any]) -> list[dict[str, Any]]:
    assert route.params is not None
    schema = components[route.params.__name__]
    in_path = set(_PATH_PARAM.findall(route.path))
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        where = "path" if name in in_path else "query"
        param_schema = _param_schema(prop)
        description = param_schema.pop("description", None)
        item: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": param_schema,
        }
        if description:
            item["description"] = description
        out.append(item)
    return out


def _responses(route: Route) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if route.response is not None:
        content["application/json"] = {
            "schema": {"$ref": _REF.format(name=route.response.__name__)}
        }
    for media in route.media:
        kind = "object" if media == "application/json" else "string"
        content.setdefault(media, {"schema": {"type": kind}})
    ok: dict[str, Any] = {"description": "success"}
    if content:
        ok["content"] = content
    if route.links:
        ok["links"] = {}
        for name, (operation, parameters, body) in route.links.items():
            link: dict[str, Any] = {"operationId": operation}
            if parameters:
                link["parameters"] = parameters
            if body is not None:
                link["requestBody"] = body
            ok["links"][name] = link
    out: dict[str, Any] = {str(route.status): ok}
    for status, description in route.same_body.items():
        out[str(status)] = {"description": description, "content": dict(content)}
    if route.params is not None or route.body is not None or route.upload is not None:
        out["400"] = _error("invalid input: `field` names it, `error` says why")
    if not route.public:
        out["401"] = _error("authentication required")
        out["403"] = _error("not allowed for this role, or the X-CSRF-Token header is missing")
    if route.body is not None:
        out["413"] = _error("request body too large")
        out["415"] = _error("the body must be application/json")
    for status, description in route.errors.items():
        if status == 503 and route.response is not None:
            out["503"] = {"description": description, "content": dict(content)}
        elif status == 429:
            out["429"] = {
                **_error(description),
                "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
            }
        else:
            out[str(status)] = _error(description)
    out.setdefault("503", _error("storage unavailable"))
    return out


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    """The document of ``routes`` (``collector.routes.ROUTES``)."""
    types: list[Any] = [schemas.Error]
    for r in routes:
        types.extend(t for t in (r.params, r.body, r.response) if t is not None)
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    components = dict(components)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
            "responses": _responses(route),
        }
        if route.public:
            op["security"] = []
        if route.params is not None:
            op["parameters"] = _parameters(route, components)
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(name=route.body.__name__)}}
                },
            }
        elif route.upload is not None:
            op["requestBody"] = {"required": True, "content": route.upload}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    for route in routes:  # parameters are documented in place, not as schemas
        if route.params is not None:
            components.pop(route.params.__name__, None)
    return {
        "openapi": "3.1.0",
        "info": {"title": "loa-fleet collector", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "loa_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
    }


__all__ = ["openapi_document"]
