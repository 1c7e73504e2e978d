"""OpenAI chat messages -> the template's messages plus the media they reference.

Text parts are kept in order; every image/video part becomes a `{"type": "image"}` /
`{"type": "video"}` placeholder for the chat template, and its source is collected (in
the same order) for the media layer to fetch and preprocess.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MediaRef:
    kind: str  # "image" or "video" as the client declared it (bytes decide in the end)
    url: str
    param: str  # e.g. "messages[0].content[1]" for error messages
    options: dict  # min_pixels / max_pixels / fps / max_frames from the part


def split_messages(messages: list[dict]) -> tuple[list[dict], list[MediaRef]]:
    out, media = [], []
    for i, msg in enumerate(messages):
        role = "system" if msg["role"] == "developer" else msg["role"]
        content = msg.get("content")
        if content is None or isinstance(content, str):
            out.append({"role": role, "content": content or ""})
            continue
        parts = []
        for j, part in enumerate(content):
            t = part["type"]
            if t == "text":
                parts.append({"type": "text", "text": part["text"]})
                continue
            kind = "video" if t in ("video_url", "video") else "image"
            url = part[t]["url"] if t.endswith("_url") else part[t]
            options = {k: part[k] for k in ("min_pixels", "max_pixels", "fps", "max_frames") if k in part}
            media.append(MediaRef(kind, url, f"messages[{i}].content[{j}]", options))
            parts.append({"type": kind})
        out.append({"role": role, "content": parts})
    return out, media
