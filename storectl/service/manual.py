"""The UTCP 1.x manual (``GET /utcp``) and the OpenAPI document
(``GET /openapi.json``), both generated from the tools' Structs.

In the manual every tool takes its input as the ``body`` argument (its
call template's ``body_field``), posted to its own absolute URL, with the
API key as a ``${...}`` placeholder the client fills in; its schemas have
every ``$ref`` inlined (UTCP clients do not resolve references).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .tools import TOOLS, Tool

__all__ = ["MANUAL_VERSION", "UTCP_VERSION", "build_manual", "build_openapi", "tool_schemas"]

UTCP_VERSION: Final = "1.0.1"
MANUAL_VERSION: Final = "1.0.0"
#: The placeholder a UTCP client replaces with the key from its variables.
KEY_VARIABLE: Final = "${EVENTSTORE_API_KEY}"
ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}


def _inline(node: Any, components: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = components[ref.rsplit("/", 1)[-1]]
            merged = {k: v for k, v in node.items() if k != "$ref"}
            return {**_inline(target, components), **_inline(merged, components)}
        return {k: _inline(v, components) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, components) for v in node]
    return node


def tool_schemas(tool: Tool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tool's input and output JSON Schemas, references inlined."""
    (inp, out), components = msgspec.json.schema_components(
        [tool.input, tool.output], ref_template="#/$defs/{name}"
    )
    return _inline(inp, components), _inline(out, components)


def build_manual(base_url: str, *, auth: bool = True) -> dict[str, Any]:
    tools = []
    for tool in TOOLS.values():
        inputs, outputs = tool_schemas(tool)
        template: dict[str, Any] = {
            "name": "eventstore",
            "call_template_type": "http",
            "http_method": "POST",
            "url": f"{base_url}/tools/{tool.name}",
            "content_type": "application/json",
            "body_field": "body",
        }
        if auth:
            template["auth"] = {
                "auth_type": "api_key",
                "api_key": KEY_VARIABLE,
                "var_name": "X-Api-Key",
                "location": "header",
            }
        tools.append(
            {
                "name": tool.name,
                "description": f"{tool.description} (role: {tool.role})",
                "inputs": {
                    "type": "object",
                    "properties": {"body": inputs},
                    "required": ["body"],
                },
                "outputs": outputs,
                "tags": list(tool.tags),
                "tool_call_template": template,
            }
        )
    return {"utcp_version": UTCP_VERSION, "manual_version": MANUAL_VERSION, "tools": tools}


def build_openapi(base_url: str, *, auth: bool = True) -> dict[str, Any]:
    types: list[Any] = []
    for tool in TOOLS.values():
        types += [tool.input, tool.output]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    components["Error"] = ERROR_SCHEMA
    paths: dict[str, Any] = {}
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}] if auth else []
    for i, tool in enumerate(TOOLS.values()):
        paths[f"/tools/{tool.name}"] = {
            "post": {
                "operationId": tool.name.replace(".", "_"),
                "summary": tool.name,
                "description": tool.description,
                "tags": [tool.tags[0]],
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schemas[2 * i]}},
                },
                "responses": {
                    "200": {
                        "description": "the tool's output",
                        "content": {"application/json": {"schema": schemas[2 * i + 1]}},
                    },
                    **{
                        str(status): {
                            "description": text,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Error"}
                                }
                            },
                        }
                        for status, text in (
                            (400, "invalid input, naming the field"),
                            (401, "missing or wrong API key"),
                            (403, "the key's role may not call this tool"),
                            (404, "unknown tool or record"),
                            (409, "a conflict: version, idempotency key or event id"),
                            (413, "request body too large"),
                            (500, "internal error, with a request id"),
                            (503, "storage unavailable (see Retry-After)"),
                            (504, "time limit reached (repeating the call is safe)"),
                        )
                    },
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "utcp-eventstore tools",
            "version": MANUAL_VERSION,
            "description": "The append-only audit store's tools (UTCP manual: GET /utcp).",
        },
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }
