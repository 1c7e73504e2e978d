"""Media in chat completions and /v1/media/describe, in-process: every source, the limits
and every refusal (OpenAI-format 4xx naming the bad part, no leaked content).  The media
pipeline is the real one; only the engine is the FakeEngine, which records the vision
inputs it was given."""

from __future__ import annotations

import io
import time

import pytest

from tests.support.checks import openai_error
from tests.support.media_host import JPEG, PNG
from tests.support.media_samples import data_uri, image_bytes, png_header_only

CHAT = "/v1/chat/completions"


def user(*parts, text="What is in the media?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def image_part(url, **kw):
    return {"type": "image_url", "image_url": {"url": url}, **kw}


def video_part(url, **kw):
    return {"type": "video_url", "video_url": {"url": url}, **kw}


def upload(blob: bytes, name: str = "upload.bin", mime: str = "application/octet-stream"):
    return (io.BytesIO(blob), name, mime)


@pytest.fixture
def media_app(inproc_factory, media_dir):
    """Local files allowed under media_dir/allowed, private URLs allowed (the remote host is
    on loopback), small caps so limits are cheap to hit."""
    return inproc_factory(
        allowed_local_media_path=(str(media_dir / "allowed"),),
        allow_private_media_urls=True,
        max_media_items=4,
        max_media_bytes=2 * 1024 * 1024,
        media_fetch_timeout=1.5,
        max_image_pixels=256 * 256,
        max_video_frames=8,
    )


def ok(app, messages, **body):
    body.setdefault("max_tokens", 3)
    r = app.chat(messages, **body)
    assert r.status_code == 200, r.text
    return r.get_json()


def bad(app, messages, status=400, code=None, param=None):
    return openai_error(app.chat(messages, max_tokens=3), status, code, param)


# -------------------------------------------------------------------------- good inputs


def test_every_source_in_one_conversation(media_app, media_dir, remote):
    allowed = media_dir / "allowed"
    messages = [
        {"role": "system", "content": "You describe media."},
        {
            "role": "user",
            "content": [
                image_part(data_uri(PNG)),
                image_part(str(allowed / "b.jpg")),
                {"type": "text", "text": "Compare these."},
            ],
        },
        {"role": "assistant", "content": "The first is a gradient."},
        {
            "role": "user",
            "content": [
                image_part(f"file://{allowed}/a.png"),
                video_part(remote + "/clip.mp4"),
                {"type": "text", "text": "And now?"},
            ],
        },
    ]
    r = ok(media_app, messages)
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 3
    vision = media_app.engine.prompts[-1].vision
    assert [v.kind for v in vision] == ["image", "image", "image", "video"]
    media_tokens = sum(v.num_tokens for v in vision)
    text_only = ok(
        media_app, [{"role": "system", "content": "You describe media."}, {"role": "user", "content": "Compare these."}]
    )
    assert r["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"] + media_tokens


def test_prompt_tokens_match_local_preprocessing(media_app, media_dir, tiny_tokenizer):
    """The server's prompt for a video equals what this code builds locally with the same ceilings."""
    from qwen3vl_app.engine.base import Limits
    from qwen3vl_app.media.pipeline import MediaConfig, preprocess_blob
    from qwen3vl_app.media.sources import load_media
    from qwen3vl_app.prompt.template import build_prompt
    from qwen3vl_app.settings import Settings

    path = str(media_dir / "allowed" / "clip.mp4")
    r = ok(media_app, user(video_part(path)))
    settings = Settings(max_image_pixels=256 * 256, max_video_frames=8, allowed_local_media_path=(str(media_dir),))
    cfg = MediaConfig.from_settings(settings, Limits(max_context=2048, max_input_tokens=2048))
    v = preprocess_blob(load_media(path, cfg.policy), cfg)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is in the media?"}]}]
    local = build_prompt(tiny_tokenizer, msgs, [v])
    assert r["usage"]["prompt_tokens"] == len(local.input_ids)
    served = media_app.engine.prompts[-1]
    assert served.input_ids == local.input_ids and (served.position_ids == local.position_ids).all()
    assert (served.vision[0].pixel_values == v.pixel_values).all()


def test_video_through_image_url_and_video_url(media_app, media_dir, remote):
    clip = media_dir / "allowed" / "clip.avi"
    a = ok(media_app, user(image_part(str(clip))))  # the old service's habit
    b = ok(media_app, user(video_part(str(clip))))
    c = ok(media_app, user({"type": "video", "video": remote + "/clip.avi"}))
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"] == c["usage"]["prompt_tokens"]
    assert all(p.vision[0].kind == "video" for p in media_app.engine.prompts)


def test_per_part_controls_within_the_range_apply_and_outside_are_refused(media_app):
    tiny = ok(media_app, user(image_part(data_uri(PNG), max_pixels=32 * 32 * 4)))
    default = ok(media_app, user(image_part(data_uri(PNG))))
    assert tiny["usage"]["prompt_tokens"] < default["usage"]["prompt_tokens"]
    # max_image_pixels is 256*256 here: a larger budget is not silently cut to it
    err = bad(media_app, user(image_part(data_uri(PNG), min_pixels=10**8, max_pixels=10**9)), 400, "invalid_value")
    assert "1024 to 65536" in err["message"] and err["param"] == "messages[0].content[0]"


def test_stream_with_image(media_app):
    chunks = list(
        media_app.openai().chat.completions.create(
            model="qwen3-vl-instruct",
            messages=user(image_part(data_uri(JPEG, "image/jpeg"))),
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.prompt_tokens > 20


# ------------------------------------------------------------------------ /media/describe


def test_describe_image_and_video(media_app, media_dir):
    for name, kind in (("a.png", "image"), ("clip.mp4", "video")):
        blob = (media_dir / "allowed" / name).read_bytes()
        # A misleading filename and content type: the bytes decide.
        r = media_app.post(
            "/v1/media/describe",
            data={"file": upload(blob, "upload.txt", "text/plain"), "prompt": "Describe briefly.", "max_tokens": "3"},
        )
        assert r.status_code == 200, r.text
        body = r.get_json()
        assert body["status"] == "success" and isinstance(body["description"], str)
        assert body["usage"]["completion_tokens"] == 3
        meta = body["metadata"]
        assert set(meta) == {"filename", "media_type", "prompt", "processing_time_seconds", "model", "model_dir"}
        assert meta["media_type"] == kind and meta["filename"] == "upload.txt"
        assert meta["prompt"] == "Describe briefly." and meta["model"] == "qwen3-vl-instruct"
        assert meta["processing_time_seconds"] > 0
        assert media_app.engine.prompts[-1].vision[0].kind == kind


def test_describe_default_prompt_and_stream(media_app):
    from tests.support.sse import sse_lines

    r = media_app.post(
        "/v1/media/describe", data={"file": upload(PNG, "a.png", "image/png"), "stream": "true", "max_tokens": "4"}
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    lines = [line for line in sse_lines(r) if not line.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    import json

    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["status"] == "streaming" for e in events[:-1])
    final = events[-1]
    assert final["status"] == "success" and final["finish_reason"] == "length"
    assert final["description"] == "".join(e["delta"] for e in events[:-1])
    assert final["metadata"]["prompt"].startswith("Describe this image")


def test_describe_form_fields(media_app):
    def describe(**form):
        return media_app.post("/v1/media/describe", data={"file": upload(PNG, "a.png"), **form})

    assert describe(max_tokens="2").get_json()["usage"]["completion_tokens"] == 2
    openai_error(describe(max_tokens="many"), 400, "invalid_value", "max_tokens")
    openai_error(describe(max_tokens="0"), 400, "invalid_value", "max_tokens")
    openai_error(describe(temperature="3"), 400, "invalid_value", "temperature")


def test_describe_errors(media_app):
    def describe(**kw):
        return media_app.post("/v1/media/describe", **kw)

    openai_error(describe(data={"prompt": "x", "other": upload(b"x", "a")}), 400, "missing_file", "file")
    openai_error(describe(data={"file": upload(b"", "empty.png", "image/png")}), 400, "empty_media")
    r = describe(data={"file": upload(b"%PDF-1.7 TOPSECRET", "x.pdf", "image/png")})
    openai_error(r, 400, "unsupported_media_type")
    assert "TOPSECRET" not in r.text
    big = PNG + b"\0" * (2 * 1024 * 1024)
    openai_error(describe(data={"file": upload(big, "big.png", "image/png")}), 413, "media_too_large")
    openai_error(describe(json={"file": "x"}), 415, "unsupported_media_type")
    openai_error(describe(data={"file": upload(PNG, "a.png")}, headers={}), 401)
    assert media_app.engine.prompts == []


# ------------------------------------------------------------------------------ bad input


def test_corrupt_truncated_empty_bomb(media_app):
    for blob, code in [
        (PNG[:100], "invalid_image"),
        (image_bytes("JPEG", 64, 64)[:200], "invalid_image"),
        (png_header_only(100000, 100000), "image_too_large"),
    ]:
        bad(media_app, user(image_part(data_uri(blob))), 400, code, "messages[0].content[0]")
    bad(media_app, user(image_part("data:image/png;base64,")), 400, "empty_media")
    bad(media_app, user(image_part(data_uri(b"GIF87a" + b"\0" * 5))), 400, "invalid_image")
    bad(media_app, user(image_part("data:image/png;base64,@@not-base64@@")), 400, "invalid_data_uri")
    assert media_app.engine.prompts == []


def test_the_param_names_the_bad_part(media_app):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "and"}, image_part(data_uri(PNG)), image_part(data_uri(PNG[:100]))],
        },
    ]
    bad(media_app, messages, 400, "invalid_image", "messages[2].content[2]")


