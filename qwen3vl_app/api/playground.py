"""GET / : the browser playground, and GET /playground/<file> : its files.

Everything the page needs ships in `qwen3vl_app/static/` (plain HTML, CSS and JavaScript,
no build step, nothing from a CDN).  The page holds no secret and needs no key; the API
calls it makes carry the key the user typed, like any other client.  Its URLs are
relative, so it also works behind a reverse proxy that serves the API under a prefix.
The Content-Security-Policy lets the page run only its own scripts and talk only to this
server: model output is rendered as text nodes, and even a slip would not run a script.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

from .routedoc import route_doc

STATIC = Path(__file__).resolve().parents[1] / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

bp = Blueprint("playground", __name__)


def _secured(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
@route_doc(
    tag="playground",
    summary="The browser playground (open; its API calls carry the key)",
    operation_id="playground",
    auth=False,
    responses={200: ("HTML page", {"text/html": {"type": "string"}})},
)
def page():
    return _secured(send_from_directory(STATIC, "index.html", max_age=0))


@bp.get("/playground/<path:filename>")
@route_doc(
    tag="playground",
    summary="The playground's static files",
    operation_id="playgroundAsset",
    auth=False,
    path_examples={"filename": "app.js"},
    responses={200: ("a file of the playground", None)},
    errors=(404,),
)
def asset(filename):
    return _secured(send_from_directory(STATIC, filename, max_age=300))
