"""The playground at `/` in a real browser (Debian's chromium) against a real server.

The model is the tiny random-weight demo: its words are nonsense, but every figure on the
page (tokens, time to first token, speed) is the server's real one.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from html.parser import HTMLParser

import pytest
import requests

from tests.conftest import API_KEY, free_port
from tests.support.nginx import NGINX, running_nginx

from .conftest import set_key

STATS = re.compile(
    r"TTFT (\d+\.\d\d) s · ([\d.]+) tok/s · (\d+) prompt tokens(?: \(\d+ cached\))? · (\d+) completion tokens"
)


def png_bytes(size=(96, 64)) -> bytes:
    from PIL import Image

    img = Image.new("RGB", size)
    img.putdata([((x * 5) % 256, (y * 7) % 256, 128) for y in range(size[1]) for x in range(size[0])])
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def send(page, text: str, max_tokens: int | None = None) -> None:
    if max_tokens:
        page.fill("#max-tokens", str(max_tokens))
        page.dispatch_event("#max-tokens", "change")
    page.fill("#prompt", text)
    page.click("#send")


def answer_state(page) -> str | None:
    return page.evaluate(
        "() => { const m = [...document.querySelectorAll('.message.assistant')].pop();"
        " return m ? m.dataset.state : null; }"
    )


def wait_answer(page, *states: str, timeout: float = 90_000) -> None:
    page.wait_for_function(
        "(s) => { const m = [...document.querySelectorAll('.message.assistant')].pop();"
        " return m && s.includes(m.dataset.state); }",
        arg=list(states),
        timeout=timeout,
    )


def last(page, selector: str) -> str:
    return page.locator(f".message.assistant >> nth=-1 >> {selector}").inner_text()


def running(server) -> int:
    return server.get("/health").json()["running"]


def wait_idle(server, timeout: float = 15) -> float:
    t0 = time.monotonic()
    while running(server):
        assert time.monotonic() - t0 < timeout, "the server still runs a generation"
        time.sleep(0.05)
    return time.monotonic() - t0


def metric(server, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text  # open without the key by default
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


def server_prompt_tokens(server, content) -> int:
    r = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "max_tokens": 1})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


# ---------------------------------------------------------------------------- the page


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_page_is_open_self_contained_and_relative(play_server):
    r = requests.get(play_server.url + "/", timeout=30)  # no key: the page holds no secret
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    parser = _Refs()
    parser.feed(r.text)
    assert parser.refs
    for ref in parser.refs:
        if ref.startswith("data:"):
            continue
        assert not ref.startswith(("/", "http:", "https:")), f"{ref}: not relative (breaks behind a proxy prefix)"
        asset = requests.get(f"{play_server.url}/{ref}", timeout=30)
        assert asset.status_code == 200, ref
        text = asset.text.replace('"http://www.w3.org/2000/svg"', "")  # an XML namespace name, never fetched
        assert "http://" not in text and "cdn" not in text.lower(), f"{ref} loads something from outside"
    missing = requests.get(play_server.url + "/playground/../gunicorn.conf.py", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"]


def test_send_streams_text_and_shows_the_figures(page, play_server, artifacts):
    send(page, "Hello there", max_tokens=300)
    lengths = set()
    deadline = time.monotonic() + 60
    while answer_state(page) == "streaming" and time.monotonic() < deadline:
        lengths.add(len(last(page, ".content")))
        time.sleep(0.05)
    wait_answer(page, "done")
    assert len({n for n in lengths if n}) >= 3, f"text did not arrive piece by piece: {sorted(lengths)}"
    stats = STATS.search(last(page, ".stats"))
    assert stats, last(page, ".stats")
    ttft, speed, prompt, completion = float(stats[1]), float(stats[2]), int(stats[3]), int(stats[4])
    assert completion == 300 and "finish: length" in last(page, ".stats")
    assert prompt == server_prompt_tokens(play_server, "Hello there")  # from the stream's usage chunk
    assert 0 < ttft < 30 and speed > 0
    print(f"playground figures: TTFT {ttft:.2f} s, {speed:.1f} tok/s, {prompt} prompt + {completion} completion tokens")
    page.screenshot(path=str(artifacts / "playground-answer.png"))

    page.reload()  # conversations and the key stay in the browser
    page.wait_for_selector(".message.assistant")
    assert page.input_value("#api-key") == API_KEY
    assert page.locator("#conversations li").count() == 1
    assert page.locator("#conversations li .open").inner_text() == "Hello there"
    assert STATS.search(last(page, ".stats"))


def test_model_card_labels_the_demo(page):
    card = page.inner_text("#model-card")
    assert "qwen3-vl-instruct" in card and "DEMO" in card and "random" in card
    assert "context 2048 tokens" in card


def test_attach_an_image_by_picker_drop_and_paste(page, play_server, artifacts):
    png = png_bytes()
    page.fill("#system-prompt", "You describe pictures.")
    page.dispatch_event("#system-prompt", "change")
    page.set_input_files("#file-input", files=[{"name": "gradient.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_selector("#attachments .chip img")
    page.evaluate(
        """(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dropped = new DataTransfer();
        dropped.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.querySelector("#messages").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
        const pasted = new DataTransfer();
        pasted.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
        document.querySelector("#prompt").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: pasted, bubbles: true, cancelable: true}));
    }""",
        base64.b64encode(png).decode(),
    )
    page.wait_for_function("() => document.querySelectorAll('#attachments .chip').length === 3")
    assert [page.get_attribute(f"#attachments .chip >> nth={i}", "title") for i in range(3)] == [
        "gradient.png",
        "dropped.png",
        "pasted.png",
    ]
    for _ in range(2):  # keep only the picked one
        page.click("#attachments .chip >> nth=-1 >> button")
    assert page.locator("#attachments .chip").count() == 1

    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "What is in this picture?", max_tokens=40)
    body = json.loads(sent.value.post_data)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 40
    assert body["messages"][0] == {"role": "system", "content": "You describe pictures."}
    parts = body["messages"][1]["content"]
    assert parts[0]["type"] == "image_url" and parts[1] == {"type": "text", "text": "What is in this picture?"}
    assert base64.b64decode(parts[0]["image_url"]["url"].split(",", 1)[1]) == png
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")

    wait_answer(page, "done")
    assert page.locator(".message.user img").count() == 1
    prompt = int(STATS.search(last(page, ".stats"))[3])
    text_only = server_prompt_tokens(play_server, "What is in this picture?")
    assert prompt > text_only + 2  # the image's tokens were counted: the server got the picture
    page.screenshot(path=str(artifacts / "playground-image-answer.png"))


def test_attach_a_video(page, play_server, tmp_path):
    from tests.support.media_samples import video_bytes

    clip = video_bytes(tmp_path, ".mp4", frames=20, fps=10.0)
    page.set_input_files("#file-input", files=[{"name": "clip.mp4", "mimeType": "video/mp4", "buffer": clip}])
    page.wait_for_selector("#attachments .chip video")
    with page.expect_request("**/v1/chat/completions") as sent:
        send(page, "What happens in this clip?", max_tokens=16)
    part = json.loads(sent.value.post_data)["messages"][-1]["content"][0]
    assert part["type"] == "video_url" and part["video_url"]["url"].startswith("data:video/mp4;base64,")
    wait_answer(page, "done")
    assert page.locator(".message.user video").count() == 1
    prompt = int(STATS.search(last(page, ".stats"))[3])
    assert prompt > server_prompt_tokens(play_server, "What happens in this clip?") + 2


def test_stop_cancels_the_generation_on_the_server(page, browser, play_server):
    wait_idle(play_server)
    send(page, "Tell me a very long story.", max_tokens=1900)
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.message.assistant')].pop();"
        " return m && m.dataset.state === 'streaming'"
        " && m.querySelector('.content').innerText.length > 20; }"
    )
    assert running(play_server) == 1
    assert metric(play_server, "qwen3vl_requests_running") == 1

    # A second tab while the only worker is busy: 503 with Retry-After, said in plain words.
    other = browser.new_page()
    other.goto(play_server.url + "/")
    other.wait_for_selector("#model-card h2")  # the key came from localStorage
    probe = play_server.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    )
    assert probe.status_code == 503
    send(other, "Are you there?")
    wait_answer(other, "error")
    busy = last(other, ".content")
    assert "busy (503)" in busy and f"Try again in {probe.headers['Retry-After']} s" in busy
    other.close()

    page.click("#stop")
    wait_answer(page, "stopped")
    freed = wait_idle(play_server, timeout=10)
    assert metric(play_server, "qwen3vl_requests_running") == 0
    assert metric(play_server, "qwen3vl_requests_in_flight") == 0
    print(f"server running count back to 0 {freed * 1000:.0f} ms after Stop")
    shown = last(page, ".content")
    time.sleep(0.5)
    assert last(page, ".content") == shown and "stopped" in last(page, ".stats")
    assert page.is_visible("#send") and not page.is_visible("#stop")


def test_wrong_key_is_said_plainly(page, play_server):
    set_key(page, "not-the-key")
    page.wait_for_function("() => document.querySelector('#model-card').innerText.includes('Enter the API key')")
    send(page, "Hello?")
    wait_answer(page, "error")
    text = last(page, ".content")
    assert "Wrong or missing API key" in text and "401" in text
    set_key(page, API_KEY)
    page.wait_for_selector("#model-card h2")


def test_refused_media_shows_the_servers_reason(page, play_server):
    junk = b"this is not an image at all"
    page.set_input_files("#file-input", files=[{"name": "broken.png", "mimeType": "image/png", "buffer": junk}])
    page.wait_for_selector("#attachments .chip")
    send(page, "What is this?")
    wait_answer(page, "error")
    direct = play_server.post(
        "/v1/chat/completions",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(junk).decode()},
                        }
                    ],
                }
            ]
        },
    )
    assert direct.status_code == 400
    assert f"The server refused an attachment: {direct.json()['error']['message']}" in last(page, ".content")


def test_model_text_is_never_run_as_html(page):
    """Answers are rendered by markdown.js as DOM nodes.  A stored answer full of markup is
    loaded through the same path the stream uses and must show up as text."""
    evil = (
        'Here:\n<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>\n'
        "[click](javascript:window.__pwned=3) and [docs](https://example.org/a)\n\n"
        '```html\n<b onclick="window.__pwned=4">x</b>\n```\n\n- **bold** and `<i>code</i>`\n1. one'
    )
    page.evaluate(
        """(evil) => {
        localStorage.setItem("qwen3vl.conversations", JSON.stringify([{id: "x", title: "evil", messages: [
            {role: "user", text: "<img src=x onerror=window.__pwned=5>", media: []},
            {role: "assistant", text: evil, state: "done"}]}]));
        localStorage.setItem("qwen3vl.active", "x");
    }""",
        evil,
    )
    page.reload()
    page.wait_for_selector(".message.assistant pre code")
    messages = page.locator("#messages")
    assert messages.locator("img, script, b, i, iframe").count() == 0
    assert page.evaluate("window.__pwned") is None
    text = messages.inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in text and "<script>" in text
    assert page.inner_text(".message.assistant pre code") == '<b onclick="window.__pwned=4">x</b>'
    links = page.locator(".message.assistant a")
    assert links.count() == 1 and links.get_attribute("href") == "https://example.org/a"
    assert page.inner_text(".message.assistant li strong") == "bold"
    assert page.inner_text(".message.assistant li code") == "<i>code</i>"
    assert page.locator(".message.assistant ol li").count() == 1


def test_the_page_works_behind_nginx_under_a_path_prefix(page, play_server, tmp_path):
    """Relative URLs only: served as http://proxy/qwen/, the page, its files and its API calls
    all go through the prefix."""
    if NGINX is None:
        pytest.skip("nginx not installed (.ci/run installs the Debian package)")
    port = free_port()
    site = f"""