def test_video_with_zero_decodable_frames(media_app, media_dir):
    blob = (media_dir / "zero_frames.mp4").read_bytes()
    bad(media_app, user(video_part(data_uri(blob, "video/mp4"))), 400, "invalid_video")
    r = media_app.post("/v1/media/describe", data={"file": upload(blob, "z.mp4", "video/mp4")})
    openai_error(r, 400, "invalid_video")


def test_unsupported_type(media_app):
    svg = data_uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")
    bad(media_app, user(image_part(svg)), 400, "unsupported_media_type")
    bad(media_app, user(image_part("ftp://example.com/a.png")), 400, "unsupported_media_source")


def test_oversized_inputs(media_app, remote):
    bad(media_app, user(image_part(data_uri(PNG + b"\0" * (3 * 1024 * 1024)))), 413, "media_too_large")
    bad(media_app, user(image_part(remote + "/big")), 413, "media_too_large")


def test_too_many_images(media_app):
    bad(media_app, user(*[image_part(data_uri(PNG))] * 5), 400, "too_many_media")


def test_prompt_over_context(inproc):
    # Default ceilings, context 2048: a 1600x1600 image needs ~2500 tokens.
    err = bad(inproc, user(image_part(data_uri(image_bytes("JPEG", 1600, 1600), "image/jpeg"))), 400)
    assert "tokens" in err["message"]


