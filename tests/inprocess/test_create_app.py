"""create_app() can be called any number of times in one process; each app serves its own settings."""

from __future__ import annotations

from qwen3vl_app import create_app
from qwen3vl_app.settings import Settings
from tests.support.checks import openai_error


def test_two_apps_in_one_process_each_honour_their_settings(inproc_factory):
    a = inproc_factory(api_key="key-of-app-a-1234", metrics_auth=True)
    b = inproc_factory(api_key="key-of-app-b-5678", api_header="X-API-Key", disable_docs=True)
    assert a.app is not b.app

    # Keys and headers: each app accepts its own key, the way its settings say.
    assert a.get("/v1/models", headers={"Authorization": "Bearer key-of-app-a-1234"}).status_code == 200
    openai_error(a.get("/v1/models", headers={"Authorization": "Bearer key-of-app-b-5678"}), 401)
    assert b.get("/v1/models", headers={"X-API-Key": "key-of-app-b-5678"}).status_code == 200
    openai_error(b.get("/v1/models", headers={"X-API-Key": "key-of-app-a-1234"}), 401)
    openai_error(b.get("/v1/models", headers={"Authorization": "Bearer key-of-app-b-5678"}), 401)

    # --metrics-auth on a only.
    openai_error(a.get("/metrics", headers={}), 401)
    assert a.get("/metrics").status_code == 200
    assert b.get("/metrics", headers={}).status_code == 200

    # --disable-docs on b only.
    assert a.get("/openapi.json", headers={}).status_code == 200
    assert a.get("/docs", headers={}).status_code == 200
    openai_error(b.get("/openapi.json", headers={}), 404)
    openai_error(b.get("/docs", headers={}), 404)

    # Both generate, each with its own engine.
    for app in (a, b):
        r = app.chat([{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.status_code == 200 and r.get_json()["usage"]["completion_tokens"] == 3
        assert len(app.engine.prompts) == 1

    # The first app still behaves after the second was built.
    assert a.get("/v1/models", headers={"Authorization": "Bearer key-of-app-a-1234"}).status_code == 200


def test_create_app_from_settings_alone(tiny_model_dir):
    """The plain factory (state built from the settings) works again after other apps exist."""
    apps = [create_app(Settings(model_dir=str(tiny_model_dir), disable_api_auth=flag)) for flag in (True, False)]
    try:
        assert apps[0].test_client().get("/v1/models").status_code == 200
        openai_error(apps[1].test_client().get("/v1/models"), 401)
    finally:
        for app in apps:
            app.extensions["qwen3vl"].runner.close()