server {{
    listen 127.0.0.1:{port};
    location /qwen/ {{
        proxy_pass http://127.0.0.1:{play_server.port}/;
        proxy_buffering off;
        client_max_body_size 64m;
    }}
}}
"""
    base = f"http://127.0.0.1:{port}/qwen/"
    with running_nginx(tmp_path, site, base):
        seen = []
        page.on("request", lambda r: seen.append(r.url))
        page.goto(base)  # another origin (port): its own localStorage, so the key is asked again
        set_key(page, API_KEY)
        page.wait_for_selector("#model-card h2")  # v1/models through the prefix
        send(page, "Hello through the proxy", max_tokens=20)
        wait_answer(page, "done")
        assert int(STATS.search(last(page, ".stats"))[4]) == 20
        assert seen and all(u.startswith((base, "data:")) for u in seen), seen
        assert any(u == base + "v1/chat/completions" for u in seen)


def test_grounding_draws_the_servers_detections_over_the_image(page, play_server, artifacts):
    """Grounding on: the request asks for it, and every detection the server returned (in
    the sent image's pixels) is drawn over that image, in its pixel frame.  The tiny
    model's random weights may answer an empty list: a few fresh chats until one is not."""
    png = png_bytes((160, 120))
    page.select_option("#grounding", "any")
    dets: list = []
    for _ in range(4):
        page.click("#new-chat")
        page.set_input_files("#file-input", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": png}])
        page.wait_for_selector("#attachments .chip img")
        with page.expect_request("**/v1/chat/completions") as sent:
            send(page, "Locate every object; output bbox_2d in JSON.", max_tokens=200)
        assert json.loads(sent.value.post_data)["grounding"] == "any"
        wait_answer(page, "done")
        dets = page.evaluate(
            "() => { const c = JSON.parse(localStorage.getItem('qwen3vl.conversations'))[0];"
            " return c.messages[c.messages.length - 1].detections || []; }"
        )
        if dets:
            break
    assert dets, "four answers without a detection"
    assert {d["image_index"] for d in dets} == {0}
    figure = ".message.assistant >> nth=-1 >> .grounded"
    page.wait_for_selector(f"{figure}[data-drawn='{len(dets)}']")
    assert page.get_attribute(f"{figure} >> svg", "viewBox") == "0 0 160 120"
    drawn = page.evaluate(
        """() => [...[...document.querySelectorAll('.message.assistant')].pop()
                   .querySelectorAll('.grounded svg > rect, .grounded svg > circle')].map((n) =>
            n.tagName === 'rect' ? {bbox_2d: ['x', 'y', 'width', 'height'].map((a) => +n.getAttribute(a))}
                                 : {point_2d: ['cx', 'cy'].map((a) => +n.getAttribute(a))})"""
    )
    want = [
        {
            "bbox_2d": [
                d["bbox_2d"][0],
                d["bbox_2d"][1],
                d["bbox_2d"][2] - d["bbox_2d"][0],
                d["bbox_2d"][3] - d["bbox_2d"][1],
            ]
        }
        if "bbox_2d" in d
        else {"point_2d": d["point_2d"]}
        for d in dets
    ]
    assert drawn == want
    labels = page.locator(f"{figure} >> svg >> text").evaluate_all("(nodes) => nodes.map((n) => n.textContent)")
    assert labels == [d["label"] for d in dets]  # as text, never markup
    page.screenshot(path=str(artifacts / "playground-grounding.png"))
