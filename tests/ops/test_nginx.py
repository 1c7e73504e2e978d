"""deploy/nginx.conf for real: an nginx (Debian package, installed by .ci/run) on a loopback
port in front of a live gunicorn.  Streamed chunks arrive one by one through it, and
uploads larger than nginx's default 1 MiB body limit get through."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.live import API_KEY, REPO, free_port
from tests.support.live import LONG_STORY as MSG
from tests.support.nginx import NGINX, running_nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (.ci/run installs the Debian package)")


def render_site(backend_port: int, listen_port: int) -> str:
    site = (REPO / "deploy" / "nginx.conf").read_text()
    site, n1 = re.subn(r"server 127\.0\.0\.1:8899;", f"server 127.0.0.1:{backend_port};", site)
    site, n2 = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", site)
    assert n1 == 1 and n2 == 1, "deploy/nginx.conf changed shape: update render_site()"
    return site


@pytest.fixture(scope="module")
def proxied(server_factory, tmp_path_factory):
    """(gunicorn, nginx base URL)."""
    with server_factory(workers=1, api_key=API_KEY) as s:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running_nginx(tmp_path_factory.mktemp("nginx"), render_site(s.port, port), url + "/health", s.headers):
            yield s, url


def _lines_as_they_arrive(resp):
    """Lines of a streamed body, each handed over as soon as its bytes come off the socket."""
    buf = b""
    for piece in resp.iter_content(chunk_size=None):
        buf += piece
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode().rstrip("\r")


def test_stream_chunks_arrive_one_by_one_through_nginx(proxied):
    """Chunks reach the client while the generation is still running -- nginx neither buffers
    the stream nor compresses it.  Checked on the gunicorn side: when the first content chunk
    and the 50th arrive through nginx, the worker still reports the generation running."""
    s, url = proxied
    r = requests.post(
        url + "/v1/chat/completions",
        stream=True,
        timeout=120,
        headers={**s.headers, "Accept-Encoding": "gzip", "X-Request-Id": "via-nginx-1"},
        json={"messages": MSG, "max_tokens": 400, "temperature": 0, "stream": True},
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert "gzip" not in r.headers.get("Content-Encoding", "")
    assert r.headers["X-Request-Id"] == "via-nginx-1"
    content, running_at, last = 0, {}, None
    for line in _lines_as_they_arrive(r):
        if not line.startswith("data: "):
            continue
        last = line
        if '"content":"' in line and '"content":""' not in line:
            content += 1
            if content in (1, 50):
                running_at[content] = s.health()["running"]
    assert last == "data: [DONE]" and content > 50
    print(f"through nginx: {content} content chunks; running when chunk 1 / 50 arrived: {running_at}")
    assert running_at == {1: 1, 50: 1}


def _big_png(side: int = 640) -> bytes:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def test_upload_larger_than_nginx_default_limit(proxied):
    s, url = proxied
    png = _big_png()
    assert len(png) > 1024 * 1024  # nginx alone would answer 413 above 1 MiB
    r = requests.post(
        url + "/v1/media/describe",
        headers=s.headers,
        timeout=120,
        files={"file": ("noise.png", png, "image/png")},
        data={"max_tokens": "3"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["metadata"]["media_type"] == "image"
    assert body["metadata"]["filename"] == "noise.png" and body["usage"]["completion_tokens"] == 3

    # The same bytes as a data: URI inside a JSON body (~1.6 MiB).
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    r = requests.post(
        url + "/v1/chat/completions",
        headers=s.headers,
        timeout=120,
        json={
            "max_tokens": 2,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "?"}],
                }
            ],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 100  # the image's tokens are in the prompt


def test_metrics_through_nginx_from_localhost(proxied):
    s, url = proxied
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and "qwen3vl_requests_total" in r.text
