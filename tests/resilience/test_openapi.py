"""The API contract: /openapi.json covers every route, validates, matches the auth settings;
/docs serves Swagger UI from the PyPI bundle (no CDN)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import requests
from openapi_spec_validator import validate

from tests.conftest import REPO

from .helpers import openai_error

_PROBE = r"""
import dataclasses, json, sys
from qwen3vl_app import create_app
from qwen3vl_app.api.docs import app_routes, build_spec
app = create_app()
r = app.test_client().get("/openapi.json")
doc = r.get_json() if r.status_code == 200 else None
settings = app.extensions["qwen3vl"].settings
variants = {name: build_spec(app, dataclasses.replace(settings, **kw)) for name, kw in json.loads(sys.argv[1]).items()}
print(json.dumps({"routes": sorted(app_routes(app)), "doc": doc, "variants": variants}))
"""

VARIANTS = {
    "bearer": {},
    "token prefix": {"api_prefix": "Token"},
    "custom header": {"api_header": "X-API-Key"},
    "auth off": {"disable_api_auth": True},
    "metrics auth": {"metrics_auth": True},
}


def app_and_doc(model_dir, **env) -> tuple[set, dict, dict]:
    """Build the app in a fresh interpreter (blueprints register once per process) with the
    given QWEN3VL_* settings; return its routes, its served document, and the documents
    built for each of VARIANTS' settings."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3VL_")}
    full.update({"QWEN3VL_MODEL_DIR": str(model_dir), **{f"QWEN3VL_{k.upper()}": v for k, v in env.items()}})
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(VARIANTS)], env=full, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {tuple(r) for r in data["routes"]}, data["doc"], data["variants"]


@pytest.fixture(scope="module")
def default_doc(tiny_model_dir):
    return app_and_doc(tiny_model_dir)


def test_every_route_is_documented_and_the_document_validates(default_doc):
    routes, doc, _ = default_doc
    validate(doc)  # raises on an invalid OpenAPI 3 document
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes, "no routes found"
    missing = routes - documented
    assert not missing, f"routes missing from /openapi.json (describe them in api/docs.py): {sorted(missing)}"
    assert documented <= routes, f"documented but not served: {sorted(documented - routes)}"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("operationId") and op.get("responses"), (path, method)


def test_schemas_come_from_marshmallow(default_doc):
    _, doc, _ = default_doc
    schemas = doc["components"]["schemas"]
    req = schemas["ChatCompletionRequest"]
    assert req["required"] == ["messages"]
    assert req["properties"]["temperature"]["maximum"] == 2 and req["properties"]["top_p"]["exclusiveMinimum"]
    assert req["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/Message"}
    assert schemas["Message"]["properties"]["role"]["enum"] == ["system", "developer", "user", "assistant"]
    content = schemas["Message"]["properties"]["content"]["oneOf"]
    assert {"type": "string"} in content
    for name in ("ChatCompletion", "ChatCompletionChunk", "ErrorResponse", "ModelList", "Model", "Health",
                 "MediaDescribeForm", "MediaDescription"):
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


@pytest.mark.parametrize("variant,scheme", [
    ("bearer", {"type": "http", "scheme": "bearer"}),
    ("token prefix", {"type": "apiKey", "in": "header", "name": "Authorization"}),
    ("custom header", {"type": "apiKey", "in": "header", "name": "X-API-Key"}),
    ("auth off", None),
])
def test_security_scheme_follows_the_auth_settings(default_doc, variant, scheme):
    doc = default_doc[2][variant]
    validate(doc)
    schemes = doc.get("components", {}).get("securitySchemes")
    if scheme is None:
        assert not schemes and "security" not in doc
        return
    (name, got), = schemes.items()
    assert {k: got[k] for k in scheme} == scheme
    assert doc["security"] == [{name: []}]
    assert doc["paths"]["/docs"]["get"]["security"] == [] and doc["paths"]["/openapi.json"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/chat/completions"]["post"]  # the global requirement applies
    if "/metrics" in doc["paths"]:  # open unless --metrics-auth (api/metrics.py)
        assert doc["paths"]["/metrics"]["get"]["security"] == []


def test_metrics_auth_is_reflected(default_doc):
    doc = default_doc[2]["metrics auth"]
    if "/metrics" not in doc["paths"]:
        pytest.skip("no /metrics in this build")
    assert "security" not in doc["paths"]["/metrics"]["get"]
    assert "401" in doc["paths"]["/metrics"]["get"]["responses"]


def test_the_served_document_is_the_built_one(default_doc):
    assert default_doc[1] == default_doc[2]["bearer"]


def test_live_document_and_swagger_ui_without_cdn(server):
    # Open without the key (like the old service's /docs); everything else still needs it.
    r = requests.get(server.url + "/openapi.json", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    validate(doc)
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    openai_error(requests.get(server.url + "/v1/models", timeout=30), 401)

    page = requests.get(server.url + "/docs", timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and '"/openapi.json"' in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page must not load from another host"
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page.text)
    assert len(assets) >= 3
    for path in assets:
        a = requests.get(server.url + path, timeout=30)
        assert a.status_code == 200 and len(a.content) > 100, path
    assert requests.get(server.url + "/docs/swagger-ui-bundle.js", timeout=30).headers["Content-Type"].split(";")[0] \
        in ("application/javascript", "text/javascript")
    openai_error(requests.get(server.url + "/docs/../gunicorn.conf.py", timeout=30), 404)
    openai_error(requests.get(server.url + "/docs/nope.js", timeout=30), 404)


def test_docs_can_be_turned_off(tiny_model_dir):
    _, doc, _ = app_and_doc(tiny_model_dir, disable_docs="1")
    assert doc is None  # /openapi.json answers 404 (and /docs too: decided per request)
