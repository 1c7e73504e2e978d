"""OpenAI-compatible Qwen3-VL server: Flask app factory."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .settings import Settings
    from .state import ServerState

try:
    __version__ = version("qwen3vl-server")  # the one place it is written: pyproject.toml
except PackageNotFoundError:  # a checkout used without `pip install -e .`
    __version__ = "0+unknown"


def create_app(settings: Settings | None = None, state: ServerState | None = None) -> Flask:
    """Build the WSGI app for one worker; call it as often as you like (tests build many).
    The engine is not loaded here: the worker starts loading it after fork (gunicorn's
    post_worker_init) or on first use.  `state` lets a test serve a ready-made ServerState
    (a fake engine, say)."""
    from flask import Flask

    from . import api, metrics
    from .api import request_log
    from .api.errors import register_error_handlers
    from .settings import Settings
    from .state import ServerState

    settings = settings or Settings.from_env()
    state = state or ServerState.create(settings)
    app = Flask(__name__)
    # No redirects built from the request's Host header: werkzeug would answer `/v1//models`
    # with a 308 to http://<Host>/v1/models (an open redirect); an unknown path is a 404.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["qwen3vl"] = state
    register_error_handlers(app)
    api.register_all(app)
    request_log.install(app, state)  # request id, one log line per request, metrics, Server-Timing
    metrics.ADMISSION_LIMIT.set(settings.max_concurrent)
    return app
