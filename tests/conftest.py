"""Shared fixtures: the tiny model, the app in-process over a fake engine, and real
gunicorn servers on free loopback ports.  The helpers live in tests/support."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.inprocess import InProcessApp, build
from tests.support.live import API_KEY, REPO, free_port, run_server, wait_healthy  # noqa: F401  (re-exported)

NATIVE = Path(__file__).resolve().parent / "native"


def pytest_collection_modifyitems(config, items):
    """The simulator tests are slow as a whole (tests/native runs in its own pytest process,
    see the Makefile); `make test-fast` deselects them with the rest of `slow`."""
    for item in items:
        if NATIVE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from qwen3vl_app.tokenizer import ChatTokenizer

    return ChatTokenizer(tiny_model_dir)


@pytest.fixture
def inproc_factory(tiny_model_dir, tiny_tokenizer):
    """Build the app in this process over a FakeEngine: `inproc_factory(api_key=..., engine=...,
    **settings)` (api_key=None turns auth off).  Apps are closed after the test."""
    made: list[InProcessApp] = []

    def factory(api_key: str | None = API_KEY, **kw) -> InProcessApp:
        app = build(tiny_model_dir, tiny_tokenizer, api_key, **kw)
        made.append(app)
        return app

    yield factory
    for app in made:
        app.close()


@pytest.fixture
def inproc(inproc_factory) -> InProcessApp:
    """The app with default settings and auth on (key API_KEY), over a FakeEngine."""
    return inproc_factory()


@pytest.fixture
def fake_engine(tiny_tokenizer):
    from tests.support.fake_engine import FakeEngine

    return FakeEngine(tiny_tokenizer)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """Media files: see tests/support/media_host.make_media_dir."""
    from tests.support.media_host import make_media_dir

    return make_media_dir(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def remote(media_dir):
    """Base URL of a loopback HTTP server playing the remote media host."""
    from tests.support.media_host import remote_media_host

    with remote_media_host(media_dir) as url:
        yield url


@pytest.fixture(scope="session")
def server_factory(tiny_model_dir, tmp_path_factory):
    """Start a real gunicorn (gevent workers) with the tiny model: `with server_factory(...) as s:`."""

    def factory(*args, **kw):
        return run_server(kw.pop("model_dir", tiny_model_dir), tmp_path_factory.mktemp("srv"), *args, **kw)

    return factory


@pytest.fixture(scope="session")
def server(server_factory):
    """One shared live server with auth on, for tests that need a real one without special flags."""
    with server_factory(api_key=API_KEY, workers=1) as s:
        yield s
