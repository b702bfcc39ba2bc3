"""The control API's OpenAPI 3.1 document, written by hand so it says what the handlers promise.

A test checks that every route of the control app is described here and nothing else is, so the two cannot
drift apart silently.
"""

from __future__ import annotations

from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"}
_VERSION = {"type": "integer", "minimum": 1}
_ETAG = {"ETag": {"description": "The endpoint's revision, quoted", "schema": {"type": "string"}}}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {"error": {"type": "string"}},
    },
    "Champion": {
        "type": "object",
        "required": ["model", "version"],
        "additionalProperties": False,
        "properties": {"model": _NAME, "version": _VERSION},
    },
    "Challenger": {
        "type": "object",
        "required": ["model", "version"],
        "additionalProperties": False,
        "properties": {"model": _NAME, "version": _VERSION, "weight": {**_FRACTION, "default": 0}},
        "description": "Receives `weight` of the endpoint's traffic instead of the champion.",
    },
    "Shadow": {
        "type": "object",
        "required": ["model", "version"],
        "additionalProperties": False,
        "properties": {"model": _NAME, "version": _VERSION, "sample_rate": {**_FRACTION, "default": 0}},
        "description": "Receives a copy of `sample_rate` of the requests; its answers are never returned.",
    },
    "EndpointSpec": {
        "type": "object",
        "required": ["champion"],
        "additionalProperties": False,
        "properties": {
            "name": {**_NAME, "description": "Optional; must equal the name in the path"},
            "champion": _ref("Champion"),
            "challenger": {"oneOf": [_ref("Challenger"), {"type": "null"}]},
            "shadow": {"oneOf": [_ref("Shadow"), {"type": "null"}]},
        },
    },
    "EndpointPatch": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "description": "A JSON merge patch: an object changes the named fields of a role, null removes it.",
        "properties": {
            "champion": {"type": "object", "properties": {"model": _NAME, "version": _VERSION}},
            "challenger": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"model": _NAME, "version": _VERSION, "weight": _FRACTION},
                    },
                    {"type": "null"},
                ]
            },
            "shadow": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"model": _NAME, "version": _VERSION, "sample_rate": _FRACTION},
                    },
                    {"type": "null"},
                ]
            },
        },
    },
    "Endpoint": {
        "type": "object",
        "required": ["name", "champion", "challenger", "shadow", "revision", "changed_by", "changed_at"],
        "properties": {
            "name": _NAME,
            "champion": _ref("Champion"),
            "challenger": {"oneOf": [_ref("Challenger"), {"type": "null"}]},
            "shadow": {"oneOf": [_ref("Shadow"), {"type": "null"}]},
            "revision": {"type": "integer", "minimum": 0, "description": "0 = as gateway.toml defines it"},
            "changed_by": {"type": "string"},
            "changed_at": {"type": "string", "format": "date-time"},
        },
    },
    "EndpointList": {
        "type": "object",
        "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": _ref("Endpoint")}},
    },
    "AuditEntry": {
        "type": "object",
        "required": ["time", "actor", "action", "endpoint", "revision", "before", "after"],
        "properties": {
            "time": {"type": "string", "format": "date-time"},
            "actor": {"type": "string"},
            "action": {"enum": ["put", "patch", "promote", "rollback", "load", "unload"]},
            "endpoint": {"type": ["string", "null"]},
            "revision": {"type": ["integer", "null"]},
            "before": {"type": ["object", "null"]},
            "after": {"type": ["object", "null"]},
            "model": {"type": ["string", "null"]},
        },
    },
    "AuditList": {
        "type": "object",
        "required": ["entries"],
        "properties": {"entries": {"type": "array", "items": _ref("AuditEntry")}},
    },
    "ModelRow": {
        "type": "object",
        "required": ["name", "version", "state", "reason"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "state": {"enum": ["READY", "LOADING", "UNAVAILABLE", "UNLOADING"]},
            "reason": {"type": "string"},
        },
    },
    "WindowStats": {
        "type": "object",
        "required": ["count", "errors", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"],
        "description": "Latency in the gateway (routing to answer), ms; quantiles at HDR bucket midpoints "
        "(< 0.4% off); null when the window holds no request. max_ms is exact for `all`, the top bucket's "
        "upper bound (< 0.8% high) otherwise. errors: non-OK codes, given for `all` only.",
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "errors": {"type": ["integer", "null"], "minimum": 0},
            **{q: {"type": ["number", "null"]} for q in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
        },
    },
    "SeriesStats": {
        "type": "object",
        "required": ["model", "version", "role", "requests", "windows"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "role": {"enum": ["champion", "challenger", "shadow", "pinned"]},
            "requests": {
                "type": "object",
                "description": "Requests since start by protocol, then outcome code",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
            "windows": {
                "type": "object",
                "required": ["10s", "1m", "5m", "all"],
                "additionalProperties": _ref("WindowStats"),
            },
        },
    },
    "ShadowComparison": {
        "type": "object",
        "required": [
            "served_model",
            "served_version",
            "shadow_model",
            "shadow_version",
            "output",
            "compared",
            "mismatched",
            "max_abs_diff",
            "mean_abs_diff",
            "argmax_rows",
            "argmax_agreement",
        ],
        "properties": {
            "served_model": {"type": "string"},
            "served_version": {"type": "string"},
            "shadow_model": {"type": "string"},
            "shadow_version": {"type": "string"},
            "output": {"type": "string"},
            "compared": {"type": "integer", "description": "Answers compared on this output"},
            "mismatched": {"type": "integer", "description": "Answers whose shape or datatype differed"},
            "max_abs_diff": {"type": "number"},
            "mean_abs_diff": {"type": ["number", "null"]},
            "argmax_rows": {"type": "integer"},
            "argmax_agreement": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        },
    },
    "EndpointStats": {
        "type": "object",
        "required": ["endpoint", "windows", "series", "shadow"],
        "properties": {
            "endpoint": {"type": "string"},
            "windows": {"type": "array", "items": {"enum": ["10s", "1m", "5m", "all"]}},
            "series": {"type": "array", "items": _ref("SeriesStats")},
            "shadow": {
                "type": "object",
                "required": ["counters", "comparisons"],
                "properties": {
                    "counters": {
                        "type": "object",
                        "properties": {
                            k: {"type": "integer"}
                            for k in ("queued", "dropped", "failed", "timed_out", "compared")
                        },
                    },
                    "comparisons": {"type": "array", "items": _ref("ShadowComparison")},
                },
            },
        },
    },
    "SampleList": {
        "type": "object",
        "required": ["samples"],
        "properties": {"samples": {"type": "array", "items": {"type": "object"}}},
    },
    "ModelList": {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": _ref("ModelRow")}},
    },
    "ModelState": {
        "type": "object",
        "required": ["name", "state", "versions", "failed", "reason"],
        "properties": {
            "name": {"type": "string"},
            "state": {"enum": ["READY", "LOADING", "UNAVAILABLE", "UNLOADING"]},
            "versions": {"type": "array", "items": {"type": "integer"}},
            "failed": {"type": "object", "additionalProperties": {"type": "string"}},
            "reason": {"type": "string"},
        },
    },
}

_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": _NAME}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The revision the change is based on (an integer, quotes allowed); 412 if stale",
}
_AUTH_ERRORS = {"401": _error("No token, or an invalid one"), "403": _error("A viewer tried a change")}
_CHANGE_ERRORS = {
    **_AUTH_ERRORS,
    "400": _error("Invalid body or a split that cannot be served; nothing changed"),
    "404": _error("Unknown endpoint"),
    "412": _error("If-Match names a revision that is no longer current; nothing changed"),
}


