"""The real Flask app, built by `create_app()` in the test process over a FakeEngine.

No gunicorn and no sockets: requests go through Flask's test client, or through the
official openai client on httpx's WSGI transport.  Everything between the HTTP request and
the engine is the real code, the engine thread included: `EngineRunner` runs engine calls
in a gevent ThreadPool, and a blocking `apply` from the main greenlet lets gevent's hub
run until the OS thread is done, so no monkey-patching is needed.

What needs a real server -- streaming through sockets, clients that hang up, workers,
signals, nginx -- stays in the live tests (tests/support/live.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from qwen3vl_app import create_app
from qwen3vl_app.admission import Admission
from qwen3vl_app.engine.base import Engine
from qwen3vl_app.engine.runner import EngineRunner
from qwen3vl_app.settings import Settings
from qwen3vl_app.state import ServerState
from qwen3vl_app.tokenizer import ChatTokenizer

from .fake_engine import FakeEngine
from .live import auth_headers

BASE_URL = "http://in-process"


class InProcessApp:
    """One app, its state and a test client; `get`/`post` mirror LiveServer's."""

    def __init__(
        self,
        settings: Settings,
        tokenizer: ChatTokenizer,
        engine: FakeEngine,
        demo: bool = False,
        load_fn: Callable[[], Engine] | None = None,
    ):
        self.settings = settings
        self.engine = engine
        runner = EngineRunner(settings, load_fn or (lambda: engine))  # loaded in the engine thread on first use
        self.state = ServerState(
            settings,
            tokenizer,
            runner,
            engine.name,
            demo,
            Admission(settings.max_concurrent),
            tuple(k.encode("utf-8") for k in settings.api_keys()),
        )
        self.app = create_app(settings, self.state)
        self.client = self.app.test_client()

    @property
    def headers(self) -> dict:
        if self.settings.disable_api_auth:
            return {}
        return auth_headers(self.settings.api_keys()[0], self.settings.api_header, self.settings.api_prefix)

    def request(self, method: str, path: str, **kw):
        """One request, its body read and the response closed (as a WSGI server does: that
        is when the request log line is written and the admission slot given back)."""
        kw.setdefault("headers", self.headers)
        resp = self.client.open(path, method=method, **kw)
        resp.get_data()
        resp.close()
        return resp

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)

    def chat(self, messages, headers: dict | None = None, **body):
        """POST /v1/chat/completions with these messages and body fields (`headers` go beside the auth headers)."""
        return self.post(
            "/v1/chat/completions",
            json={"messages": messages, **body},
            headers=self.headers if headers is None else {**self.headers, **headers},
        )

    def openai(self, **kw):
        """The official client, talking to this app through httpx's WSGI transport."""
        import httpx2
        from openai import OpenAI

        http = httpx2.Client(transport=httpx2.WSGITransport(app=self.app), base_url=BASE_URL)
        kw.setdefault("api_key", "unused" if self.settings.disable_api_auth else self.settings.api_keys()[0])
        kw.setdefault("max_retries", 0)
        return OpenAI(base_url=BASE_URL + "/v1", http_client=http, **kw)

    def close(self) -> None:
        self.state.runner.close()


def build(
    model_dir,
    tokenizer: ChatTokenizer,
    api_key: str | None,
    engine: FakeEngine | None = None,
    demo: bool = False,
    load_fn: Callable[[], Engine] | None = None,
    **settings,
) -> InProcessApp:
    """An app over `engine` (a default FakeEngine when None); `load_fn` replaces the engine's
    loading (to make it fail, say); settings are Settings fields."""
    if api_key is None:
        settings.setdefault("disable_api_auth", True)
    else:
        settings.setdefault("api_key", (api_key,))
    base = Settings(model_dir=str(model_dir), max_tokens_default=16)
    return InProcessApp(
        dataclasses.replace(base, **settings), tokenizer, engine or FakeEngine(tokenizer), demo, load_fn
    )
