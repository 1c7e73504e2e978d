"""schemathesis over /openapi.json against a real server (tiny model), bounded in count and time.

Every documented operation is fuzzed with schema-valid and schema-violating inputs.  The
checks: no 5xx, every 4xx in OpenAI's error format, status codes, content types and JSON
bodies as documented, requests without the key refused.

Bounds: FUZZ_EXAMPLES cases per operation and phase (env QWEN3VL_FUZZ_EXAMPLES overrides),
the server caps generation (--max-tokens-default 4, --request-timeout 5) and a hook clamps
max_tokens to 8; media URLs that would leave the machine (http/https) are swapped for a
small data: image before sending, so the fuzzer never causes outside traffic.
"""

from __future__ import annotations

import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from qwen3vl_app.media.sources import _scheme
from tests.support.checks import ERROR_KEYS
from tests.support.live import API_KEY
from tests.support.media_samples import data_uri, png_bytes

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("QWEN3VL_FUZZ_EXAMPLES", "40"))
MAX_TOKENS = 8
SAFE_IMAGE = data_uri(png_bytes(16, 16))
STATS: dict = {"requests": 0, "by_status": {}, "seconds": 0.0}


def _safe_url(value):
    if isinstance(value, str) and _scheme(value.strip()) in ("http", "https"):
        return SAFE_IMAGE
    return value


def _tame(body):
    """Clamp generation length; keep every media URL on this machine."""
    if not isinstance(body, dict):
        return body
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    messages = body.get("messages")
    for msg in messages if isinstance(messages, list) else []:
        parts = msg.get("content") if isinstance(msg, dict) else None
        for part in parts if isinstance(parts, list) else []:
            for key in ("image_url", "video_url", "image", "video"):
                if not isinstance(part, dict) or key not in part:
                    continue
                media = part[key]
                if isinstance(media, dict) and "url" in media:
                    media["url"] = _safe_url(media["url"])
                else:
                    part[key] = _safe_url(media)
    return body


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    with server_factory("--max-tokens-default", "4", "--request-timeout", "5", api_key=API_KEY, workers=1) as s:
        yield s
        print(f"\nfuzz: {STATS['requests']} requests in {STATS['seconds']:.1f} s, by status {STATS['by_status']}")
        assert "Traceback" not in s.log(), s.log()[-3000:]


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")

    @schema.hook
    def map_body(ctx, body):
        return _tame(body)

    return schema


@schemathesis.check
def openai_error_format(ctx, response, case):
    """Every 4xx/5xx the app produces is {"error": {message, type, param, code}}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not an OpenAI error: {response.text[:300]}"
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return True


CHECKS = [
    not_a_server_error,
    openai_error_format,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


def _run_case(case, server):
    t0 = time.monotonic()
    response = case.call(headers=server.headers, timeout=60)
    STATS["seconds"] += time.monotonic() - t0
    STATS["requests"] += 1
    STATS["by_status"][response.status_code] = STATS["by_status"].get(response.status_code, 0) + 1
    case.validate_response(response, checks=CHECKS, headers=server.headers)


# (schemathesis's own pytest plugin does not run under pytest 9 yet: it reads a node
# attribute pytest removed, so the operations are driven through its Python API instead.)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_fuzz_every_operation(api_schema, fuzz_server, mode):
    failures = []
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 7, [op.label for op in operations]
    for op in operations:
        strategies = [op.as_strategy(generation_mode=mode)]
        if mode == GenerationMode.POSITIVE:
            strategies += op.get_strategies_from_examples()

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )
        def run(case):
            _run_case(case, fuzz_server)

        try:
            run()
        except Exception as e:  # keep going: report every operation's first failure together
            failures.append(f"{op.label}: {type(e).__name__}: {str(e)[:1500]}")
    assert not failures, "\n\n".join(failures)
