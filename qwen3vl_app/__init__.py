"""OpenAI-compatible Qwen3-VL server: Flask app factory."""
from __future__ import annotations

__version__ = "0.1.0"


def create_app(settings=None):
    """Build the WSGI app for one worker.  The engine is not loaded here: the worker
    starts loading it after fork (gunicorn's post_worker_init) or on first use."""
    import logging
    import os
    import time
    import uuid

    from flask import Flask, g, request

    from . import api
    from .auth import build_auth
    from .errors import register_error_handlers
    from .settings import Settings
    from .state import ServerState

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False
    state = ServerState.create(settings)
    app.extensions["qwen3vl"] = state
    auth = build_auth(settings)
    register_error_handlers(app)
    api.register_all(app, auth)
    access = logging.getLogger("qwen3vl.request")

    @app.before_request
    def _request_id():
        rid = request.headers.get("X-Request-Id", "")
        g.request_id = rid if 0 < len(rid) <= 128 and rid.isprintable() else f"req-{uuid.uuid4().hex}"
        g.started = time.monotonic()

    @app.after_request
    def _stamp(resp):
        resp.headers["X-Request-Id"] = g.get("request_id", "-")
        resp.headers["X-Worker-Pid"] = str(os.getpid())
        if state.demo:
            resp.headers["X-Qwen3VL-Demo"] = "random-weights"
        access.info("%s %s %s %d %.3fs key=%s", g.get("request_id", "-"), request.method, request.path,
                    resp.status_code, time.monotonic() - g.get("started", time.monotonic()), g.get("key_id", "-"))
        return resp

    return app
