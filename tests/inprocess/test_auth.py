"""API-key auth, in-process: missing/wrong keys, prefixes, custom headers, several keys,
auth off, /metrics' own switch, and what reaches the log (masked keys only)."""

from __future__ import annotations

import logging

import openai
import pytest

from tests.support.checks import openai_error
from tests.support.live import API_KEY


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": "Bearer nope"},
        {"Authorization": API_KEY},  # `Authorization` must name its scheme
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"X-API-Key": API_KEY},  # not the configured header
    ],
)
def test_refused(inproc, headers):
    r = inproc.get("/health", headers=headers)
    err = openai_error(r, 401, "invalid_api_key")
    assert err["type"] == "authentication_error"
    assert "Authorization: Bearer <key>" in err["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("value", [f"Bearer {API_KEY}", f"bearer {API_KEY}", f"BEARER   {API_KEY}  "])
def test_prefix_is_case_insensitive_and_spaces_are_trimmed(inproc, value):
    assert inproc.get("/health", headers={"Authorization": value}).status_code == 200


def test_every_endpoint_but_docs_and_metrics_needs_the_key(inproc):
    for method, path in [
        ("GET", "/health"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/qwen3-vl-instruct"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/media/describe"),
    ]:
        openai_error(inproc.request(method, path, headers={}), 401)
    for path in ("/docs", "/openapi.json", "/metrics"):
        assert inproc.get(path, headers={}).status_code == 200, path
    assert inproc.engine.prompts == []


def test_openai_client_with_a_wrong_key(inproc):
    with pytest.raises(openai.AuthenticationError):
        inproc.openai(api_key="wrong").models.list()
    assert [m.id for m in inproc.openai().models.list().data] == ["qwen3-vl-instruct"]


def test_custom_prefix(inproc_factory):
    app = inproc_factory(api_prefix="Token")
    assert app.get("/health", headers={"Authorization": f"Token {API_KEY}"}).status_code == 200
    err = openai_error(app.get("/health", headers={"Authorization": f"Bearer {API_KEY}"}), 401)
    assert "Authorization: Token <key>" in err["message"]


def test_custom_header_takes_the_bare_key_or_the_prefixed_one(inproc_factory, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("second-key-abcdef\n\n  third-key-ghijkl  \n")
    app = inproc_factory(api_key="first-key-123456", api_header="X-API-Key", api_key_file=str(keyfile))
    for key in ("first-key-123456", "second-key-abcdef", "third-key-ghijkl", "Bearer first-key-123456"):
        assert app.get("/health", headers={"X-API-Key": key}).status_code == 200, key
    err = openai_error(app.get("/health", headers={"X-API-Key": "nope"}), 401)
    assert "'X-API-Key' header" in err["message"]
    openai_error(app.get("/health", headers={"Authorization": "Bearer first-key-123456"}), 401)


def test_utf8_key(inproc_factory):
    app = inproc_factory(api_key="clé-ünïcode-密钥")
    # Headers travel as bytes; WSGI hands them over as Latin-1.
    raw = "Bearer clé-ünïcode-密钥".encode().decode("latin-1")
    assert app.get("/health", headers={"Authorization": raw}).status_code == 200
    openai_error(app.get("/health", headers={"Authorization": "Bearer clé"}), 401)


def test_auth_off(inproc_factory):
    app = inproc_factory(api_key=None)
    assert app.get("/v1/models", headers={}).status_code == 200
    assert app.get("/health", headers={}).get_json()["api_auth_enabled"] is False
    assert app.chat([{"role": "user", "content": "hi"}], max_tokens=1).status_code == 200


def test_metrics_auth_toggle(inproc_factory):
    open_ = inproc_factory()
    assert open_.get("/metrics", headers={}).status_code == 200
    closed = inproc_factory(metrics_auth=True)
    openai_error(closed.get("/metrics", headers={}), 401)
    r = closed.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")


def test_only_masked_keys_reach_the_log(inproc_factory, caplog):
    from qwen3vl_app.api.auth import log_auth_config

    app = inproc_factory(api_key="first-key-123456")
    caplog.set_level(logging.DEBUG, logger="qwen3vl")
    log_auth_config(app.settings)
    app.chat([{"role": "user", "content": "hi"}], max_tokens=1, headers={"X-Request-Id": "masked-1"})
    app.get("/health", headers={"Authorization": "Bearer wrong-key-999999"})
    text = caplog.text
    assert "first-key-123456" not in text and "wrong-key-999999" not in text
    assert "firs…3456" in text
    line = next(r.getMessage() for r in caplog.records if "id=masked-1 " in r.getMessage())
    assert "key=firs…3456" in line


def test_old_default_key_and_auth_off_are_warned_about(tiny_model_dir, caplog):
    from qwen3vl_app.api.auth import log_auth_config
    from qwen3vl_app.settings import Settings

    caplog.set_level(logging.INFO, logger="qwen3vl")
    log_auth_config(Settings(model_dir=str(tiny_model_dir)))  # the old service's public key by default
    assert "public default API key" in caplog.text and "abc@123" not in caplog.text
    caplog.clear()
    log_auth_config(Settings(model_dir=str(tiny_model_dir), disable_api_auth=True))
    assert "DISABLED" in caplog.text


def test_request_id_echoed_or_created(inproc):
    assert (
        inproc.get("/health", headers={**inproc.headers, "X-Request-Id": "abc-123"}).headers["X-Request-Id"]
        == "abc-123"
    )
    assert inproc.get("/health").headers["X-Request-Id"].startswith("req-")
    for bad in ("has space", "x" * 129, "tab\there"):
        rid = inproc.get("/health", headers={**inproc.headers, "X-Request-Id": bad}).headers["X-Request-Id"]
        assert rid.startswith("req-"), bad
    # errors carry it too
    r = inproc.get("/health", headers={"X-Request-Id": "denied-1"})
    assert r.status_code == 401 and r.headers["X-Request-Id"] == "denied-1"
