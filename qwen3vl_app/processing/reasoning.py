"""Thinking models: their output split into reasoning and answer, their template's
thinking switches, and earlier turns' reasoning handed to the template.

Rules:
- A Qwen3-VL *Thinking* checkpoint is recognised by its chat template (`support`): its
  generation prompt opens `<think>`, so the output is `reasoning</think>answer`.  A
  template that reads `enable_thinking` can turn thinking off; one that does not, cannot
  (`template_kwargs` answers a clear 400).  A hybrid template whose model opens `<think>`
  itself is handled too: the splitter takes a leading `<think>` as the start of reasoning.
- `ReasoningSplitter` is incremental (stream deltas arrive in any cut); it holds back only
  what might be the start of a tag or the newlines around one, so reasoning deltas come
  out as they are generated and always before the first content delta.  The newline the
  template puts after `<think>`, the one before `</think>` and the blank line after it are
  layout, not text: they are dropped.
- Earlier assistant turns: a client sends back the answer (and maybe the reasoning, as
  `reasoning_content` or `reasoning`, or inline as `<think>...</think>` in the content).
  `attach_history` puts the reasoning in the template message's `reasoning_content`; the
  chat template decides whether it appears in the prompt (Qwen3-VL Thinking templates
  keep it only for the turns after the last user message, i.e. an ongoing tool-call
  chain, and drop it everywhere else).  It stays client text: the tokenizer encodes it as
  untrusted, like every message text.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import APIError

if TYPE_CHECKING:
    from ..protocol import ChatRequest, GenerationRequest
    from ..tokenizer import ChatTokenizer

OPEN = "<think>"
CLOSE = "</think>"
TEMPLATE_KWARGS = ("enable_thinking",)  # chat_template_kwargs the server passes to the template


@dataclass(frozen=True)
class ThinkingSupport:
    thinks: bool = False  # a thinking model: its output holds reasoning before the answer
    opens: bool = False  # its generation prompt opens <think> (else the model writes it)
    can_disable: bool = False  # the template honours enable_thinking: false

    def describe(self, default_budget: int) -> dict:
        """The `thinking` entry of /v1/models."""
        return {
            "supported": self.thinks,
            "can_disable": self.can_disable,
            "default_budget": default_budget or None,
        }


_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def support(tokenizer: ChatTokenizer) -> ThinkingSupport:
    """What the model folder's chat template does about thinking (computed once)."""
    found = _SUPPORT.get(tokenizer)
    if found is None:
        found = _detect(tokenizer)
        _SUPPORT[tokenizer] = found
    return found


def _generation_prompt(tokenizer: ChatTokenizer, **kwargs) -> str:
    rendered = tokenizer.render([{"role": "user", "content": "x"}], True, None, **kwargs)
    return rendered.rsplit("<|im_start|>", 1)[-1]


def _detect(tokenizer: ChatTokenizer) -> ThinkingSupport:
    default = _generation_prompt(tokenizer)
    opens = default.rstrip().endswith(OPEN)
    mentions = "enable_thinking" in tokenizer.template_source
    off = _generation_prompt(tokenizer, enable_thinking=False) if mentions else default
    closes_when_off = mentions and CLOSE in off and not off.rstrip().endswith(OPEN)
    return ThinkingSupport(thinks=opens or closes_when_off, opens=opens, can_disable=closes_when_off)


def template_kwargs(req: GenerationRequest, model: ThinkingSupport) -> dict:
    """The request's `chat_template_kwargs`, checked against what the template can do."""
    given = req.chat_template_kwargs or {}
    unknown = sorted(k for k in given if k not in TEMPLATE_KWARGS)
    if unknown:
        raise APIError(
            f"chat_template_kwargs: {', '.join(map(repr, unknown))} not supported; "
            f"this server passes only {', '.join(TEMPLATE_KWARGS)} to the chat template.",
            400,
            "chat_template_kwargs",
            "unsupported_parameter",
        )
    out = {}
    if "enable_thinking" in given:
        enable = given["enable_thinking"]
        if not isinstance(enable, bool):
            raise APIError(
                "chat_template_kwargs.enable_thinking must be true or false.",
                400,
                "chat_template_kwargs.enable_thinking",
                "invalid_type",
            )
        if not model.thinks and enable:
            raise APIError(
                "This model has no thinking mode (its chat template never opens <think>); "
                "leave enable_thinking out or serve a Thinking checkpoint.",
                400,
                "chat_template_kwargs.enable_thinking",
                "unsupported_parameter",
            )
        if model.thinks and not enable and not model.can_disable:
            raise APIError(
                "This model always thinks: its chat template has no enable_thinking switch. "
                "Bound the thinking with thinking_budget (tokens; 0 answers at once) instead.",
                400,
                "chat_template_kwargs.enable_thinking",
                "unsupported_parameter",
            )
        if model.can_disable:
            out["enable_thinking"] = enable
    return out


