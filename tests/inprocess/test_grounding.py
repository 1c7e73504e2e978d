"""`grounding` on chat completions, the HTTP contract (in-process, FakeEngine: its
random words are held by the real grammar, so whatever it picks must parse): the content
is a JSON array of 0-1000 detections, `message.detections` the same in pixels of each
sent image, streamed as a last delta; the refusals."""

from __future__ import annotations

import json

import pytest

from qwen3vl_app.grounding import to_pixels
from tests.support.checks import openai_error
from tests.support.fake_engine import FakeEngine
from tests.support.media_samples import data_uri, image_bytes

SIZES = [(500, 300), (80, 100)]  # (width, height) of the two images sent


def messages(n: int = 2):
    parts = [{"type": "image_url", "image_url": {"url": data_uri(image_bytes("PNG", h, w))}} for w, h in SIZES[:n]]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "Find every object; boxes in JSON."}]}]


def check_items(items: list, shapes: set[str], images: int):
    for item in items:
        keys = set(item) - {"label"}
        assert isinstance(item["label"], str) and len(item["label"]) <= 64
        if images > 1:
            assert 1 <= item.pop("image") <= images
            keys.discard("image")
        (shape,) = keys
        assert shape in shapes and all(isinstance(v, int) and 0 <= v <= 1000 for v in item[shape])


@pytest.mark.parametrize(
    "grounding,shapes,n",
    [
        (True, {"bbox_2d"}, 1),
        ("point", {"point_2d"}, 2),
        ({"type": "any", "max_detections": 3}, {"bbox_2d", "point_2d"}, 2),
    ],
)
def test_detections_follow_the_grammar_and_land_on_the_sent_pixels(inproc, grounding, shapes, n):
    found = 0
    for seed in range(12):
        if found:
            break
        r = inproc.chat(messages(n), grounding=grounding, max_tokens=400, temperature=1.0, seed=seed)
        assert r.status_code == 200, r.text
        choice = r.get_json()["choices"][0]
        items = json.loads(choice["message"]["content"])  # parses: the grammar held it
        assert choice["finish_reason"] == "stop" and len(items) <= (3 if isinstance(grounding, dict) else 50)
        assert choice["message"]["detections"] == to_pixels(items, SIZES[:n])
        check_items(items, shapes, n)
        found += len(items)
    assert found  # random weights may answer [] for a seed, not for all of them


def test_stream_ends_with_the_detections_and_the_client_reads_them(inproc):
    client = inproc.openai()
    kw = dict(model="qwen3-vl-instruct", messages=messages(), max_tokens=300, temperature=0.8, seed=7)
    body = client.chat.completions.create(extra_body={"grounding": True}, **kw)
    whole = body.choices[0].message
    chunks = list(client.chat.completions.create(stream=True, extra_body={"grounding": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    last = [c.choices[0].delta.model_extra.get("detections") for c in chunks if c.choices]
    assert text == whole.content
    assert last[-2] == whole.model_extra["detections"] == to_pixels(json.loads(text), SIZES)
    assert chunks[-1].choices[0].finish_reason == "stop"


def _complete_items(cut: str) -> list:
    """The items of an array cut short: the longest prefix ending at an item's `}` that
    parses once closed (a label may itself hold "}, {")."""
    for end in reversed([i for i, c in enumerate(cut) if c == "}"]):
        try:
            return json.loads(cut[: end + 1] + "]")
        except json.JSONDecodeError:
            continue
    return []


def test_cut_by_max_tokens_returns_the_complete_detections(inproc):
    for seed in range(12):  # a seed whose answer holds a complete item before the cut (random weights)
        r = inproc.chat(messages(1), grounding=True, max_tokens=60, temperature=1.0, seed=seed).get_json()
        r = r["choices"][0]
        content = r["message"]["content"]
        if r["finish_reason"] == "length" and _complete_items(content):
            break
    assert r["finish_reason"] == "length" and not content.endswith("]")
    complete = _complete_items(content)  # the unfinished item dropped
    assert complete and r["message"]["detections"] == to_pixels(complete, SIZES[:1])


@pytest.mark.parametrize(
    "body,param",
    [
        ({"grounding": "circle"}, "grounding"),
        ({"grounding": {"type": "bbox", "max_detections": 0}}, "grounding"),
        ({"grounding": True, "response_format": {"type": "json_object"}}, "grounding"),
        (
            {"grounding": True, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "grounding",
        ),
    ],
)
def test_refusals(inproc, body, param):
    openai_error(inproc.chat(messages(1), max_tokens=5, **body), 400, param=param)


def test_no_image_is_a_400_and_false_is_off(inproc):
    openai_error(inproc.chat([{"role": "user", "content": "hi"}], grounding=True, max_tokens=5), 400, param="grounding")
    r = inproc.chat([{"role": "user", "content": "hi"}], grounding=False, max_tokens=5).get_json()
    assert "detections" not in r["choices"][0]["message"]


def test_a_device_greedy_engine_refuses_grounding(inproc, inproc_factory, tiny_tokenizer):
    inproc.chat([{"role": "user", "content": "hi"}], max_tokens=1)  # the engine loaded: its card lists capabilities
    caps = inproc.get("/v1/models").get_json()["data"][0]["capabilities"]
    assert "grounding" in caps["parameters"] and "mm_processor_kwargs" in caps["parameters"]
    app = inproc_factory(engine=FakeEngine(tiny_tokenizer, logits=False))
    err = openai_error(app.chat(messages(1), grounding=True, max_tokens=5), 400, "unsupported_parameter", "grounding")
    assert "grounding cannot be enforced" in err["message"]
    caps = app.get("/v1/models").get_json()["data"][0]["capabilities"]
    assert "grounding" not in caps["parameters"] and "mm_processor_kwargs" in caps["parameters"]
