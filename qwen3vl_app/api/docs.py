"""GET /openapi.json and GET /docs: the API contract, generated from the marshmallow schemas.

The document is built (once per worker, on first use) with apispec's marshmallow plugin
from the same schemas that validate requests, plus the response schemas beside each
blueprint.  Every route of the app must be described here: tests/resilience/test_openapi.py
fails on a route that is not.  Swagger UI's files come from the `swagger-ui-bundle` PyPI
package and are served by this module; nothing is fetched from a CDN.

Auth: `/docs`, its assets and `/openapi.json` are open, as the old service's `/docs` was.
The document holds no secret (only the header name and prefix the key goes in), and a
browser cannot send the key before Swagger UI has loaded the document and the user has
pressed "Authorize".  Every other operation declares the security scheme built from
`--api-header`/`--api-prefix`.  `--disable-docs` turns all three routes off (404), decided per request.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from flask import Blueprint, Response, abort, current_app, send_from_directory, url_for

from .. import __version__

OPENAPI_VERSION = "3.0.3"  # the bundled Swagger UI (4.x) renders 3.0 documents
ERROR = "ErrorResponse"
SECURITY_NAME = "apiKey"

_lock = threading.Lock()


def _swagger_dir() -> str:
    from swagger_ui_bundle import swagger_ui_path

    return str(swagger_ui_path)


# ----------------------------------------------------------------------------- security


def security_scheme(settings) -> dict | None:
    """The scheme matching how auth.py reads the key, so Swagger UI's "Authorize" works."""
    if settings.disable_api_auth:
        return None
    header, prefix = settings.api_header, settings.api_prefix
    if header.lower() == "authorization":
        if prefix.lower() == "bearer":
            return {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <key>` (type only the key in Authorize)",
            }
        return {
            "type": "apiKey",
            "in": "header",
            "name": header,
            "description": f"`{header}: {prefix} <key>` -- type `{prefix} <key>` in Authorize",
        }
    extra = f" (or `{prefix} <key>`)" if prefix else ""
    return {"type": "apiKey", "in": "header", "name": header, "description": f"`{header}: <key>`{extra}"}


# ----------------------------------------------------------------------------- operations


def _json(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    text = {
        400: "invalid request (the error names the parameter)",
        401: "missing or invalid API key",
        404: "not found (a `model` this server does not serve: `model_not_found`)",
        408: "the request body did not arrive within --body-timeout",
        405: "method not allowed",
        413: "body or media too large",
        415: "wrong Content-Type",
        500: "internal error (the message carries the request id)",
        503: "engine busy, loading or failed (see Retry-After)",
    }
    return {str(s): _json(ERROR, text[s]) for s in statuses}


def _static_files(tag: str, summary: str, operation_id: str, example: str, description: str) -> dict:
    """GET of an open folder of static files (no key), one path parameter."""
    return {
        "get": {
            "tags": [tag],
            "summary": summary,
            "operationId": operation_id,
            "security": [],
            "parameters": [
                {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}, "example": example}
            ],
            "responses": {"200": {"description": description}, **_errors(404)},
        }
    }


def _sse_event(data: str) -> dict:
    """One Server-Sent Event (OpenAPI before 3.2: the media type's schema describes each event)."""
    return {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string", "description": data}, "event": {"type": "string"}},
        }
    }


_REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 128},
    "description": "echoed back; one is made up when absent",
}


def _operations(settings) -> dict[str, dict[str, dict]]:
    """path (OpenAPI form) -> method -> operation."""
    auth = () if settings.disable_api_auth else (401,)
    sse_chunk = _sse_event(
        "a ChatCompletionChunk as JSON (an ErrorResponse if the engine fails mid-stream), "
        "then `[DONE]`; `: ping` comments keep the stream alive"
    )
    return {
        "/health": {
            "get": {
                "tags": ["service"],
                "summary": "Engine state and server facts (the old service's fields)",
                "operationId": "health",
                "responses": {
                    "200": _json("Health", "ready or still loading"),
                    "503": _json("Health", "the engine failed to load"),
                    **_errors(*auth),
                },
            }
        },
        "/v1/models": {
            "get": {
                "tags": ["models"],
                "summary": "List models (one)",
                "operationId": "listModels",
                "responses": {"200": _json("ModelList", "the served model"), **_errors(*auth)},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "tags": ["models"],
                "summary": "Retrieve a model",
                "operationId": "retrieveModel",
                "parameters": [
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "example": "qwen3-vl-instruct",
                    }
                ],
                "responses": {"200": _json("Model", "the model"), **_errors(*auth, 404)},
            }
        },
        "/v1/chat/completions": {
            "post": {
                "tags": ["chat"],
                "summary": "OpenAI Chat Completions (text, images, videos; stream or not)",
                "operationId": "createChatCompletion",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": "ChatCompletionRequest",
                            "example": {
                                "model": "qwen3-vl-instruct",
                                "max_tokens": 32,
                                "messages": [{"role": "user", "content": "Hello!"}],
                            },
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "a chat.completion, or with `stream: true` an SSE stream of "
                        "ChatCompletionChunk events",
                        "content": {"application/json": {"schema": "ChatCompletion"}, "text/event-stream": sse_chunk},
                    },
                    **_errors(400, *auth, 404, 408, 413, 415, 500, 503),
                },
            }
        },
        "/v1/completions": {
            "post": {
                "tags": ["completions"],
                "summary": "OpenAI legacy text completions (raw prompt, no chat template)",
                "operationId": "createCompletion",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": "CompletionRequest",
                            "example": {"model": "qwen3-vl-instruct", "prompt": "Once upon a time", "max_tokens": 16},
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "a text_completion (one choice per prompt), or with `stream: true` an SSE "
                        "stream of text_completion events",
                        "content": {
                            "application/json": {"schema": "Completion"},
                            "text/event-stream": _sse_event(
                                "a Completion as JSON (an ErrorResponse if the engine fails mid-stream), then `[DONE]`"
                            ),
                        },
                    },
                    **_errors(400, *auth, 404, 408, 413, 415, 500, 503),
                },
            }
        },
        "/v1/responses": {
            "post": {
                "tags": ["responses"],
                "summary": "OpenAI Responses API (stateless: previous_response_id is a 400, store has no effect)",
                "operationId": "createResponse",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": "ResponseRequest",
                            "example": {"model": "qwen3-vl-instruct", "input": "Hello!", "max_output_tokens": 32},
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "a response, or with `stream: true` its events (`event: <type>`): "
                        "response.created, response.in_progress, response.output_item.added, "
                        "response.content_part.added, response.output_text.delta..., "
                        "response.function_call_arguments.delta/done, ...done events, then "
                        "response.completed or response.incomplete (no `[DONE]`)",
                        "content": {
                            "application/json": {"schema": "Response"},
                            "text/event-stream": _sse_event(
                                "a Responses stream event as JSON with `type` and `sequence_number`; "
                                "lifecycle events carry a Response"
                            ),
                        },
                    },
                    **_errors(400, *auth, 404, 408, 413, 415, 500, 503),
                },
            }
        },
        "/v1/media/describe": {
            "post": {
                "tags": ["media"],
                "summary": "Describe an uploaded image or video (the old service's endpoint)",
                "operationId": "describeMedia",
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": "MediaDescribeForm"}}},
                "responses": {
                    "200": {
                        "description": "the description, or with `stream` an SSE stream of MediaStreamDelta "
                        "events, a final MediaDescription event and `data: [DONE]`",
                        "content": {
                            "application/json": {"schema": "MediaDescription"},
                            "text/event-stream": _sse_event(
                                "a MediaStreamDelta or, last, a MediaDescription as JSON (an ErrorResponse "
                                "if the engine fails mid-stream), then `[DONE]`"
                            ),
                        },
                    },
                    **_errors(400, *auth, 404, 408, 413, 415, 500, 503),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ["service"],
                "summary": "Prometheus metrics (open unless --metrics-auth)",
                "operationId": "metrics",
                **({} if settings.metrics_auth else {"security": []}),
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(*(auth if settings.metrics_auth else ())),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["docs"],
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/docs": {
            "get": {
                "tags": ["docs"],
                "summary": "Swagger UI",
                "operationId": "docs",
                "security": [],
                "responses": {
                    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/": {
            "get": {
                "tags": ["playground"],
                "summary": "The browser playground (open; its API calls carry the key)",
                "operationId": "playground",
                "security": [],
                "responses": {
                    "200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/playground/{filename}": _static_files(
            "playground", "The playground's static files", "playgroundAsset", "app.js", "a file of the playground"
        ),
        "/docs/{filename}": _static_files(
            "docs", "Swagger UI's static files", "docsAsset", "swagger-ui.css", "a file of the Swagger UI bundle"
        ),
    }


def openapi_path(rule: str) -> str:
    """Flask's `/v1/models/<path:model_id>` -> OpenAPI's `/v1/models/{model_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def app_routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route the app serves (HEAD/OPTIONS are implicit)."""
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((openapi_path(rule.rule), method.lower()))
    return out


# ----------------------------------------------------------------------------- document


def _custom_fields(converter):
    """JSON Schema for the request schema's hand-written fields (apispec maps those to {}),
    and exclusive bounds."""
    from marshmallow import validate

    from . import chat_schema as cs
    from . import completions_schema as ps
    from . import responses_schema as rs

    part_ref = {"$ref": "#/components/schemas/ContentPart"}
    by_type: dict[type, dict[str, Any]] = {
        cs.MediaURL: {
            "oneOf": [{"$ref": "#/components/schemas/MediaURL"}, {"type": "string"}],
            "description": '`{"url": ...}` or the bare URL: http(s), data:, file:// or a local path '
            "(local ones only under --allowed-local-media-path)",
        },
        cs.Content: {
            "oneOf": [{"type": "string"}, {"type": "array", "items": part_ref}],
            "description": "text, or a list of text/image_url/video_url parts; null for assistant turns",
        },
        cs.StopField: {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}],
            "description": "up to 4 sequences that end the generation",
        },
        cs.ToolChoice: {
            "oneOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "function": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}},
                        },
                    },
                },
            ],
            "description": "required and a named function are enforced by constrained decoding",
        },
        cs.LogitBias: {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            "description": "token id (as a string) -> bias added to its logit",
        },
        ps.PromptField: {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "array", "items": {"type": "integer"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            ],
            "description": f"text, token ids, or up to {ps.MAX_PROMPTS} of either (one choice each)",
        },
        rs.InputField: {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
            "description": "text, or items: messages (input_text / input_image / output_text parts), "
            "function_call and function_call_output",
        },
    }

    def attribute(self, field, **kwargs):
        ret = dict(by_type.get(type(field), {}))
        for v in getattr(field, "validators", ()):
            if isinstance(v, validate.Range):  # apispec drops min_inclusive/max_inclusive=False
                if v.min is not None and not v.min_inclusive:
                    ret["exclusiveMinimum"] = True
                if v.max is not None and not v.max_inclusive:
                    ret["exclusiveMaximum"] = True
        return ret

    converter.add_attribute_function(attribute)


def _split_content_part(schemas: dict) -> None:
    """ContentPartSchema checks "a <type> part needs '<type>'" in a @validates_schema that
    JSON Schema cannot see; document it as one variant per part type, each generated from
    the marshmallow fields: the type, its payload field, and (media) the per-part budget."""
    from .chat_schema import PART_TYPES

    part = schemas["ContentPart"]
    media_options = ("min_pixels", "max_pixels", "fps", "max_frames")
    variants = []
    for t in PART_TYPES:
        keep = ("type", t if t != "text" else "text") + (media_options if t != "text" else ())
        props = {k: v for k, v in part["properties"].items() if k in keep}
        props["type"] = {**props["type"], "enum": [t]}
        variants.append({"type": "object", "title": f"{t} part", "properties": props, "required": ["type", keep[1]]})
    schemas["ContentPart"] = {"oneOf": variants, "description": "one part of a message's content"}


def build_spec(app, settings) -> dict:
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

    from . import chat_schema as cs
    from . import completions_schema as ps
    from . import media_schema as ms
    from . import responses_schema as rs
    from .common import ErrorResponseSchema
    from .health import HealthSchema
    from .models import ModelListSchema, ModelSchema

    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Qwen3-VL OpenAI-compatible server",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "OpenAI Chat Completions for Qwen3-VL (BM1684X TPU or the torch reference "
            "engine), plus the old service's /health and /v1/media/describe. Every failure "
            'is an OpenAI error object `{"error": {message, type, param, code}}`.'
        },
    )
    _custom_fields(plugin.converter)
    for name, schema in [
        ("MediaURL", cs.MediaURLSchema),
        ("ContentPart", cs.ContentPartSchema),
        ("Message", cs.MessageSchema),
        ("StreamOptions", cs.StreamOptionsSchema),
        ("ChatCompletionRequest", cs.ChatCompletionRequestSchema),
        ("Usage", cs.UsageSchema),
        ("ChatCompletion", cs.ChatCompletionSchema),
        ("ChatCompletionChunk", cs.ChatCompletionChunkSchema),
        ("CompletionRequest", ps.CompletionRequestSchema),
        ("Completion", ps.CompletionSchema),
        ("ResponseRequest", rs.ResponseRequestSchema),
        ("Response", rs.ResponseSchema),
        (ERROR, ErrorResponseSchema),
        ("Health", HealthSchema),
        ("Model", ModelSchema),
        ("ModelList", ModelListSchema),
        ("MediaDescribeForm", ms.MediaDescribeFormSchema),
        ("MediaDescription", ms.MediaDescriptionSchema),
        ("MediaStreamDelta", ms.MediaStreamDeltaSchema),
    ]:
        spec.components.schema(name, schema=schema)
    scheme = security_scheme(settings)
    if scheme:
        spec.components.security_scheme(SECURITY_NAME, scheme)
    served = app_routes(app)
    for path, ops in _operations(settings).items():
        ops = {m: op for m, op in ops.items() if (path, m) in served}
        if not ops:
            continue  # e.g. /metrics when that blueprint is not installed
        for op in ops.values():
            op.setdefault("parameters", []).append(dict(_REQUEST_ID))
        spec.path(path=path, operations=ops)
    doc = spec.to_dict()
    _split_content_part(doc["components"]["schemas"])
    if scheme:
        doc["security"] = [{SECURITY_NAME: []}]
    return doc


def _document() -> dict:
    ext = current_app.extensions
    if "qwen3vl.openapi" not in ext:
        with _lock:
            if "qwen3vl.openapi" not in ext:
                ext["qwen3vl.openapi"] = build_spec(current_app, ext["qwen3vl"].settings)
    return ext["qwen3vl.openapi"]


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Qwen3-VL API</title>
<link rel="stylesheet" href="{css}"><link rel="icon" href="{icon}"></head>
<body><div id="swagger-ui"></div>
<script src="{bundle}"></script><script src="{preset}"></script>
<script>
window.ui = SwaggerUIBundle({{url: {spec}, dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
  persistAuthorization: true, validatorUrl: null}});
</script></body></html>
"""


bp = Blueprint("docs", __name__)


@bp.before_request
def _docs_enabled():
    if current_app.extensions["qwen3vl"].settings.disable_docs:
        abort(404)


@bp.get("/openapi.json")
def openapi():
    body = json.dumps(_document(), ensure_ascii=False, indent=1)
    return Response(body, mimetype="application/json")


@bp.get("/docs")
def docs():
    def asset(name):
        return url_for("docs.asset", filename=name)

    page = _PAGE.format(
        css=asset("swagger-ui.css"),
        icon=asset("favicon-32x32.png"),
        bundle=asset("swagger-ui-bundle.js"),
        preset=asset("swagger-ui-standalone-preset.js"),
        spec=json.dumps(url_for("docs.openapi")),
    )
    return Response(page, mimetype="text/html")


@bp.get("/docs/<path:filename>")
def asset(filename):
    return send_from_directory(_swagger_dir(), filename, max_age=86400)
