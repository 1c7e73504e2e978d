"""Text side of a model folder: tokenizer, chat template, generation defaults.

Uses the `tokenizers` library and Jinja2 directly (no transformers, no torch), so a
bm1684x worker stays small.  Works for both folder layouts: files at the top of a
Hugging Face folder, or under `config/` beside a `*.bmodel`.

Trust rule: only the chat template's own text may produce the vocabulary's added tokens
(the control tokens `<|im_start|>`..., and the non-special ones the template builds its
structure from: `<tool_call>`, `<tool_response>`, `<think>` and their closing tags).
Client text -- every message text of every role, tool call names and arguments, tool
results -- is tokenized as plain text (`encode_untrusted`), and client text the template
writes itself (tool signatures through `tojson`) has the first character of any added
token's text JSON-escaped.  So no message can forge a turn, a tool call or a tool result.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from .model_constants import END_OF_TEXT, IM_END


def config_dir(model_dir: Path) -> Path:
    """Where tokenizer/processor files live for either layout."""
    nested = model_dir / "config"
    return nested if (nested / "tokenizer.json").exists() else model_dir


class ChatTokenizer:
    def __init__(self, folder: Path):
        folder = config_dir(Path(folder))
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        self.folder = folder
        self.tok = Tokenizer.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.generation_config = _read_json(folder / "generation_config.json")
        eos = self.generation_config.get("eos_token_id", [IM_END, END_OF_TEXT])
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos]) | {IM_END, END_OF_TEXT}
        added = self.tok.get_added_tokens_decoder()
        # Control tokens are not text; added tokens the tokenizer marks non-special
        # (`<tool_call>`, `<think>`, ...) are, as the model folder's own decoder renders them.
        self.special_ids = frozenset(tid for tid, token in added.items() if token.special)
        # The same model, normalizer and pre-tokenizer (shared, not copied) without any added
        # token: byte-level BPE of the text and nothing else.
        self._plain = Tokenizer(self.tok.model)
        self._plain.normalizer = self.tok.normalizer
        self._plain.pre_tokenizer = self.tok.pre_tokenizer
        added_text = sorted({t.content for t in added.values() if t.content}, key=len, reverse=True)
        self._added_text = re.compile("|".join(map(re.escape, added_text))) if added_text else None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = self._tojson  # as transformers renders templates: no key sorting, no HTML escapes
        self.template_source = _find_chat_template(folder)
        self._template = env.from_string(self.template_source)

    def render(
        self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None, **kwargs
    ) -> str:
        """`kwargs`: the template switches a request may set (`processing/reasoning.py`
        checks them: `enable_thinking`)."""
        return self._template.render(
            **kwargs, messages=messages, add_generation_prompt=add_generation_prompt, tools=tools or None
        )

    def encode(self, text: str) -> list[int]:
        """Trusted text (the rendered template): control tokens in it are real tokens."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_untrusted(self, text: str) -> list[int]:
        """Client text: every added token's text (`<|im_start|>`, `<tool_call>`,
        `</tool_response>`, `<think>`, ...) stays plain text, so a message cannot forge a
        role turn, a tool call or a tool result.  (The added tokens marked non-special match
        in text even with `encode_special_tokens`, hence the tokenizer without them.)"""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        template_kwargs: dict | None = None,
    ) -> list[int]:
        """Render the chat template and tokenize it, the template's own text as trusted and
        every client text as untrusted.  Each message text (and each tool call's name and
        arguments) is swapped for a marker before rendering; the rendered string is split
        on the markers afterwards.  Tool signatures are rendered by the template's
        `tojson`, which escapes added-token text (`template_tojson`)."""
        texts: list[str] = []
        nonce = secrets.token_hex(4)

        def mark(text: str) -> str:
            if not text:
                return text  # stays falsy for the template (an empty assistant text before tool calls)
            texts.append(text)
            return f"\ue000{nonce}:{len(texts) - 1}\ue001"

        marked = []
        for msg in messages:
            content = msg["content"]
            if isinstance(content, str):
                content = mark(content)
            else:
                content = [{**p, "text": mark(p["text"])} if p.get("type") == "text" else p for p in content]
            out = {**msg, "content": content}
            if msg.get("tool_call_id"):
                out["tool_call_id"] = mark(msg["tool_call_id"])
            if msg.get("reasoning_content"):  # an earlier turn's thinking (processing/reasoning.py)
                out["reasoning_content"] = mark(msg["reasoning_content"])
            if msg.get("tool_calls"):
                out["tool_calls"] = [
                    {
                        **call,
                        "id": mark(call.get("id") or ""),
                        "function": {
                            "name": mark(call["function"]["name"]),
                            "arguments": mark(call["function"]["arguments"]),
                        },
                    }
                    for call in msg["tool_calls"]
                ]
            marked.append(out)
        rendered = self.render(marked, add_generation_prompt, tools, **(template_kwargs or {}))
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", rendered)
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                ids += self.encode(piece) if piece else []
            else:
                ids += self.encode_untrusted(texts[int(piece)])
        return ids

    def _tojson(self, value, indent=None, separators=None, sort_keys=False, ensure_ascii=False) -> str:
        return template_tojson(value, indent, separators, sort_keys, ensure_ascii, self._added_text)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (special tokens: their text)."""
        return (
            self.tok.decode([token_id], skip_special_tokens=False).encode("utf-8", "surrogatepass")
            if token_id >= END_OF_TEXT
            else _unbyte(self.tok.id_to_token(token_id))
        )


def template_tojson(
    value, indent=None, separators=None, sort_keys=False, ensure_ascii=False, added_text: re.Pattern | None = None
) -> str:
    """The `tojson` chat templates are written for (transformers' own: keys in the client's
    order, non-ASCII kept).  The first character of any text matching `added_text` (the
    vocabulary's added tokens) is written as its JSON escape (`<` as \\u003c: the same JSON
    value), so a tool description cannot forge a turn or a tool call."""
    text = json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    if added_text is None:
        return text
    return added_text.sub(lambda m: _json_escape(m[0][0]) + m[0][1:], text)


def _json_escape(char: str) -> str:
    """One character as JSON \\u escapes (a surrogate pair past the BMP)."""
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def _find_chat_template(folder: Path) -> str:
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        data = _read_json(folder / name)
        if isinstance(data.get(key), str):
            return data[key]
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    raise FileNotFoundError(f"no chat template in {folder}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the rest are
    shifted past 255 so every byte has a visible, unambiguous character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


BYTE_TO_UNICODE = _byte_to_unicode()
_UNBYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def _unbyte(piece: str | None) -> bytes:
    """Byte-level BPE piece -> the bytes it encodes."""
    if piece is None:
        return b""
    return bytes(_UNBYTE[c] for c in piece)
