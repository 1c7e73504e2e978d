"""POST /tokenize and /detokenize (vLLM's shapes, also under /v1/), the usage split into
image and video tokens, and the vision controls (mm_processor_kwargs, per-part fields,
video_start / video_end) with their 400s.  In-process over the FakeEngine: the media
pipeline, the chat template and the vision expansion are the real ones; what /tokenize
counts is compared with the prompt the engine was handed for the same chat request."""

from __future__ import annotations

import pytest

from qwen3vl_app.engine.base import Limits
from qwen3vl_app.processing.vision import smart_resize
from tests.support.checks import openai_error
from tests.support.fake_engine import FakeEngine
from tests.support.media_samples import data_uri, image_bytes, video_bytes


def image_part(url, **kw):
    return {"type": "image_url", "image_url": {"url": url}, **kw}


def video_part(url, **kw):
    return {"type": "video_url", "video_url": {"url": url}, **kw}


def user(*parts, text="Describe."):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture
def app(inproc_factory):
    return inproc_factory(max_image_pixels=256 * 256, max_video_frames=8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """4 s at 10 fps, 96x128."""
    return data_uri(video_bytes(tmp_path_factory.mktemp("v"), ".mp4", frames=40, fps=10.0, h=96, w=128), "video/mp4")


PHOTO = image_bytes("PNG", 300, 500)  # h=300, w=500


def tokenize(app, path="/tokenize", **body):
    r = app.post(path, json=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def test_chat_with_image_and_video_counts_what_the_engine_runs(app, clip):
    messages = user(image_part(data_uri(PHOTO)), video_part(clip))
    out = tokenize(app, model="qwen3-vl-instruct", messages=messages)
    assert app.engine.prompts == []  # nothing ran
    chat = app.chat(messages, max_tokens=2).get_json()
    ran = app.engine.prompts[-1]
    assert out["tokens"] == ran.input_ids and out["count"] == len(ran.input_ids) == chat["usage"]["prompt_tokens"]
    assert out["max_model_len"] == 2048 and out["max_prompt_tokens"] == 2047 and out["token_strs"] is None

    image, video = out["media"]
    rh, rw = smart_resize(300, 500, 32, 65_536, 256 * 256)  # --min-image-pixels default, --max-image-pixels
    assert image == {
        "index": 0,
        "param": "messages[0].content[0]",
        "type": "image",
        "tokens": (rh // 32) * (rw // 32),
        "width": 500,
        "height": 300,
        "resized_width": rw,
        "resized_height": rh,
        "grid_thw": [1, rh // 16, rw // 16],
    }
    assert (video["type"], video["width"], video["height"], video["param"]) == (
        "video",
        128,
        96,
        "messages[0].content[1]",
    )
    assert video["frames"] == 8  # 4 s at the default 2 fps, within --max-video-frames 8
    assert video["grid_thw"][0] == 4 and len(video["timestamps"]) == 4
    t, h, w = video["grid_thw"]
    assert video["tokens"] == t * h * w // 4 and (video["resized_width"], video["resized_height"]) == (w * 16, h * 16)
    assert ran.vision[1].grid_thw == tuple(video["grid_thw"])

    # the split, the same in /tokenize and in the reply's usage
    assert out["image_tokens"] == image["tokens"] and out["video_tokens"] == video["tokens"]
    details = chat["usage"]["prompt_tokens_details"]
    assert (details["image_tokens"], details["video_tokens"]) == (image["tokens"], video["tokens"])
    assert out["tokens"].count(151655) == image["tokens"] and out["tokens"].count(151656) == video["tokens"]


def test_usage_split_in_streams_and_text_only(app):
    chunks = list(
        app.openai().chat.completions.create(
            model="qwen3-vl-instruct",
            messages=user(image_part(data_uri(PHOTO))),
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    details = chunks[-1].usage.prompt_tokens_details
    assert details.image_tokens > 0 and details.model_extra["video_tokens"] == 0  # image_tokens: OpenAI's own field
    text = app.chat([{"role": "user", "content": "hi"}], max_tokens=2).get_json()["usage"]["prompt_tokens_details"]
    assert text == {"cached_tokens": 0, "image_tokens": 0, "video_tokens": 0}


def test_raw_prompt_v1_path_token_strs_and_detokenize(app, tiny_tokenizer):
    out = tokenize(app, "/v1/tokenize", prompt="Hello world, <|im_start|>", return_token_strs=True)
    assert out["tokens"] == tiny_tokenizer.encode("Hello world, <|im_start|>")
    assert "".join(out["token_strs"]) == "Hello world, <|im_start|>" and out["media"] == []
    for path in ("/detokenize", "/v1/detokenize"):
        r = app.post(path, json={"model": "qwen3-vl-instruct", "tokens": out["tokens"]})
        assert r.status_code == 200 and r.get_json() == {"prompt": "Hello world, <|im_start|>"}


def test_refusals(app, inproc_factory):
    openai_error(app.post("/tokenize", json={"prompt": "a", "messages": [{"role": "user", "content": "b"}]}), 400)
    openai_error(app.post("/tokenize", json={}), 400)
    no_prompt = {"messages": [{"role": "user", "content": "b"}], "add_generation_prompt": False}
    openai_error(app.post("/tokenize", json=no_prompt), 400, param="add_generation_prompt")
    openai_error(app.post("/tokenize", json={"model": "gpt-4", "prompt": "a"}), 404, "model_not_found")
    openai_error(app.post("/detokenize", json={"tokens": [10**9]}), 400, "invalid_value", "tokens")
    openai_error(app.post("/detokenize", json={"tokens": ["a"]}), 400)
    openai_error(app.post("/tokenize", json={"prompt": "a"}, headers={}), 401)
    openai_error(app.post("/v1/detokenize", json={"tokens": [1]}, headers={}), 401)


def test_prompt_too_long_is_the_usual_overflow(inproc_factory, tiny_tokenizer):
    app = inproc_factory(engine=FakeEngine(tiny_tokenizer, max_context=32))
    err = openai_error(app.post("/tokenize", json={"prompt": "word " * 100}), 400, "context_length_exceeded")
    assert "maximum context length is 31 tokens" in err["message"]


# ------------------------------------------------------------------ vision controls


def media_of(app, messages, **body):
    return tokenize(app, messages=messages, **body)["media"]


def test_request_level_kwargs_and_per_part_wins(app):
    img = data_uri(PHOTO)
    default = media_of(app, user(image_part(img)))[0]
    small = media_of(app, user(image_part(img)), mm_processor_kwargs={"max_pixels": 64 * 64})[0]
    assert (
        small["resized_width"] * small["resized_height"]
        <= 64 * 64
        < default["resized_width"] * default["resized_height"]
    )
    both = media_of(
        app, user(image_part(img), image_part(img, max_pixels=128 * 128)), mm_processor_kwargs={"max_pixels": 64 * 64}
    )
    assert both[0]["tokens"] == small["tokens"] and both[1]["tokens"] > small["tokens"]
    rh, rw = smart_resize(300, 500, 32, 200 * 200, 256 * 256)
    big = media_of(app, user(image_part(img, min_pixels=200 * 200)))[0]
    assert (big["resized_height"], big["resized_width"]) == (rh, rw)


def test_video_controls_and_clip(app, clip):
    full = media_of(app, user(video_part(clip)))[0]
    few = media_of(app, user(video_part(clip)), mm_processor_kwargs={"max_frames": 4})[0]
    assert full["frames"] == 8 and few["frames"] == 4
    slow = media_of(app, user(video_part(clip, fps=1.0)))[0]
    assert slow["frames"] == 4  # 4 s at 1 fps; min_frames is 4
    cut = media_of(app, user(video_part(clip, video_start=1.0, video_end=3.0)))[0]
    assert cut["frames"] == 4  # 2 s at 2 fps
    assert all(1.0 <= t <= 3.0 for t in cut["timestamps"]) and cut["timestamps"][0] > full["timestamps"][0]
    capped = media_of(app, user(video_part(clip)), mm_processor_kwargs={"total_pixels": 4 * 32 * 32})[0]
    assert capped["tokens"] <= 4 < full["tokens"]
    wide = media_of(app, user(video_part(clip, max_pixels=256 * 256, min_pixels=200 * 200)))[0]
    assert wide["resized_width"] * wide["resized_height"] >= 200 * 200


@pytest.mark.parametrize(
    "where,kw,says",
    [
        ("request", {"max_pixels": 10**9}, "1024 to 65536"),
        ("part", {"max_pixels": 500}, "1024 to 65536"),
        ("part", {"min_pixels": 70_000}, "1 to 65536"),
        ("request", {"max_frames": 100}, "2 to 8"),
        ("part", {"total_pixels": 10**12}, "total_pixels"),
    ],
)
def test_a_budget_the_server_cannot_honour_is_a_400_with_the_range(app, clip, where, kw, says):
    part = video_part(clip) if "frames" in str(kw) or "total" in str(kw) else image_part(data_uri(PHOTO))
    body = {"mm_processor_kwargs": kw} if where == "request" else {}
    messages = user({**part, **kw} if where == "part" else part)
    for path, extra in (("/tokenize", {}), ("/v1/chat/completions", {"max_tokens": 2})):
        err = openai_error(app.post(path, json={"messages": messages, **body, **extra}), 400, "invalid_value")
        assert says in err["message"] and err["param"] == "messages[0].content[0]", err


def test_the_compiled_vision_size_is_the_ceiling(inproc_factory, tiny_tokenizer):
    engine = FakeEngine(tiny_tokenizer)
    engine.limits = Limits(max_context=2048, max_input_tokens=2048, max_pixels=128 * 128)
    app = inproc_factory(engine=engine)
    err = openai_error(
        app.post("/tokenize", json={"messages": user(image_part(data_uri(PHOTO), max_pixels=256 * 256))}), 400
    )
    assert "1024 to 16384" in err["message"]
    # detail: low (512x512) is the server's own cap, not the client's: it only lowers
    low = media_of(app, user({"type": "image_url", "image_url": {"url": data_uri(PHOTO), "detail": "low"}}))[0]
    assert low["resized_width"] * low["resized_height"] <= 128 * 128


@pytest.mark.parametrize(
    "body",
    [
        {"mm_processor_kwargs": {"do_resize": False}},
        {"mm_processor_kwargs": {"video_start": 3, "video_end": 1}},
        {"mm_processor_kwargs": {"fps": 0}},
    ],
)
def test_bad_kwargs_are_400s(app, body):
    openai_error(app.post("/tokenize", json={"messages": user(image_part(data_uri(PHOTO))), **body}), 400)


def test_a_clip_past_the_end_is_a_400(app, clip):
    err = openai_error(app.post("/tokenize", json={"messages": user(video_part(clip, video_start=9.0))}), 400)
    assert "past the end" in err["message"]
