"""Grounding and /tokenize on the bm1684x engine (simulator) behind a real server.

On a build whose lm_head returns logits the grammar holds the simulator's output to the
detections' schema, and the detections land on the sent image's pixels; /tokenize tells
the image's cost without running the model, and a pixel budget above the compiled vision
encoder's size is a 400 that says the range.  On the published layout (lm_head returns the
token id: greedy on the device) no grammar can be enforced: grounding is a 400 before
anything runs.  Short outputs: one point at most, 24 tokens."""

from __future__ import annotations

import json
import re

import pytest

from qwen3vl_app.grounding import to_pixels
from tests.conftest import run_server
from tests.native.conftest import _build_tiny_bmodel
from tests.support.media_samples import data_uri, image_bytes

pytestmark = pytest.mark.bm1684x


def _messages(**part_options):
    image = {"type": "image_url", "image_url": {"url": data_uri(image_bytes("PNG", 96, 128))}, **part_options}
    return [{"role": "user", "content": [image, {"type": "text", "text": "Find it."}]}]


def test_grounding_and_tokenize_on_the_tpu(native_module, tiny_bmodel_dir, tmp_path):
    with run_server(tiny_bmodel_dir, tmp_path, workers=1) as s:
        counted = s.post("/tokenize", json={"messages": _messages()}).json()
        (image,) = counted["media"]
        assert (image["width"], image["height"]) == (128, 96)
        assert image["resized_width"] * image["resized_height"] <= 128 * 128  # the compiled vision size
        refused = s.post("/tokenize", json={"messages": _messages(max_pixels=256 * 256)})
        assert refused.status_code == 400 and "1024 to 16384" in refused.json()["error"]["message"]

        r = s.post(
            "/v1/chat/completions",
            timeout=600,
            json={
                "messages": _messages(),
                "max_tokens": 24,
                "seed": 1,
                "temperature": 1.0,
                "grounding": {"type": "point", "max_detections": 1},
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["prompt_tokens"] == counted["count"]
        assert body["usage"]["prompt_tokens_details"]["image_tokens"] == image["tokens"]
        message, finish = body["choices"][0]["message"], body["choices"][0]["finish_reason"]
        # what the simulator's logits chose stayed inside the grammar, token by token
        head = re.match(r'\[\]$|\[\{"point_2d": \[(\d{1,4}), (\d{1,4})\], "label": "', message["content"])
        assert head and all(int(v) <= 1000 for v in head.groups() if v is not None), message["content"]
        if finish == "stop":
            items = json.loads(message["content"])
            assert len(items) <= 1 and message["detections"] == to_pixels(items, [(128, 96)])
        else:  # a long random label ran into max_tokens: the unfinished item is not returned
            assert finish == "length" and message["detections"] == []


@pytest.mark.slow
def test_grounding_is_refused_on_a_token_id_build(native_module, tmp_path):
    published = _build_tiny_bmodel("--published", "--chunk-length", "64")  # cached: test_bm1684x_published builds it
    with run_server(published, tmp_path, workers=1) as s:
        r = s.post("/v1/chat/completions", json={"messages": _messages(), "max_tokens": 5, "grounding": True})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["code"], err["param"]) == ("unsupported_parameter", "grounding")
