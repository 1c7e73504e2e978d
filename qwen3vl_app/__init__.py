"""OpenAI-compatible Qwen3-VL server: Flask app factory."""
from __future__ import annotations

__version__ = "0.1.0"


def create_app(settings=None):
    """Build the WSGI app for one worker.  The engine is not loaded here: the worker
    starts loading it after fork (gunicorn's post_worker_init) or on first use."""
    from flask import Flask

    from . import api, request_log
    from .admission import Admission
    from .auth import build_auth
    from .errors import register_error_handlers
    from .settings import Settings
    from .state import ServerState

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False
    state = ServerState.create(settings)
    state.admission = Admission.from_env(settings.max_concurrent)
    app.extensions["qwen3vl"] = state
    auth = build_auth(settings)
    register_error_handlers(app)
    api.register_all(app, auth)
    request_log.install(app, state)  # request id, one log line per request, metrics, Server-Timing
    return app
