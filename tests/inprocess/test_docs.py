"""The API contract: /openapi.json covers every route, validates, matches the auth settings;
a route without `@route_doc` stops the document's build; what each route declares about
its key is what it does; /docs serves Swagger UI from the PyPI bundle (no CDN).
In-process: one app per settings."""

from __future__ import annotations

import dataclasses
import re

import pytest
from openapi_spec_validator import validate

from qwen3vl_app.api.docs import app_routes, build_spec
from qwen3vl_app.api.routedoc import UndocumentedRoute, route_doc
from tests.support.checks import openai_error

VARIANTS = {
    "bearer": {},
    "token prefix": {"api_prefix": "Token"},
    "custom header": {"api_header": "X-API-Key"},
    "auth off": {"disable_api_auth": True},
    "metrics auth": {"metrics_auth": True},
}


@pytest.fixture
def default_doc(inproc_factory):
    """(served routes, the served document, the document built for each of VARIANTS' settings)."""
    app = inproc_factory()
    r = app.get("/openapi.json", headers={})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    variants = {name: build_spec(app.app, dataclasses.replace(app.settings, **kw)) for name, kw in VARIANTS.items()}
    return app_routes(app.app), r.get_json(), variants


def test_every_route_is_documented_and_the_document_validates(default_doc):
    routes, doc, _ = default_doc
    validate(doc)  # raises on an invalid OpenAPI 3 document
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes, "no routes found"
    missing = routes - documented
    assert not missing, f"routes missing from /openapi.json (give them a @route_doc): {sorted(missing)}"
    assert documented <= routes, f"documented but not served: {sorted(documented - routes)}"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId") and op.get("responses"), (path, method)


def test_a_route_without_a_description_stops_the_build(inproc_factory):
    app = inproc_factory()
    app.app.add_url_rule("/v1/undocumented", "undocumented", lambda: "hi")  # before the first request
    with pytest.raises(UndocumentedRoute, match="/v1/undocumented"):
        build_spec(app.app, app.settings)
    openai_error(app.get("/openapi.json", headers={}), 500)  # served: a loud failure, not a silent gap

    documented = inproc_factory()
    documented.app.add_url_rule(
        "/v1/documented",
        "documented",
        route_doc(tag="t", summary="s", operation_id="documented", responses={200: ("hi", None)})(lambda: "hi"),
    )
    doc = documented.get("/openapi.json", headers={}).get_json()
    validate(doc)
    assert doc["paths"]["/v1/documented"]["get"]["operationId"] == "documented"
    assert "401" in doc["paths"]["/v1/documented"]["get"]["responses"]  # needs the key unless it says auth=False


@pytest.mark.parametrize("metrics_auth", [False, True])
def test_what_a_route_declares_about_its_key_is_what_it_does(inproc_factory, metrics_auth):
    """Every documented operation, called without the key: a 401 exactly where the document
    requires the key (path parameters take their documented examples)."""
    app = inproc_factory(metrics_auth=metrics_auth)
    doc = app.get("/openapi.json", headers={}).get_json()
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            url = path
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", p["example"])
            r = app.request(method.upper(), url, headers={})
            open_ = op.get("security") == []
            assert (r.status_code == 401) is not open_, (method, path, r.status_code)
            checked += 1
    assert checked == len(app_routes(app.app))


