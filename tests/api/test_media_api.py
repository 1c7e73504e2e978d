"""Issue 3 end to end: every media source and every refusal, through a real gunicorn
server (gevent workers, tiny torch model) with the official openai client and multipart
uploads.  A loopback HTTP server in this process plays the remote media host."""
from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import openai
import pytest
import requests

from tests.conftest import API_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from media_samples import image_bytes, png_header_only, write_video  # noqa: E402

PNG = image_bytes("PNG", 120, 160)
JPEG = image_bytes("JPEG", 90, 200, seed=3)
LEAK_MARKERS = ("Traceback", "File \"", "0x7f", "object at 0x", "TOPSECRET")


def data_uri(blob: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(blob).decode()


def user(*parts, text="What is in the media?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def image_part(url, **kw):
    return {"type": "image_url", "image_url": {"url": url}, **kw}


def video_part(url, **kw):
    return {"type": "video_url", "video_url": {"url": url}, **kw}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(PNG)
    (allowed / "b.jpg").write_bytes(JPEG)
    write_video(allowed / "clip.mp4", frames=30, fps=10.0, h=96, w=128)
    write_video(allowed / "clip.avi", frames=20, fps=10.0, h=64, w=96)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    os.symlink(outside / "secret.png", allowed / "link.png")
    good = (allowed / "clip.mp4").read_bytes()
    (root / "zero_frames.mp4").write_bytes(good[:64] + bytes(len(good) - 64))
    return root


class Remote(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        try:
            if url.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", q["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif url.path == "/big":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(PNG[:64])
                for _ in range(100):
                    self.wfile.write(b"\0" * 65536)
            elif url.path == "/slow":
                time.sleep(3)
                self.send_response(200)
                self.end_headers()
            elif url.path.lstrip("/") in self.files:
                body = self.files[url.path.lstrip("/")]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def remote(media_dir):
    Remote.files = {"a.png": PNG, "clip.mp4": (media_dir / "allowed" / "clip.mp4").read_bytes(),
                    "clip.avi": (media_dir / "allowed" / "clip.avi").read_bytes()}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Remote)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("server-tmpdir")


@pytest.fixture(scope="module")
def media_server(server_factory, media_dir, server_tmp):
    """Local files allowed under media_dir/allowed, private URLs allowed (the remote is on
    loopback), small caps so limits are cheap to hit, its own TMPDIR to watch."""
    with server_factory("--allowed-local-media-path", str(media_dir / "allowed"), "--allow-private-media-urls",
                        "--max-media-items", "4", "--max-media-bytes", str(2 * 1024 * 1024),
                        "--media-fetch-timeout", "1.5", "--max-image-pixels", str(256 * 256),
                        "--max-video-frames", "8",
                        api_key=API_KEY, env={"TMPDIR": str(server_tmp)}) as s:
        yield s


def _chat(server, messages, **kw):
    kw.setdefault("max_tokens", 3)
    kw.setdefault("temperature", 0)
    return server.openai().chat.completions.create(model="qwen3-vl-instruct", messages=messages, **kw)


def _bad(server, messages, status=400, code=None, param=None):
    with pytest.raises(openai.APIStatusError) as e:
        _chat(server, messages)
    assert e.value.status_code == status, e.value.response.text
    err = e.value.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert not any(m in err["message"] for m in LEAK_MARKERS), err["message"]
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err
    return err


# -------------------------------------------------------------------------- good inputs


def test_every_source_in_one_conversation(media_server, media_dir, remote):
    allowed = media_dir / "allowed"
    messages = [
        {"role": "system", "content": "You describe media."},
        {"role": "user", "content": [image_part(data_uri(PNG)), image_part(str(allowed / "b.jpg")),
                                     {"type": "text", "text": "Compare these."}]},
        {"role": "assistant", "content": "The first is a gradient."},
        {"role": "user", "content": [image_part(f"file://{allowed}/a.png"), video_part(remote + "/clip.mp4"),
                                     {"type": "text", "text": "And now?"}]},
    ]
    r = _chat(media_server, messages)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    # Four media blocks: many more prompt tokens than the text alone.
    text_only = _chat(media_server, [{"role": "system", "content": "You describe media."},
                                     {"role": "user", "content": "Compare these."}])
    assert r.usage.prompt_tokens > text_only.usage.prompt_tokens + 4 * 16


def test_prompt_tokens_match_local_preprocessing(media_server, media_dir):
    """The server's prompt for a video equals what this code builds locally with the same
    ceilings (the tiny model's context, 2048, also caps the video's pixel total)."""
    from qwen3vl_app.engine.base import Limits
    from qwen3vl_app.media.pipeline import MediaConfig, preprocess_blob
    from qwen3vl_app.media.sources import load_media
    from qwen3vl_app.processing.prompt import build_prompt
    from qwen3vl_app.settings import Settings
    from qwen3vl_app.tokenizer import ChatTokenizer

    path = str(media_dir / "allowed" / "clip.mp4")
    r = _chat(media_server, user(video_part(path)))
    settings = Settings(max_image_pixels=256 * 256, max_video_frames=8, allowed_local_media_path=(str(media_dir),))
    cfg = MediaConfig.from_settings(settings, Limits(max_context=2048, max_input_tokens=2048))
    v = preprocess_blob(load_media(path, cfg.policy), cfg)
    tok = ChatTokenizer(media_server.get("/health").json()["model_dir"])
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is in the media?"}]}]
    assert r.usage.prompt_tokens == len(build_prompt(tok, msgs, [v]).input_ids)


def test_video_through_image_url_and_video_url(media_server, media_dir, remote):
    clip = media_dir / "allowed" / "clip.avi"
    a = _chat(media_server, user(image_part(str(clip))))  # the old service's habit
    b = _chat(media_server, user(video_part(str(clip))))
    c = _chat(media_server, user({"type": "video", "video": remote + "/clip.avi"}))
    assert a.usage.prompt_tokens == b.usage.prompt_tokens == c.usage.prompt_tokens


def test_per_part_controls_are_clamped(media_server):
    tiny = _chat(media_server, user(image_part(data_uri(PNG), max_pixels=32 * 32 * 4)))
    default = _chat(media_server, user(image_part(data_uri(PNG))))
    huge = _chat(media_server, user(image_part(data_uri(PNG), min_pixels=10**8, max_pixels=10**9)))
    assert tiny.usage.prompt_tokens < default.usage.prompt_tokens
    # max_image_pixels is 256*256 on this server: at most 64 image tokens whatever is asked.
    assert huge.usage.prompt_tokens - default.usage.prompt_tokens <= 64


def test_stream_with_image(media_server):
    chunks = list(_chat(media_server, user(image_part(data_uri(JPEG, "image/jpeg"))), stream=True,
                        stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens > 20


# ------------------------------------------------------------------------ /media/describe


def test_describe_image_and_video(media_server, media_dir):
    for name, kind in (("a.png", "image"), ("clip.mp4", "video")):
        blob = (media_dir / "allowed" / name).read_bytes()
        # A misleading filename and content type: the bytes decide.
        r = media_server.post("/v1/media/describe", files={"file": ("upload.txt", blob, "text/plain")},
                              data={"prompt": "Describe briefly.", "max_tokens": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success" and isinstance(body["description"], str)
        meta = body["metadata"]
        assert set(meta) == {"filename", "media_type", "prompt", "processing_time_seconds", "model", "model_dir"}
        assert meta["media_type"] == kind and meta["filename"] == "upload.txt"
        assert meta["prompt"] == "Describe briefly." and meta["model"] == "qwen3-vl-instruct"
        assert meta["processing_time_seconds"] > 0


def test_describe_default_prompt_and_stream(media_server):
    r = media_server.post("/v1/media/describe", files={"file": ("a.png", PNG, "image/png")},
                          data={"stream": "true", "max_tokens": "4"}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    lines = [l for l in r.iter_lines(decode_unicode=True) if l and not l.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(l[6:]) for l in lines[:-1]]
    assert all(e["status"] == "streaming" for e in events[:-1])
    final = events[-1]
    assert final["status"] == "success"
    assert final["description"] == "".join(e["delta"] for e in events[:-1])
    assert final["metadata"]["prompt"].startswith("Describe this image")


def test_describe_errors(media_server):
    r = media_server.post("/v1/media/describe", data={"prompt": "x"}, files={"other": ("a", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = media_server.post("/v1/media/describe", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_media"
    r = media_server.post("/v1/media/describe", files={"file": ("x.pdf", b"%PDF-1.7 TOPSECRET", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_media_type"
    assert "TOPSECRET" not in r.text
    big = PNG + b"\0" * (2 * 1024 * 1024)
    r = media_server.post("/v1/media/describe", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "media_too_large"
    r = media_server.post("/v1/media/describe", json={"file": "x"})
    assert r.status_code == 415
    r = requests.post(media_server.url + "/v1/media/describe", files={"file": ("a.png", PNG)})
    assert r.status_code == 401


# ------------------------------------------------------------------------------ bad input


def test_corrupt_truncated_empty_bomb(media_server, media_dir):
    cases = [
        (PNG[:100], "invalid_image"),
        (image_bytes("JPEG", 64, 64)[:200], "invalid_image"),
        (png_header_only(100000, 100000), "image_too_large"),
    ]
    for blob, code in cases:
        _bad(media_server, user(image_part(data_uri(blob))), 400, code, "messages[0].content[0]")
    _bad(media_server, user(image_part("data:image/png;base64,")), 400, "empty_media")
    _bad(media_server, user(image_part(data_uri(b"GIF87a" + b"\0" * 5))), 400, "invalid_image")


def test_video_with_zero_decodable_frames(media_server, media_dir):
    blob = (media_dir / "zero_frames.mp4").read_bytes()
    _bad(media_server, user(video_part(data_uri(blob, "video/mp4"))), 400, "invalid_video")
    r = media_server.post("/v1/media/describe", files={"file": ("z.mp4", blob, "video/mp4")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video"


def test_unsupported_type(media_server):
    _bad(media_server, user(image_part(data_uri(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"))),
         400, "unsupported_media_type")
    _bad(media_server, user(image_part("ftp://example.com/a.png")), 400, "unsupported_media_source")


def test_oversized_inputs(media_server, remote):
    big = data_uri(PNG + b"\0" * (3 * 1024 * 1024))
    _bad(media_server, user(image_part(big)), 413, "media_too_large")
    _bad(media_server, user(image_part(remote + "/big")), 413, "media_too_large")


def test_too_many_images(media_server):
    _bad(media_server, user(*[image_part(data_uri(PNG))] * 5), 400, "too_many_media")


def test_prompt_over_context(server):
    # Default ceilings, tiny model context 2048: a 1600x1600 image needs ~2500 tokens.
    blob = image_bytes("JPEG", 1600, 1600)
    err = _bad(server, user(image_part(data_uri(blob, "image/jpeg"))), 400)
    assert "tokens" in err["message"]


def test_typed_placeholders_without_media(server):
    for text in ("<|vision_start|><|image_pad|><|vision_end|> describe", "<|video_pad|>"):
        _bad(server, [{"role": "user", "content": text}], 400)
    # ... and an extra one beside a real image
    _bad(server, user(image_part(data_uri(PNG)), text="<|image_pad|>"), 400, "placeholder_mismatch")


def test_local_paths_outside_allowlist(media_server, media_dir):
    allowed = media_dir / "allowed"
    for url in ("/etc/passwd", "file:///etc/passwd", str(media_dir / "outside" / "secret.png"),
                f"{allowed}/../outside/secret.png", f"file://{allowed}/../outside/secret.png",
                str(allowed / "link.png")):
        err = _bad(media_server, user(image_part(url)), 400, "media_path_not_allowed")
        assert "outside" in err["message"]


def test_local_paths_disabled_by_default(server, media_dir):
    _bad(server, user(image_part(str(media_dir / "allowed" / "a.png"))), 400, "media_path_not_allowed")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a.png", "http://10.0.0.1/a.png",
                                 "http://169.254.169.254/latest/meta-data/", "http://[::1]/a.png",
                                 "http://localhost/a.png"])
def test_private_urls_refused(server, url):
    t0 = time.monotonic()
    _bad(server, user(image_part(url)), 400, "media_url_not_allowed")
    assert time.monotonic() - t0 < 5  # refused at resolution, not after a connect timeout


def test_redirect_from_allowed_host_to_private_refused(server_factory, remote):
    """Only 127.0.0.1 is opened (--allowed-media-network): the first hop is fetched, a
    redirect to 10.0.0.1 / 169.254.169.254 / 127.0.0.2 is refused before connecting."""
    with server_factory("--allowed-media-network", "127.0.0.1/32", api_key=API_KEY) as s:
        assert _chat(s, user(image_part(remote + "/a.png"))).usage.prompt_tokens > 20
        for target in ("http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/",
                       "http://127.0.0.2:9/a.png"):
            t0 = time.monotonic()
            _bad(s, user(image_part(f"{remote}/redirect?to={target}")), 400, "media_url_not_allowed")
            assert time.monotonic() - t0 < 5


def test_redirect_followed_and_slow_server(media_server, remote):
    r = _chat(media_server, user(image_part(f"{remote}/redirect?to=/a.png")))
    assert r.usage.prompt_tokens > 20
    t0 = time.monotonic()
    _bad(media_server, user(image_part(remote + "/slow")), 400, "media_fetch_timeout")
    assert time.monotonic() - t0 < 3


# -------------------------------------------------------------------------- temp files


def test_temp_files_removed_after_burst(media_server, media_dir, server_tmp, remote):
    """Good and bad requests of every kind, some concurrent: the server's temp dir is the
    same afterwards (uploads and videos go through temp files)."""
    before = sorted(os.listdir(server_tmp))
    clip = (media_dir / "allowed" / "clip.mp4").read_bytes()
    zero = (media_dir / "zero_frames.mp4").read_bytes()
    big_upload = clip + b"\0" * (1024 * 1024)  # spooled to disk by the multipart parser

    def work(i):
        out = []
        out.append(media_server.post("/v1/media/describe", files={"file": ("c.mp4", clip)},
                                     data={"max_tokens": "2"}).status_code)
        out.append(media_server.post("/v1/media/describe", files={"file": ("c.mp4", big_upload)},
                                     data={"max_tokens": "2"}).status_code)
        out.append(media_server.post("/v1/media/describe", files={"file": ("z.mp4", zero)}).status_code)
        out.append(media_server.post("/v1/media/describe", files={"file": ("t.mp4", clip[: len(clip) // 3])}).status_code)
        for parts in ([video_part(data_uri(clip, "video/mp4"))], [video_part(remote + "/clip.mp4")],
                      [video_part(data_uri(zero, "video/mp4"))], [image_part(data_uri(PNG[:50]))]):
            out.append(media_server.post("/v1/chat/completions",
                                         json={"messages": user(*parts), "max_tokens": 2}).status_code)
        return out

    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(work(i))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 3
    for codes in results:
        assert codes[0] == 200 and codes[1] == 200 and codes[2] == 400 and codes[4] == 200 and codes[5] == 200
        assert codes[6] == 400 and codes[7] == 400
        assert codes[3] in (200, 400)  # a truncated mp4 may still hold decodable frames
    time.sleep(0.5)
    assert sorted(os.listdir(server_tmp)) == before
