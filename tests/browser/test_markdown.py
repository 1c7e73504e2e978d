"""The playground's Markdown renderer (qwen3vl_app/static/markdown.js) in Debian's chromium.

Most tests load the script alone into a blank page and call it; the last one loads a
stored answer in the real playground (its CSP, app.js) against a real server.  Time
bounds are generous (tens of times what the linear renderer takes on a loaded machine;
the old regex renderer took seconds to minutes): bench/markdown_render.py prints figures.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "qwen3vl_app" / "static" / "markdown.js"
SIZE = 440 * 1024


def _repeat(unit: str) -> str:
    return unit * (SIZE // len(unit))


# Texts that made the old regexes search the rest of the line from every opener (inline),
# or trade characters between two parts of a line pattern (blocks; U+2028 is a character
# "." does not match).
HOSTILE = {
    "links": _repeat("[a](http" + "://"),
    "brackets": _repeat("["),
    "italic": _repeat("*a *"),
    "underscore_bold": _repeat(" __a"),
    "bold": _repeat("**a"),
    "code": _repeat("``a"),
    # 110 KB is enough here: the old renderer took 10-40 s for these
    "fence_line": "```" + " " * (SIZE // 4) + "!",
    "heading_line": "#" + " " * (SIZE // 4) + "a\u2028b",
    "list_line": "-" + " " * (SIZE // 4) + "a\u2028b",
}
SAMPLE = (
    "# Title\r\nIntro with **bold**, *it*, _it_, __b__, `code`, ``a ` b`` and [a [link]](https://example.org/x).\n"
    "second line\n\n"
    "- one *a*\n- two\n* three\n\n"
    "3. three\n4) four\n\n"
    "> quoted **q**\n> again\n\n"
    "```python\nprint('**not bold**')\n\n```\n"
    "~~~~\nunclosed ``` inside\n~~~~\n"
    "para after fence\n## Sub\ntext [x](javascript:alert(1)) <b>tag</b>\n\n\n"
    "```\nan unclosed fence at the end\n- not a list"
)

RENDER_TIME = """(text) => {
    const box = document.createElement("div");
    document.body.replaceChildren(box);
    const t = performance.now();
    box.appendChild(window.renderMarkdown(text));
    return [performance.now() - t, box.childNodes.length];
}"""

HTML = """(text) => { const d = document.createElement("div"); d.appendChild(window.renderMarkdown(text));
    return d.innerHTML; }"""


@pytest.fixture(scope="module")
def md(browser):
    """A blank page with markdown.js loaded."""
    page = browser.new_page()
    page.set_content("<!doctype html><body></body>")
    page.add_script_tag(path=str(SCRIPT))
    yield page
    page.close()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_renders_in_linear_time(md, name):
    text = HOSTILE[name]
    t0 = time.monotonic()
    ms, blocks = md.evaluate(RENDER_TIME, text)
    print(f"{name}: {len(text)} bytes in {ms:.0f} ms")
    assert blocks == 1
    assert ms < 5000 and time.monotonic() - t0 < 20, f"{name}: {ms:.0f} ms for {len(text)} bytes"


def test_inline_constructs(md):
    assert md.evaluate(HTML, "a **b *c* d** e") == "<p>a <strong>b <em>c</em> d</strong> e</p>"
    assert md.evaluate(HTML, "snake_case_name and _it_") == "<p>snake_case_name and <em>it</em></p>"
    assert md.evaluate(HTML, "``a ` b`` and `x`") == "<p><code>a ` b</code> and <code>x</code></p>"
    assert md.evaluate(HTML, "``unclosed` run") == "<p>``unclosed` run</p>"  # no run of the same length closes it
    assert md.evaluate(HTML, "[a [b]](https://e.org/p) [c](ftp://x)") == "<p>[a [b]](https://e.org/p) [c](ftp://x)</p>"
    assert md.evaluate(HTML, "** not bold** and *not italic *") == "<p>** not bold** and *not italic *</p>"


def test_links_keep_the_first_closing_bracket(md):
    html = md.evaluate(HTML, "[a [b](https://e.org/p) end")
    assert html == '<p><a href="https://e.org/p" rel="noopener noreferrer nofollow" target="_blank">a [b</a> end</p>'


INCREMENTAL = """([text, cuts]) => {
    const box = document.createElement("div");
    document.body.replaceChildren(box);
    const html = (t) => { const d = document.createElement("div"); d.appendChild(window.renderMarkdown(t));
                          return d.innerHTML; };
    const bad = [];
    let kept = 0, firstNode = null;
    for (const cut of cuts) {
        const prefix = text.slice(0, cut);
        window.renderMarkdownInto(box, prefix);
        if (box.innerHTML !== html(prefix)) bad.push(cut);
        if (firstNode && box.firstChild === firstNode) kept++;
        firstNode = box.firstChild;
    }
    return [bad, kept];
}"""


def test_incremental_rendering_equals_a_full_render(md):
    """Fed every prefix of the sample, char by char (a stream), the box always shows exactly
    what a full render of that prefix shows, and the first block's node is kept once it is
    settled rather than rebuilt every time."""
    bad, kept = md.evaluate(INCREMENTAL, [SAMPLE, list(range(len(SAMPLE) + 1))])
    assert bad == []
    # the heading is settled once the line after the one that ends it has begun
    assert kept >= len(SAMPLE) - SAMPLE.index("second line") - 1


def test_incremental_rendering_starts_over_when_the_text_is_not_a_continuation(md):
    cuts = [len(SAMPLE), 40, len(SAMPLE)]
    bad, _ = md.evaluate(INCREMENTAL, [SAMPLE, cuts])
    assert bad == []
    html = md.evaluate(
        """([a, b]) => { const box = document.createElement("div");
        window.renderMarkdownInto(box, a); box.firstChild.remove(); window.renderMarkdownInto(box, b);
        return box.innerHTML; }""",
        ["# one\n\n# two\n\nthree", "# one\n\n# two\n\nthree more"],
    )
    assert html == md.evaluate(HTML, "# one\n\n# two\n\nthree more")  # a box changed by someone else is redrawn


STREAM = """([text, frames]) => {
    const box = document.createElement("div");
    document.body.replaceChildren(box);
    let built = 0;
    const count = new MutationObserver((records) => { for (const r of records) built += r.addedNodes.length; });
    count.observe(box, { childList: true });
    for (let f = 1; f <= frames; f++) {
        window.renderMarkdownInto(box, text.slice(0, Math.round(text.length * f / frames)));
    }
    count.takeRecords().forEach((r) => { built += r.addedNodes.length; });
    count.disconnect();
    return [built, box.childNodes.length];
}"""


def test_a_streamed_answer_rebuilds_only_its_tail(md):
    """A 200-block answer streamed in 400 frames: each frame adds the new blocks and redraws
    the one or two unsettled ones at the end, not all the blocks above them."""
    text = "".join(f"Paragraph {i} with **bold** and `code`.\n\n" for i in range(200))
    built, blocks = md.evaluate(STREAM, [text, 400])
    assert blocks == 200
    assert built < 3 * 400 + 200, built  # a full redraw per frame would build ~40000


def test_a_hostile_stored_answer_renders_quickly_in_the_playground(page):
    """The real page (CSP, app.js): an answer of 440 KB of "*a *" shows up at once."""
    text = HOSTILE["italic"]
    page.evaluate(
        """(text) => {
        localStorage.setItem("qwen3vl.conversations", JSON.stringify([{id: "h", title: "hostile", messages: [
            {role: "user", text: "hi", media: []}, {role: "assistant", text, state: "done"}]}]));
        localStorage.setItem("qwen3vl.active", "h");
    }""",
        text,
    )
    t0 = time.monotonic()
    page.reload()
    page.wait_for_selector(".message.assistant .content p", timeout=90_000)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"{elapsed:.1f} s to show the stored answer"
    assert page.evaluate("document.querySelector('.message.assistant .content').textContent.length") == len(text)