def test_schemas_come_from_marshmallow(default_doc):
    _, doc, _ = default_doc
    schemas = doc["components"]["schemas"]
    req = schemas["ChatCompletionRequest"]
    assert req["required"] == ["messages"]
    assert req["properties"]["temperature"]["maximum"] == 2 and req["properties"]["top_p"]["exclusiveMinimum"]
    assert req["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/Message"}
    assert schemas["Message"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant", "tool"]
    content = schemas["Message"]["properties"]["content"]["oneOf"]
    assert {"type": "string"} in content
    for name in (
        "ChatCompletion",
        "ChatCompletionChunk",
        "ErrorResponse",
        "ModelList",
        "Model",
        "Health",
        "MediaDescribeForm",
        "MediaDescription",
    ):
        assert name in schemas, name
    assert schemas["MediaDescribeForm"]["properties"]["file"]["format"] == "binary"
    parts = {v["properties"]["type"]["enum"][0]: v for v in schemas["ContentPart"]["oneOf"]}
    assert set(parts) == {"text", "image_url", "video_url", "image", "video"}
    assert parts["text"]["required"] == ["type", "text"] and parts["image_url"]["required"] == ["type", "image_url"]
    assert "max_pixels" in parts["video_url"]["properties"] and "max_pixels" not in parts["text"]["properties"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert chat["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "text/event-stream" in chat["200"]["content"]
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.mark.parametrize(
    "variant,scheme",
    [
        ("bearer", {"type": "http", "scheme": "bearer"}),
        ("token prefix", {"type": "apiKey", "in": "header", "name": "Authorization"}),
        ("custom header", {"type": "apiKey", "in": "header", "name": "X-API-Key"}),
        ("auth off", None),
    ],
)
def test_security_scheme_follows_the_auth_settings(default_doc, variant, scheme):
    doc = default_doc[2][variant]
    validate(doc)
    schemes = doc.get("components", {}).get("securitySchemes")
    if scheme is None:
        assert not schemes and "security" not in doc
        return
    ((name, got),) = schemes.items()
    assert {k: got[k] for k in scheme} == scheme
    assert doc["security"] == [{name: []}]
    assert doc["paths"]["/docs"]["get"]["security"] == [] and doc["paths"]["/openapi.json"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/chat/completions"]["post"]  # the global requirement applies
    assert doc["paths"]["/metrics"]["get"]["security"] == []  # open unless --metrics-auth (api/metrics.py)


def test_metrics_auth_is_reflected(default_doc):
    doc = default_doc[2]["metrics auth"]
    assert "security" not in doc["paths"]["/metrics"]["get"]
    assert "401" in doc["paths"]["/metrics"]["get"]["responses"]


def test_the_served_document_is_the_built_one(default_doc):
    assert default_doc[1] == default_doc[2]["bearer"]


def test_each_app_serves_the_document_of_its_own_settings(inproc_factory):
    docs = {name: inproc_factory(**kw).get("/openapi.json", headers={}).get_json() for name, kw in VARIANTS.items()}
    assert docs["custom header"]["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert "securitySchemes" not in docs["auth off"].get("components", {})
    assert "security" not in docs["metrics auth"]["paths"]["/metrics"]["get"]
    assert docs["bearer"]["paths"]["/metrics"]["get"]["security"] == []


def test_document_and_swagger_ui_without_cdn(inproc):
    # Open without the key (like the old service's /docs); everything else still needs it.
    doc = inproc.get("/openapi.json", headers={}).get_json()
    validate(doc)
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    openai_error(inproc.get("/v1/models", headers={}), 401)

    page = inproc.get("/docs", headers={})
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and '"/openapi.json"' in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page must not load from another host"
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
    assert len(assets) >= 3
    for path in assets:
        a = inproc.get(path, headers={})
        assert a.status_code == 200 and len(a.data) > 100, path
    assert inproc.get("/docs/swagger-ui-bundle.js", headers={}).headers["Content-Type"].split(";")[0] in (
        "application/javascript",
        "text/javascript",
    )
    openai_error(inproc.get("/docs/../gunicorn.conf.py", headers={}), 404)
    openai_error(inproc.get("/docs/%2e%2e/gunicorn.conf.py", headers={}), 404)
    openai_error(inproc.get("/docs/nope.js", headers={}), 404)


def test_docs_can_be_turned_off(inproc_factory):
    app = inproc_factory(disable_docs=True)
    for path in ("/docs", "/openapi.json", "/docs/swagger-ui-bundle.js"):
        openai_error(app.get(path, headers={}), 404)
