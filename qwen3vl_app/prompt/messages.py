"""OpenAI chat messages -> the template's messages plus the media they reference.

Text parts are kept in order; every image/video part becomes a `{"type": "image"}` /
`{"type": "video"}` placeholder for the chat template, and its source is collected (in
the same order) for the media layer to fetch and preprocess.  Assistant `tool_calls`
and `role: "tool"` results pass through in the shape chat templates expect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Image `detail` (OpenAI): "low" caps the image at 512x512 pixels (at most 256 vision
# tokens: one per 32x32 block); "high" and "auto" use the server's own budget
# (--max-image-pixels and the engine's compiled size).  Explicit min/max_pixels in the part
# still apply, and the server's ceilings always win.
LOW_DETAIL_MAX_PIXELS = 512 * 512
# A media part's own vision controls (qwen-vl-utils' names); the request's
# `mm_processor_kwargs` (vLLM's) give the same for every part, a part's own win.
MEDIA_OPTIONS = ("min_pixels", "max_pixels", "total_pixels", "fps", "max_frames", "video_start", "video_end")
PART_OPTIONS = (*MEDIA_OPTIONS, "duration")  # duration: a camera clip's seconds, per part only


@dataclass
class MediaRef:
    kind: str  # "image" or "video" as the client declared it (bytes decide in the end)
    url: str
    param: str  # e.g. "messages[0].content[1]" for error messages
    options: dict  # MEDIA_OPTIONS from the part or the request; detail_max_pixels for detail: low


def split_messages(messages: Sequence[Mapping], mm_kwargs: Mapping | None = None) -> tuple[list[dict], list[MediaRef]]:
    """The template's messages (new objects: `messages` is read, never written) and the
    media; `mm_kwargs`: the request's mm_processor_kwargs, defaults for every media part."""
    defaults = {k: v for k, v in (mm_kwargs or {}).items() if k in MEDIA_OPTIONS and v is not None}
    out, media = [], []
    for i, msg in enumerate(messages):
        role = "system" if msg["role"] == "developer" else msg["role"]
        content = msg.get("content")
        extra = _tool_fields(msg)
        if role == "tool" and isinstance(content, list):  # a tool result is text; its parts are joined
            content = "".join(p.get("text", "") for p in content if p["type"] == "text")
        if content is None or isinstance(content, str):
            out.append({"role": role, "content": content or "", **extra})
            continue
        parts = []
        for j, part in enumerate(content):
            t = part["type"]
            if t == "text":
                parts.append({"type": "text", "text": part["text"]})
                continue
            kind = "video" if t in ("video_url", "video") else "image"
            url = part[t]["url"] if t.endswith("_url") else part[t]
            options = {**defaults, **{k: part[k] for k in PART_OPTIONS if part.get(k) is not None}}
            if t.endswith("_url") and part[t].get("detail") == "low":
                options["detail_max_pixels"] = LOW_DETAIL_MAX_PIXELS
            media.append(MediaRef(kind, url, f"messages[{i}].content[{j}]", options))
            parts.append({"type": kind})
        out.append({"role": role, "content": parts, **extra})
    return out, media


def _tool_fields(msg: Mapping) -> dict:
    if msg.get("tool_calls"):
        return {
            "tool_calls": [
                {
                    "id": c.get("id") or "",
                    "type": "function",
                    "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                }
                for c in msg["tool_calls"]
            ]
        }
    if msg["role"] == "tool":
        return {"tool_call_id": msg.get("tool_call_id", "")}
    return {}