def check_budget(req: GenerationRequest, model: ThinkingSupport) -> None:
    if req.thinking_budget is not None and not model.thinks:
        raise APIError(
            "thinking_budget applies to Thinking models only; this model does not think.",
            400,
            "thinking_budget",
            "unsupported_parameter",
        )


def prepare(req: ChatRequest, tokenizer: ChatTokenizer, template_messages: list[dict]) -> dict:
    """A chat request on this model: its thinking fields checked (400 when the template
    cannot do what they ask), earlier turns' reasoning attached; returns the template
    switches to render with."""
    model = support(tokenizer)
    kwargs = template_kwargs(req, model)
    check_budget(req, model)
    if model.thinks:
        attach_history(req.messages, template_messages)
    return kwargs


def attach_history(client_messages: Sequence[Mapping], template_messages: list[dict]) -> None:
    """Each earlier assistant turn's reasoning goes to `reasoning_content` of its template
    message (from `reasoning_content`, `reasoning`, or a `<think>...</think>` in its
    text content), and the answer alone stays in `content`.  Both lists are in the same
    order (`prompt.messages.split_messages` keeps one template message per message)."""
    for sent, msg in zip(client_messages, template_messages, strict=True):
        if msg["role"] != "assistant":
            continue
        reasoning = sent.get("reasoning_content") or sent.get("reasoning")
        content = msg.get("content")
        if isinstance(content, str) and CLOSE in content:
            inline, content = content.split(CLOSE, 1)
            msg["content"] = content.lstrip("\n")
            reasoning = reasoning or inline.replace(OPEN, "", 1)
        if isinstance(reasoning, str) and reasoning.strip("\n"):
            msg["reasoning_content"] = reasoning.strip("\n")


class ReasoningSplitter:
    """Model output text, pushed in pieces -> (reasoning, content) pieces.

    `opened`: the prompt left the model inside `<think>` (a Thinking template); otherwise a
    leading `<think>` (after whitespace) opens it, and output without one is all answer."""

    def __init__(self, opened: bool):
        self._state = "thinking" if opened else "start"
        self._buf = ""
        self._lead = True  # at the start of the reasoning or of the answer: newlines are layout
        self.reasoning_seen = opened

    def push(self, text: str) -> tuple[str, str]:
        self._buf += text
        reasoning = content = ""
        while True:
            if self._state == "start":
                head = self._buf.lstrip()
                if head.startswith(OPEN):
                    self._buf = head[len(OPEN) :]
                    self._state, self._lead, self.reasoning_seen = "thinking", True, True
                    continue
                if OPEN.startswith(head):  # maybe the tag, not all here yet
                    return reasoning, content
                self._state, self._lead = "answer", False
                continue
            if self._state == "thinking":
                if self._lead:
                    self._buf = self._buf.lstrip("\n")
                    if not self._buf:
                        return reasoning, content
                    self._lead = False
                at = self._buf.find(CLOSE)
                if at >= 0:
                    reasoning += self._buf[:at].rstrip("\n")
                    self._buf = self._buf[at + len(CLOSE) :]
                    self._state, self._lead = "answer", True
                    continue
                keep = _held(self._buf)
                reasoning += self._buf[: len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep :]
                return reasoning, content
            # answer
            if self._lead:
                self._buf = self._buf.lstrip("\n")
                if not self._buf:
                    return reasoning, content
                self._lead = False
            content += self._buf
            self._buf = ""
            return reasoning, content

    def flush(self) -> tuple[str, str]:
        """End of output: what was held back (a thinking never closed keeps its text)."""
        buf, self._buf = self._buf, ""
        if self._state == "thinking":
            return buf.rstrip("\n"), ""
        return "", buf


def _held(buf: str) -> int:
    """Characters at the end of `buf` that might belong to a `</think>` (and the newlines
    before it): kept back until the next piece says."""
    keep = 0
    for n in range(min(len(CLOSE) - 1, len(buf)), 0, -1):
        if CLOSE.startswith(buf[-n:]):
            keep = n
            break
    rest = buf[: len(buf) - keep]
    return keep + (len(rest) - len(rest.rstrip("\n")))


def split(text: str, opened: bool) -> tuple[str | None, str]:
    """A whole output -> (reasoning or None when the model did not think, answer)."""
    s = ReasoningSplitter(opened)
    r1, c1 = s.push(text)
    r2, c2 = s.flush()
    return (r1 + r2 if s.reasoning_seen else None), c1 + c2
