"""Media through a real gunicorn server (gevent workers, tiny torch model): concurrent
uploads and videos, good and bad, in real workers must leave no temp file behind.  Every
source, the limits and each refusal are tested in-process, once: tests/inprocess/test_media.py
(including the same requests one at a time)."""

from __future__ import annotations

import os
import threading

import pytest

from tests.support.live import API_KEY
from tests.support.media_host import PNG
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
def media_server(server_factory, server_tmp):
    """Private URLs allowed (the remote host is on loopback), its own TMPDIR to watch."""
    with server_factory(
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
