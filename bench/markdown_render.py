"""Time the playground's Markdown renderer (qwen3vl_app/static/markdown.js) in chromium.

    .venv/bin/python bench/markdown_render.py                  # this checkout
    .venv/bin/python bench/markdown_render.py --repo /tmp/old  # another checkout (before/after)

Hostile answers of about 220 KB (patterns that made the old inline regexes backtrack over
the rest of the line at every opener, and single lines that made the old block patterns
backtrack quadratically) are rendered (best of --reps), and a long ordinary answer
is "streamed" in 1000 growing prefixes the way app.js redraws it (the incremental renderer
when the checkout has one, a full re-render per frame otherwise).  Prints one JSON line
per case: milliseconds measured inside the page with performance.now().  Debian's
chromium through playwright, as tests/browser uses it.  Nothing here asserts:
tests/browser/test_markdown.py checks the behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("QWEN3VL_CHROMIUM", "/usr/bin/chromium")
SIZE = 220 * 1024

HOSTILE = {
    "links": "[a](http" + "://",
    "bold": "**a",
    "bold_underscore": " __a",
    "code": "``a",
    "brackets": "[",
    "italic": "*a *",
}
# One line each: the old block patterns traded characters between two parts of the line.
HOSTILE_LINES = {
    "fence_line": "```" + " " * SIZE + "!",
    "heading_line": "#" + " " * SIZE + "a\u2028b",
    "list_line": "-" + " " * SIZE + "a\u2028b",
}
ORDINARY = (
    "## Step {i}\n\nSome **bold** text, `code`, a [link](https://example.org/{i}) and _italic_ words "
    "that go on for a while so that the paragraph wraps.\nA second line.\n\n- one\n- two *x*\n\n"
    "```python\nprint({i})\n```\n\n"
)

TIME_ONE = """([text, reps]) => {
    const box = document.createElement("div");
    document.body.replaceChildren(box);
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
        const t = performance.now();
        box.replaceChildren(window.renderMarkdown(text));
        best = Math.min(best, performance.now() - t);
    }
    return best;
}"""

TIME_STREAM = """([text, frames]) => {
    const box = document.createElement("div");
    document.body.replaceChildren(box);
    const incremental = typeof window.renderMarkdownInto === "function";
    const t = performance.now();
    let worst = 0;
    for (let f = 1; f <= frames; f++) {
        const t0 = performance.now();
        const prefix = text.slice(0, Math.round(text.length * f / frames));
        if (incremental) window.renderMarkdownInto(box, prefix);
        else box.replaceChildren(window.renderMarkdown(prefix));
        worst = Math.max(worst, performance.now() - t0);
    }
    return [performance.now() - t, worst, incremental];
}"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(HERE), help="checkout whose markdown.js is measured")
    p.add_argument("--reps", type=int, default=3, help="renders per hostile text (the best is printed)")
    args = p.parse_args()
    script = (Path(args.repo) / "qwen3vl_app" / "static" / "markdown.js").read_text()
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(HERE))
    from tests.browser.conftest import CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(600_000)
        page.set_content("<!doctype html><body></body>")
        page.add_script_tag(content=script)
        texts = {name: unit * (SIZE // len(unit)) for name, unit in HOSTILE.items()}
        for name, text in {**texts, **HOSTILE_LINES}.items():
            ms = page.evaluate(TIME_ONE, [text, args.reps])
            print(json.dumps({"case": f"hostile_{name}", "bytes": len(text), "render_ms": round(ms, 1)}), flush=True)
        doc = "".join(ORDINARY.format(i=i) for i in range(SIZE // len(ORDINARY)))
        total, worst, incremental = page.evaluate(TIME_STREAM, [doc, 1000])
        print(
            json.dumps(
                {
                    "case": "stream_ordinary",
                    "bytes": len(doc),
                    "frames": 1000,
                    "incremental": incremental,
                    "total_ms": round(total, 1),
                    "worst_frame_ms": round(worst, 1),
                }
            ),
            flush=True,
        )
        browser.close()


if __name__ == "__main__":
    main()
