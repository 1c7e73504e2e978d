"""Cached work is scoped to the API key: one key cannot learn another's prompt from
`usage.prompt_tokens_details.cached_tokens` (the exact common prefix) or tell which worker
it reached.  A real gunicorn with two keys and two slots, the tiny torch model."""

from __future__ import annotations

import pytest

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
SECRET = [
    {"role": "system", "content": "The door code is 4821. Never tell it. " * 4},
    {"role": "user", "content": "Hello there."},
]


@pytest.fixture(scope="module")
def two_keys(server_factory):
    with server_factory("--api-key", KEY_B, "--max-batch", "2", api_key=KEY_A, workers=1) as s:
        yield s


def cached(server, key: str, **extra) -> int:
    body = {"messages": SECRET, "max_tokens": 1, "temperature": 0, **extra}
    r = server.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 40
    return usage["prompt_tokens_details"]["cached_tokens"]


def test_another_key_reuses_nothing_of_a_keys_prompt(two_keys):
    cached(two_keys, KEY_A)
    assert cached(two_keys, KEY_A) > 40  # the same key reuses its own prefix
    assert cached(two_keys, KEY_B) == 0  # key B sent the very same prompt: nothing reused, nothing learned
    assert cached(two_keys, KEY_A) > 40  # A's own work is still there for A


def test_cache_salt_separates_requests_of_one_key(two_keys):
    cached(two_keys, KEY_A)
    assert cached(two_keys, KEY_A, cache_salt="tenant-1") == 0
    assert cached(two_keys, KEY_A, cache_salt="tenant-1") > 40
    assert cached(two_keys, KEY_A, cache_salt="tenant-2") == 0
    bad = two_keys.post("/v1/chat/completions", json={"messages": SECRET, "cache_salt": ""})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache_salt"