def test_typed_placeholders_without_media(inproc):
    for text in ("<|vision_start|><|image_pad|><|vision_end|> describe", "<|video_pad|>"):
        bad(inproc, [{"role": "user", "content": text}], 400)
    # ... and an extra one beside a real image
    bad(inproc, user(image_part(data_uri(PNG)), text="<|image_pad|>"), 400, "placeholder_mismatch")


def test_local_paths_outside_allowlist(media_app, media_dir):
    allowed = media_dir / "allowed"
    for url in (
        "/etc/passwd",
        "file:///etc/passwd",
        str(media_dir / "outside" / "secret.png"),
        f"{allowed}/../outside/secret.png",
        f"file://{allowed}/../outside/secret.png",
        str(allowed / "link.png"),
    ):
        err = bad(media_app, user(image_part(url)), 400, "media_path_not_allowed")
        assert "outside" in err["message"]


def test_local_paths_disabled_by_default(inproc, media_dir):
    bad(inproc, user(image_part(str(media_dir / "allowed" / "a.png"))), 400, "media_path_not_allowed")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.png",
        "http://10.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.png",
        "http://localhost/a.png",
    ],
)
def test_private_urls_refused(inproc, url):
    # Refused when the name resolves, before any connection (10.0.0.1 would hang until a timeout).
    bad(inproc, user(image_part(url)), 400, "media_url_not_allowed")


def test_redirect_from_allowed_host_to_private_refused(inproc_factory, remote):
    """Only 127.0.0.1 is opened (--allowed-media-network): the first hop is fetched, a
    redirect to 10.0.0.1 / 169.254.169.254 / 127.0.0.2 is refused before connecting."""
    app = inproc_factory(allowed_media_network=("127.0.0.1/32",))
    assert ok(app, user(image_part(remote + "/a.png")))["usage"]["prompt_tokens"] > 20
    for target in ("http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:9/a.png"):
        bad(app, user(image_part(f"{remote}/redirect?to={target}")), 400, "media_url_not_allowed")


def test_redirect_followed_and_slow_server(media_app, remote):
    assert ok(media_app, user(image_part(f"{remote}/redirect?to=/a.png")))["usage"]["prompt_tokens"] > 20
    t0 = time.monotonic()
    bad(media_app, user(image_part(remote + "/slow")), 400, "media_fetch_timeout")
    print(f"slow media host given up after {time.monotonic() - t0:.2f} s (--media-fetch-timeout 1.5)")


def test_no_temp_file_left_behind(media_app, media_dir, remote, tmp_path, monkeypatch):
    """Uploads and videos go through temp files: after good and bad requests of every kind
    the temp dir is as it was.  (Concurrent requests: the live burst test.)"""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    clip = (media_dir / "allowed" / "clip.mp4").read_bytes()
    zero = (media_dir / "zero_frames.mp4").read_bytes()
    codes = []
    for blob in (clip, clip + b"\0" * (1024 * 1024), zero, clip[: len(clip) // 3]):  # the 2nd spools to disk
        codes.append(
            media_app.post("/v1/media/describe", data={"file": upload(blob, "c.mp4"), "max_tokens": "2"}).status_code
        )
    for parts in (
        [video_part(data_uri(clip, "video/mp4"))],
        [video_part(remote + "/clip.mp4")],
        [video_part(data_uri(zero, "video/mp4"))],
        [image_part(data_uri(PNG[:50]))],
    ):
        codes.append(media_app.chat(user(*parts), max_tokens=2).status_code)
    assert codes[:3] == [200, 200, 400] and codes[4:] == [200, 200, 400, 400], codes
    assert codes[3] in (200, 400)  # a truncated mp4 may still hold decodable frames
    assert list(tmp_path.iterdir()) == []
