"""Media through a real gunicorn server (gevent workers, tiny torch model): every source in
one conversation with the official openai client, and concurrent uploads and videos that
must leave no temp file behind.  Each refusal and limit is tested in-process:
tests/contract/test_media.py."""

from __future__ import annotations

import os
import threading

import pytest

from tests.support.live import API_KEY
from tests.support.media_host import JPEG, PNG
from tests.support.media_samples import data_uri
from tests.support.polling import wait_for


def user(*parts, text="What is in the media?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url):
    return {"type": "video_url", "video_url": {"url": url}}


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("server-tmpdir")


@pytest.fixture(scope="module")
def media_server(server_factory, media_dir, server_tmp):
    """Local files allowed under media_dir/allowed, private URLs allowed (the remote host is
    on loopback), its own TMPDIR to watch."""
    with server_factory(
        "--allowed-local-media-path",
        str(media_dir / "allowed"),
        "--allow-private-media-urls",
        "--max-media-bytes",
        str(2 * 1024 * 1024),
        "--max-image-pixels",
        str(256 * 256),
        "--max-video-frames",
        "8",
        api_key=API_KEY,
        env={"TMPDIR": str(server_tmp)},
    ) as s:
        yield s


def test_every_source_in_one_conversation(media_server, media_dir, remote):
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
    client = media_server.openai()
    r = client.chat.completions.create(model="qwen3-vl-instruct", messages=messages, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    # Four media blocks: many more prompt tokens than the text alone.
    text_only = client.chat.completions.create(
        model="qwen3-vl-instruct",
        max_tokens=3,
        messages=[{"role": "system", "content": "You describe media."}, {"role": "user", "content": "Compare these."}],
    )
    assert r.usage.prompt_tokens > text_only.usage.prompt_tokens + 4 * 16
    chunks = list(
        client.chat.completions.create(
            model="qwen3-vl-instruct",
            messages=user(image_part(data_uri(JPEG, "image/jpeg"))),
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.prompt_tokens > 20


def test_temp_files_removed_after_burst(media_server, media_dir, server_tmp, remote):
    """Good and bad requests of every kind, three clients at once: the server's temp dir is
    the same afterwards (uploads and videos go through temp files)."""
    before = sorted(os.listdir(server_tmp))
    clip = (media_dir / "allowed" / "clip.mp4").read_bytes()
    zero = (media_dir / "zero_frames.mp4").read_bytes()
    big_upload = clip + b"\0" * (1024 * 1024)  # spooled to disk by the multipart parser

    def work():
        out = []
        for name, blob in (("c.mp4", clip), ("c.mp4", big_upload), ("z.mp4", zero), ("t.mp4", clip[: len(clip) // 3])):
            out.append(
                media_server.post(
                    "/v1/media/describe", files={"file": (name, blob)}, data={"max_tokens": "2"}
                ).status_code
            )
        for parts in (
            [video_part(data_uri(clip, "video/mp4"))],
            [video_part(remote + "/clip.mp4")],
            [video_part(data_uri(zero, "video/mp4"))],
            [image_part(data_uri(PNG[:50]))],
        ):
            out.append(
                media_server.post("/v1/chat/completions", json={"messages": user(*parts), "max_tokens": 2}).status_code
            )
        return out

    results = []
    threads = [threading.Thread(target=lambda: results.append(work())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 3
    for codes in results:
        assert codes[:3] == [200, 200, 400] and codes[4:] == [200, 200, 400, 400], codes
        assert codes[3] in (200, 400)  # a truncated mp4 may still hold decodable frames
    # Every response is complete, but a worker may still be closing the last request.
    wait_for(lambda: sorted(os.listdir(server_tmp)) == before, timeout=10, what="the temp dir back as it was")
