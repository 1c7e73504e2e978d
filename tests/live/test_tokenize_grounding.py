"""/tokenize and grounding through a real server on the torch engine (tiny model), with
the official openai client: what /tokenize counts is what the chat request is billed,
image/video tokens included; grounding's output parses and maps onto the sent pixels.
The contract details are tested in-process (tests/inprocess/test_tokenize.py,
test_grounding.py)."""

from __future__ import annotations

import json

from qwen3vl_app.grounding import to_pixels
from tests.support.media_samples import data_uri, image_bytes, video_bytes

PHOTO = data_uri(image_bytes("JPEG", 240, 320), "image/jpeg")  # 320x240


def test_tokenize_counts_what_the_chat_costs(server, tmp_path):
    clip = data_uri(video_bytes(tmp_path, ".mp4", frames=30, fps=10.0, h=64, w=96), "video/mp4")
    content = [
        {"type": "image_url", "image_url": {"url": PHOTO}, "max_pixels": 128 * 128},
        {"type": "video_url", "video_url": {"url": clip}, "video_start": 1.0, "video_end": 2.5},
        {"type": "text", "text": "What happens?"},
    ]
    messages = [{"role": "user", "content": content}]
    counted = server.post("/v1/tokenize", json={"model": "qwen3-vl-instruct", "messages": messages}).json()
    image, video = counted["media"]
    assert (image["width"], image["height"]) == (320, 240)
    assert image["resized_width"] * image["resized_height"] <= 128 * 128
    assert video["frames"] == 4 and all(1.0 <= t <= 2.5 for t in video["timestamps"])  # 1.5 s: min_frames 4

    r = server.openai().chat.completions.create(model="qwen3-vl-instruct", messages=messages, max_tokens=2)
    assert r.usage.prompt_tokens == counted["count"]
    details = r.usage.prompt_tokens_details
    assert details.image_tokens == image["tokens"] == counted["image_tokens"]
    assert details.model_extra["video_tokens"] == video["tokens"] == counted["video_tokens"]

    text = server.post("/tokenize", json={"prompt": "Hello"}).json()
    assert server.post("/detokenize", json={"tokens": text["tokens"]}).json() == {"prompt": "Hello"}
    refused = server.post("/tokenize", json={"messages": messages, "mm_processor_kwargs": {"max_pixels": 10**12}})
    assert refused.status_code == 400 and "outside what this server can honour" in refused.json()["error"]["message"]


def test_grounding_on_the_torch_engine(server):
    small = data_uri(image_bytes("PNG", 90, 60), "image/png")  # 60x90
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": PHOTO}},
                {"type": "image_url", "image_url": {"url": small}},
                {"type": "text", "text": "Locate every object in both images."},
            ],
        }
    ]
    client = server.openai()
    found = 0
    for seed in range(3):
        r = client.chat.completions.create(
            model="qwen3-vl-instruct",
            messages=messages,
            max_tokens=200,
            temperature=1.0,
            seed=seed,
            extra_body={"grounding": {"type": "any", "max_detections": 2}},
        )
        msg = r.choices[0].message
        items = json.loads(msg.content)  # the grammar held the real model's output to the schema
        assert r.choices[0].finish_reason == "stop" and len(items) <= 2
        assert msg.model_extra["detections"] == to_pixels(items, [(320, 240), (60, 90)])
        found += len(items)
    assert found
