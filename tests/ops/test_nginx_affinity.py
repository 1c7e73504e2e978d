"""deploy/nginx-affinity.conf for real: a real nginx in front of two live servers (two
"boxes").  Every turn of one conversation lands on the same box, so its follow-ups reuse
the earlier turns' KV (usage.prompt_tokens_details.cached_tokens), and different
conversations spread over both boxes."""

from __future__ import annotations

import re
from contextlib import ExitStack

import pytest
import requests

from tests.conftest import API_KEY, REPO, free_port
from tests.support.nginx import NGINX, running_nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (.ci/run installs the Debian package)")


def render(backends: list[int], listen: int) -> str:
    site = (REPO / "deploy" / "nginx-affinity.conf").read_text()
    site, n1 = re.subn(r"server 127\.0\.0\.1:8899;", f"server 127.0.0.1:{backends[0]};", site)
    site, n2 = re.subn(r"server 127\.0\.0\.1:8900;", f"server 127.0.0.1:{backends[1]};", site)
    site, n3 = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", site)
    assert (n1, n2, n3) == (1, 1, 1), "deploy/nginx-affinity.conf changed shape: update render()"
    return site


@pytest.fixture(scope="module")
def boxes(server_factory, tmp_path_factory):
    """(nginx URL, {worker pid: box index}) for two single-worker servers behind nginx."""
    with ExitStack() as stack:
        servers = [stack.enter_context(server_factory(workers=1, api_key=API_KEY)) for _ in range(2)]
        pids = {}
        for i, s in enumerate(servers):
            pids[s.get("/health").json()["worker_pid"]] = i
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        site = render([s.port for s in servers], port)
        with running_nginx(tmp_path_factory.mktemp("nginx-affinity"), site, url + "/health", servers[0].headers):
            yield url, pids


def chat(url: str, messages: list, session: str) -> requests.Response:
    r = requests.post(
        url + "/v1/chat/completions",
        timeout=120,
        headers={"Authorization": f"Bearer {API_KEY}", "X-Session-Id": session},
        json={"messages": messages, "max_tokens": 8, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    return r


def test_a_conversation_stays_on_one_box_and_reuses_its_prefix(boxes):
    url, pids = boxes
    messages = [
        {"role": "system", "content": "You answer briefly. " * 30},
        {"role": "user", "content": "Name three rivers."},
    ]
    first = chat(url, messages, "conversation-a")
    box = pids[int(first.headers["X-Worker-Pid"])]
    for turn in range(2):
        messages += [
            {"role": "assistant", "content": first.json()["choices"][0]["message"]["content"]},
            {"role": "user", "content": f"And {turn + 2} more?"},
        ]
        nxt = chat(url, messages, "conversation-a")
        assert pids[int(nxt.headers["X-Worker-Pid"])] == box
        usage = nxt.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] > usage["prompt_tokens"] // 2
        first = nxt


def test_conversations_spread_over_both_boxes(boxes):
    url, pids = boxes
    seen = {
        pids[int(chat(url, [{"role": "user", "content": "hi"}], f"s-{i}").headers["X-Worker-Pid"])] for i in range(16)
    }
    assert seen == {0, 1}
