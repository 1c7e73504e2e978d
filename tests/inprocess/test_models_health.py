"""GET /v1/models, /v1/models/<id> and /health, in-process."""

from __future__ import annotations

import os

import openai
import pytest

from tests.support.checks import openai_error


def test_models_list_and_retrieve(inproc):
    client = inproc.openai()
    models = client.models.list()
    assert [m.id for m in models.data] == ["qwen3-vl-instruct"]
    assert client.models.retrieve("qwen3-vl-instruct").id == "qwen3-vl-instruct"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    openai_error(inproc.get("/v1/models/gpt-4"), 404, "model_not_found", "model")


def test_model_card_lists_the_engine_and_what_it_honours(inproc):
    inproc.chat([{"role": "user", "content": "hi"}], max_tokens=1)  # the engine is loaded on first use
    card = inproc.get("/v1/models/qwen3-vl-instruct").get_json()
    assert card["engine"] == "fake" and card["max_context"] == 2048 and card["owned_by"]
    caps = card["capabilities"]
    assert caps["sampling"] is True and caps["logprobs"] is True
    assert {"temperature", "top_p", "seed", "max_tokens", "stop"} <= set(caps["parameters"])


def test_health_fields(inproc):
    h = inproc.get("/health").get_json()
    assert h["status"] == "loading" and "first request" in h["details"]  # nothing asked the engine yet
    inproc.chat([{"role": "user", "content": "hi"}], max_tokens=1)
    r = inproc.get("/health")
    h = r.get_json()
    assert r.status_code == 200
    for key in (
        "status",
        "details",
        "model",
        "model_dir",
        "max_concurrent",
        "api_auth_enabled",
        "timestamp",
        "version",
        "engine",
        "device",
        "demo",
        "worker_pid",
        "load_seconds",
        "running",
        "queued",
    ):
        assert key in h, key
    assert h["status"] == "healthy" and h["model"] == "qwen3-vl-instruct" and h["api_auth_enabled"] is True
    assert h["engine"] == "fake" and h["device"] == "fake" and h["demo"] is False
    assert h["worker_pid"] == os.getpid() and h["running"] == 0 and h["queued"] == 0
    assert h["max_concurrent"] == inproc.settings.max_concurrent
