"""Every README block marked `<!-- readme-example -->` runs as written against a live server.

The server is what `make run` starts (the tiny demo model, the default key `abc@123`), on a
free loopback port: the only change made to a block is that port in place of 8899.  Blocks
marked `<!-- readme-example thinking -->` run against the server the README starts for
them: the tiny Thinking model (`make tiny-model THINKING=1`) served as `qwen3-vl-thinking`.  The
blocks run in a scratch folder holding `photo.jpg` (a small JPEG made here), the file the
examples ask the reader to bring.  Python blocks run with this interpreter (which has the
`openai` package); shell blocks with `bash -eo pipefail`.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

MARKER = "<!-- readme-example -->"
BLOCK = re.compile(re.escape(MARKER) + r"\s*\n```(python|sh)\n(.*?)\n```", re.DOTALL)
THINKING_MARKER = "<!-- readme-example thinking -->"
THINKING_BLOCK = re.compile(re.escape(THINKING_MARKER) + r"\s*\n```(python|sh)\n(.*?)\n```", re.DOTALL)
DEFAULT_KEY = "abc@123"


def readme_examples() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    blocks = BLOCK.findall(text)
    assert text.count(MARKER) == len(blocks), "a readme-example marker is not followed by a python/sh block"
    return blocks


EXAMPLES = readme_examples()


def thinking_examples() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    blocks = THINKING_BLOCK.findall(text)
    assert text.count(THINKING_MARKER) == len(blocks)
    return blocks


THINKING_EXAMPLES = thinking_examples()


def test_the_readme_marks_its_first_five_minutes_examples():
    kinds = [k for k, _ in EXAMPLES]
    assert kinds.count("python") >= 2 and kinds.count("sh") >= 3
    code = "\n".join(body for _, body in EXAMPLES)
    assert "data_uri(" in code and "base64" in code  # a local file -> data URI
    for _, body in EXAMPLES:
        if body.lstrip().startswith("curl"):
            assert "curl -s" in body, body
        if "/chat/completions" in body or "media/describe" in body:
            assert "max_tokens" in body, body


@pytest.fixture(scope="module")
def readme_server(server_factory):
    with server_factory(api_key=DEFAULT_KEY, workers=1) as s:
        yield s


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("readme")
    img = Image.new("RGB", (120, 80))
    img.putdata([((x * 2) % 256, (y * 3) % 256, 90) for y in range(80) for x in range(120)])
    img.save(folder / "photo.jpg", "JPEG")
    return folder


@pytest.fixture(scope="module")
def thinking_server(server_factory):
    from qwen3vl_app.devtools.tiny_thinking import ensure_tiny_thinking_checkpoint

    text = (REPO / "README.md").read_text()
    assert 'make -s tiny-model THINKING=1 | tail -1)" --served-model-name qwen3-vl-thinking' in text
    with server_factory(
        "--served-model-name", "qwen3-vl-thinking", model_dir=ensure_tiny_thinking_checkpoint(), api_key=DEFAULT_KEY
    ) as s:
        yield s


def test_readme_thinking_example(thinking_server, scratch):
    assert THINKING_EXAMPLES
    for kind, body in THINKING_EXAMPLES:
        out = _run(kind, body, thinking_server.port, scratch)
        if "reasoning tokens:" in body:
            lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
            assert 0 < int(lines["reasoning tokens"]) <= 32 + 2  # the budget, then "\n</think>"


def _run(kind: str, body: str, port: int, scratch):
    assert "127.0.0.1:8899" in body
    code = body.replace("127.0.0.1:8899", f"127.0.0.1:{port}")
    cmd = [sys.executable, "-c", code] if kind == "python" else ["bash", "-eo", "pipefail", "-c", code]
    out = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert out.stdout.strip(), out.stderr
    return out


@pytest.mark.parametrize("kind,body", EXAMPLES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(EXAMPLES)])
def test_readme_example_runs_as_written(kind, body, readme_server, scratch):
    assert "127.0.0.1:8899" in body
    code = body.replace("127.0.0.1:8899", f"127.0.0.1:{readme_server.port}")
    cmd = [sys.executable, "-c", code] if kind == "python" else ["bash", "-eo", "pipefail", "-c", code]
    out = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    assert out.stdout.strip(), out.stderr
    assert '"error"' not in out.stdout, out.stdout[-2000:]
    if kind == "sh" and 'stream":true' in body:
        events = [line for line in out.stdout.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) <= 32 + 3  # max_tokens keeps it short
