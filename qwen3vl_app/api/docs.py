"""GET /openapi.json and GET /docs: the API contract, generated from the routes.

The document is built (once per worker, on first use) from `app.url_map`: each route
carries its own description (`@route_doc`, api/routedoc.py) naming the marshmallow schemas
that validate its requests and describe its replies, and apispec's marshmallow plugin turns
those into JSON Schema.  A route without a description stops the build
(`UndocumentedRoute`), so /openapi.json cannot leave an endpoint out;
tests/inprocess/test_docs.py holds the document to the served routes and validates it.
This module keeps only what every operation shares: the security scheme, the error body
and its per-status texts, the X-Request-Id header, the JSON Schema of the hand-written
marshmallow fields apispec cannot convert, and Swagger UI.  Swagger UI's files come from
the `swagger-ui-bundle` PyPI package and are served by this module; nothing is fetched
from a CDN.

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
from marshmallow import validate

from .. import __version__
from . import chat_schema as cs
from . import completions_schema as ps
from . import responses_schema as rs
from .common import ErrorResponseSchema
from .routedoc import Body, RouteDoc, UndocumentedRoute, doc_of, route_doc

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


# ----------------------------------------------------------------------------- routes

_PATH_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def openapi_path(rule: str) -> str:
    """Flask's `/v1/models/<path:model_id>` -> OpenAPI's `/v1/models/{model_id}`."""
    return _PATH_ARGUMENT.sub(r"{\1}", rule)


def app_routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route the app serves (HEAD/OPTIONS are implicit)."""
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            out.add((openapi_path(rule.rule), method.lower()))
    return out


# ----------------------------------------------------------------------------- operations

_ERROR_TEXT = {
    400: "invalid request (the error names the parameter)",
    401: "missing or invalid API key",
    404: "not found (a `model` this server does not serve: `model_not_found`; a camera: `camera_not_found`)",
    405: "method not allowed",
    408: "the request body did not arrive within --body-timeout",
    413: "body or media too large",
    415: "wrong Content-Type",
    429: "too many at once for this key or server (watches: `too_many_watches`)",
    500: "internal error (the message carries the request id)",
    503: "engine busy, loading or failed (see Retry-After); a camera offline or stalled: `camera_unavailable`",
}

_REQUEST_ID = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 128},
    "description": "echoed back; one is made up when absent",
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


def _content(body: Body) -> dict:
    if body is None:
        return {}
    if isinstance(body, type):  # a marshmallow Schema: JSON, a component
        return {"application/json": {"schema": body}}
    return {media_type: {"schema": dict(schema)} for media_type, schema in body.items()}


def _operation(doc: RouteDoc, rule: str, settings) -> dict:
    """The OpenAPI operation of one (rule, method) from the route's own description."""
    needs_key = doc.needs_key(settings)
    op: dict[str, Any] = {"tags": [doc.tag], "summary": doc.summary, "operationId": doc.operation_id}
    if not needs_key:
        op["security"] = []
    op["parameters"] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            **({"example": doc.path_examples[name]} if name in doc.path_examples else {}),
        }
        for name in _PATH_ARGUMENT.findall(rule)
    ] + [dict(_REQUEST_ID)]
    if doc.request is not None:
        media: dict[str, Any] = {"schema": doc.request}
        if doc.request_example is not None:
            media["example"] = doc.request_example
        op["requestBody"] = {"required": True, "content": {doc.request_type: media}}
    responses: dict[str, dict] = {}
    for status, (description, body) in doc.responses.items():
        content = _content(body)
        if status == 200 and doc.stream:
            content["text/event-stream"] = _sse_event(doc.stream)
        responses[str(status)] = {"description": description, **({"content": content} if content else {})}
    errors = set(doc.errors) | ({401} if needs_key and not settings.disable_api_auth else set())
    unknown = errors - set(_ERROR_TEXT)
    if unknown:
        raise ValueError(f"{doc.operation_id}: no description for error statuses {sorted(unknown)}")
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": ERROR}},
        }
    op["responses"] = responses
    return op


# ----------------------------------------------------------------------------- document


def _custom_fields(converter):
    """JSON Schema for the request schema's hand-written fields (apispec maps those to {}),
    and exclusive bounds."""
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
        cs.ToolChoiceField: {
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
    """The document of `app`'s routes under `settings` (auth flags decide the security parts);
    UndocumentedRoute when a route has no `@route_doc`."""
    from apispec import APISpec
    from apispec.ext.marshmallow import MarshmallowPlugin

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
    converter = plugin.converter
    assert converter is not None  # made when APISpec took the plugin
    _custom_fields(converter)
    # Named here: the hand-written fields refer to these two, every operation to the error body.
    spec.components.schema("MediaURL", schema=cs.MediaURLSchema)
    spec.components.schema("ContentPart", schema=cs.ContentPartSchema)
    spec.components.schema(ERROR, schema=ErrorResponseSchema)
    scheme = security_scheme(settings)
    if scheme:
        spec.components.security_scheme(SECURITY_NAME, scheme)
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        doc = doc_of(app.view_functions[rule.endpoint])
        if doc is None:
            raise UndocumentedRoute(
                f"{rule.rule} (endpoint {rule.endpoint!r}) has no @route_doc: describe it beside its view "
                "(api/routedoc.py)"
            )
        for events in doc.events:  # components, though only words refer to them
            converter.resolve_nested_schema(events)
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        spec.path(
            path=openapi_path(rule.rule), operations={m.lower(): _operation(doc, rule.rule, settings) for m in methods}
        )
    document = spec.to_dict()
    _split_content_part(document["components"]["schemas"])
    if scheme:
        document["security"] = [{SECURITY_NAME: []}]
    return document


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
@route_doc(
    tag="docs",
    summary="This document",
    operation_id="openapi",
    auth=False,
    responses={200: ("OpenAPI 3 document", {"application/json": {"type": "object"}})},
)
def openapi():
    body = json.dumps(_document(), ensure_ascii=False, indent=1)
    return Response(body, mimetype="application/json")


@bp.get("/docs")
@route_doc(
    tag="docs",
    summary="Swagger UI",
    operation_id="docs",
    auth=False,
    responses={200: ("HTML page", {"text/html": {"type": "string"}})},
)
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
@route_doc(
    tag="docs",
    summary="Swagger UI's static files",
    operation_id="docsAsset",
    auth=False,
    path_examples={"filename": "swagger-ui.css"},
    responses={200: ("a file of the Swagger UI bundle", None)},
    errors=(404,),
)
def asset(filename):
    return send_from_directory(_swagger_dir(), filename, max_age=86400)