def _endpoint_answer(description: str) -> dict[str, Any]:
    return {**_json(_ref("Endpoint"), description), "headers": _ETAG}


def _change(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [_NAME_PARAM, _IF_MATCH],
        "responses": {"200": _endpoint_answer("The endpoint after the change"), **_CHANGE_ERRORS},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _model_action(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [_NAME_PARAM],
        "responses": {
            "200": _json(_ref("ModelState"), "The model's state afterwards"),
            **_AUTH_ERRORS,
            "400": _error("Invalid model name"),
            "404": _error("No such model in the repository"),
            "503": _error("Loaded, but no version became ready"),
        },
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "onnxgate control API",
        "version": "1",
        "description": "Champion/challenger/shadow splits per endpoint, changed at run time. Every change "
        "is on disk and in the audit log before it is answered.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }
        },
        "/v1/endpoints": {
            "get": {
                "summary": "Every endpoint",
                "responses": {"200": _json(_ref("EndpointList"), "Endpoints by name"), **_AUTH_ERRORS},
            }
        },
        "/v1/endpoints/{name}": {
            "get": {
                "summary": "One endpoint",
                "parameters": [_NAME_PARAM],
                "responses": {
                    "200": _endpoint_answer("The endpoint"),
                    **_AUTH_ERRORS,
                    "404": _error("Unknown endpoint"),
                },
            },
            "put": {
                **_change(
                    "Set an endpoint's whole split (creates the endpoint if new)", _ref("EndpointSpec")
                ),
                "responses": {
                    "200": _endpoint_answer("The endpoint after the change"),
                    "201": _endpoint_answer("The endpoint, created"),
                    **_CHANGE_ERRORS,
                },
            },
            "patch": _change("Change part of an endpoint's split", _ref("EndpointPatch")),
        },
        "/v1/endpoints/{name}/promote": {
            "post": _change(
                "Make the challenger the champion; the old champion stays as challenger at 0", None
            )
        },
        "/v1/endpoints/{name}/rollback": {
            "post": _change("Restore the split before the latest change; repeat to go further back", None)
        },
        "/v1/endpoints/{name}/stats": {
            "get": {
                "summary": "Per-version request counts and latency quantiles (10s, 1m, 5m, all) and shadow "
                "comparisons",
                "parameters": [_NAME_PARAM],
                "responses": {
                    "200": _json(_ref("EndpointStats"), "The endpoint's statistics"),
                    **_AUTH_ERRORS,
                    "404": _error("Neither configured nor ever requested"),
                    "501": _error("This gateway has no statistics source"),
                },
            }
        },
        "/v1/endpoints/{name}/samples": {
            "get": {
                "summary": "The latest payload samples recorded for the endpoint",
                "parameters": [
                    _NAME_PARAM,
                    {"name": "version", "in": "query", "schema": _VERSION},
                    {
                        "name": "role",
                        "in": "query",
                        "schema": {"enum": ["champion", "challenger", "shadow", "pinned"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    },
                ],
                "responses": {
                    "200": _json(_ref("SampleList"), "Samples, newest last"),
                    **_AUTH_ERRORS,
                    "400": _error("Invalid query"),
                    "404": _error("Unknown endpoint"),
                    "501": _error("Payload sampling is not available on this gateway"),
                },
            }
        },
        "/v1/audit": {
            "get": {
                "summary": "The latest audit entries, oldest first",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                    },
                    {"name": "endpoint", "in": "query", "schema": _NAME},
                    {"name": "since_revision", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {
                    "200": _json(_ref("AuditList"), "Audit entries"),
                    **_AUTH_ERRORS,
                    "400": _error("Invalid query"),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "The model repository's index",
                "responses": {"200": _json(_ref("ModelList"), "Every model version"), **_AUTH_ERRORS},
            }
        },
        "/v1/models/{name}/load": {"post": _model_action("Load or reload a model from the repository")},
        "/v1/models/{name}/unload": {"post": _model_action("Unload every version of a model")},
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
