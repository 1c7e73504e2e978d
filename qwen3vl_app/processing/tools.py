"""Tool calls in Qwen3-VL's own format, both ways.

The model calls a tool by writing

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(several blocks, newline-separated, for parallel calls).  `parse_tool_calls` turns a
finished reply into OpenAI's `message.tool_calls`; `ToolCallStream` does the same on the
fly for streams, holding back only text that may still become a tool call.  A block that
is not valid JSON naming a declared tool stays text: nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.S)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = ""

    def __post_init__(self):
        self.id = self.id or new_call_id()

    def to_openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def read_call(body: str, names: set[str] | None) -> ToolCall | None:
    """One block's JSON -> a call, or None if it is not a well-formed call of a known tool."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some fine-tunes write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a finished reply.  Content is the text outside the recognised
    blocks (None when only whitespace is left, as OpenAI sends it with tool calls)."""
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for m in _BLOCK.finditer(text):
        call = read_call(m.group(1).strip(), names)
        if call is None:
            continue
        kept.append(text[pos : m.start()])
        pos = m.end()
        calls.append(call)
    kept.append(text[pos:])
    content = "".join(kept)
    if calls:
        return content.strip() or None, calls
    return content, calls


class ToolCallStream:
    """Incremental `parse_tool_calls`: feed text deltas, get ("content", text) and
    ("call", ToolCall) events in order.  Text that could be the start of `<tool_call>` is
    held back until it is clear; a complete block becomes one call event."""

    def __init__(self, names: set[str] | None = None):
        self.names = names
        self.buf = ""
        self.inside = False
        self.calls = 0
        self._pending_space = ""  # whitespace after a call: content only if real text follows

    def push(self, text: str) -> list[tuple[str, object]]:
        self.buf += text
        out: list[tuple[str, object]] = []
        while True:
            if self.inside:
                end = self.buf.find(CLOSE)
                if end < 0:
                    return out
                self._close(self.buf[:end], True, out)
                self.buf = self.buf[end + len(CLOSE) :]
                continue
            start = self.buf.find(OPEN)
            if start >= 0:
                self._content(self.buf[:start], out)
                self.buf = self.buf[start + len(OPEN) :]
                self.inside = True
                continue
            keep = _partial_suffix(self.buf, OPEN)
            self._content(self.buf[: len(self.buf) - keep], out)
            self.buf = self.buf[len(self.buf) - keep :]
            return out

    def finish(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        if self.inside:
            self._close(self.buf, False, out)  # the model ended inside a block (no closing tag)
        else:
            self._content(self.buf, out)
        self.buf = ""
        if self._pending_space and not self.calls:
            out.append(("content", self._pending_space))
        return out

    def _close(self, body: str, closed: bool, out: list) -> None:
        self.inside = False
        call = read_call(body.strip(), self.names)
        if call is None:
            self._content(OPEN + body + (CLOSE if closed else ""), out)
            return
        self._pending_space = ""
        self.calls += 1
        out.append(("call", call))

    def _content(self, text: str, out: list) -> None:
        if not text:
            return
        if self.calls and not text.strip():
            self._pending_space += text
            return
        out.append(("content", self._pending_space + text))
        self._pending_space = ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
