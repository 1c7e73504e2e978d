"""A request's prompt built without stalling the worker: a free byte bound first, then
tokenization off the gevent hub when the text is large or the conversation long.

Tokenizing is pure CPU in the calling thread.  A gevent worker runs every connection on
one hub, so a 300 KB prompt tokenized there would freeze /health, streams and every other
request of the worker for about a second.  Two defences, both here:

- a bound that costs nothing: no token is longer than the longest vocabulary entry, so
  text of n bytes is at least n / that many tokens; a prompt that is certainly too long
  is refused before any tokenizing (`tokenize`, `tokenize_text`);
- what passes and is large (text, or so many messages that rendering the chat template
  takes time) is tokenized in one dedicated thread, one prompt at a time (the tokenizer
  object is not shared across threads).

`off_hub` runs any such work in a thread of its own; the API layer uses it to validate
and translate large request bodies too (api/common.py).  Pure-Python work there lets the
hub run between bytecodes (the GIL changes hands every 5 ms, at some cost to the hub's
latency); a single long C call would not, so work handed over must be made of short steps.

The prompt itself (chat template, vision pads, positions) is `template.py` and `vision.py` beside this file.
"""

from __future__ import annotations

import contextvars
import json
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..tokenizer import _unbyte
from .template import build_prompt, check_length, context_overflow, prompt_limit, text_prompt

if TYPE_CHECKING:
    from ..engine.base import Prompt, VisionInput
    from ..tokenizer import ChatTokenizer

# Prompts with more text than this are tokenized off the gevent hub (a 300 KB prompt takes
# about a second), one at a time (the tokenizer object is not shared across threads).
OFFLOAD_TEXT_BYTES = 32 * 1024
# ... and so are conversations of more messages than this (200k empty messages took
# seconds of template rendering on the hub, with no text to count).
OFFLOAD_MESSAGES = 256
_pools: dict[str, Any] = {}


def tokenize(
    tokenizer: ChatTokenizer,
    messages: list[dict],
    vision: list[VisionInput],
    limits,
    max_prompt_tokens: int = 0,
    tools: list[dict] | None = None,
    template_kwargs: dict | None = None,
) -> Prompt:
    """build_prompt, after a bound that costs nothing: no token is longer than the longest
    entry of the vocabulary (`max_token_bytes`), so text of n bytes is at least n / that
    many tokens -- 3 MB of digits is refused at once instead of after seconds of
    tokenizing and a gigabyte of token lists.  What passes is tokenized off the hub when
    it is large; a long conversation is measured off the hub too."""
    if len(messages) > OFFLOAD_MESSAGES:
        return off_hub(_tokenize, tokenizer, messages, vision, limits, max_prompt_tokens, tools, True, template_kwargs)
    return _tokenize(tokenizer, messages, vision, limits, max_prompt_tokens, tools, False, template_kwargs)


def _tokenize(
    tokenizer, messages, vision, limits, max_prompt_tokens, tools, in_thread: bool, template_kwargs=None
) -> Prompt:
    size = text_bytes(messages) + (
        len(json.dumps(tools, ensure_ascii=False).encode("utf-8", "surrogatepass")) if tools else 0
    )
    _check_bytes(tokenizer, size, limits, max_prompt_tokens, "messages", in_thread)
    if in_thread or size <= OFFLOAD_TEXT_BYTES:
        return build_prompt(tokenizer, messages, vision, tools, template_kwargs)
    return off_hub(build_prompt, tokenizer, messages, vision, tools, template_kwargs)


def tokenize_text(tokenizer: ChatTokenizer, prompt: str | Sequence[int], limits, max_prompt_tokens: int = 0) -> Prompt:
    """`tokenize` for a raw prompt (legacy completions): the same byte bound, then
    text_prompt (off the hub when large), then its length (worded for a prompt)."""
    if isinstance(prompt, str):
        size = len(prompt.encode("utf-8", "surrogatepass"))
        _check_bytes(tokenizer, size, limits, max_prompt_tokens, "prompt")
        out = text_prompt(tokenizer, prompt) if size <= OFFLOAD_TEXT_BYTES else off_hub(text_prompt, tokenizer, prompt)
    else:
        out = text_prompt(tokenizer, prompt)
    check_length(out, limits, max_prompt_tokens, "prompt")
    return out


def _check_bytes(
    tokenizer: ChatTokenizer, size: int, limits, max_prompt_tokens: int, what: str, in_thread: bool = False
) -> None:
    limit = prompt_limit(limits, max_prompt_tokens)
    longest = _MAX_TOKEN_BYTES.get(tokenizer) or (
        max_token_bytes(tokenizer) if in_thread else off_hub(max_token_bytes, tokenizer)
    )
    at_least = size // longest
    if at_least > limit:
        raise context_overflow(limit, at_least, what, f"{size} bytes of text")


def off_hub(fn, *args, pool: str = "tokenizer"):
    """fn(*args) in a thread of its own, the calling greenlet waiting (a plain call
    outside a gevent worker).  Each pool is one thread: "tokenizer" for everything that
    touches the tokenizer (not shared across threads), "request" for parsing and checking
    large request bodies.  fn runs in a copy of the caller's context, so Flask's
    application context is there as it is in the request."""
    try:
        from gevent import monkey
        from gevent.threadpool import ThreadPool
    except ImportError:
        return fn(*args)
    if not monkey.is_module_patched("threading"):
        return fn(*args)
    if pool not in _pools:
        _pools[pool] = ThreadPool(1)
    ok, value = _pools[pool].apply(_capture, (contextvars.copy_context().run, fn, *args))
    if ok:
        return value
    raise value


def _capture(fn, *args):
    """The outcome instead of an exception in the pool thread (gevent would print it)."""
    try:
        return True, fn(*args)
    except Exception as e:
        return False, e


def text_bytes(messages: list[dict]) -> int:
    """UTF-8 bytes of every text in the template messages."""
    total = 0
    for msg in messages:
        content = msg.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text") for p in content or ()]
        parts += [c["function"]["arguments"] for c in msg.get("tool_calls") or ()]
        parts.append(msg.get("reasoning_content"))
        total += sum(len(t.encode("utf-8", "surrogatepass")) for t in parts if isinstance(t, str))
    return total


_MAX_TOKEN_BYTES: weakref.WeakKeyDictionary[ChatTokenizer, int] = weakref.WeakKeyDictionary()


def max_token_bytes(tokenizer: ChatTokenizer) -> int:
    """Bytes of the longest vocabulary entry (special tokens included); computed once."""
    cached = _MAX_TOKEN_BYTES.get(tokenizer)
    if cached is None:
        special = {t.content for t in tokenizer.tok.get_added_tokens_decoder().values()}

        def length(piece: str) -> int:
            try:
                return len(piece.encode("utf-8")) if piece in special else len(_unbyte(piece))
            except KeyError:  # not a byte-level piece: its UTF-8 length is an upper bound anyway
                return len(piece.encode("utf-8"))

        cached = max(1, max(length(p) for p in tokenizer.tok.get_vocab(with_added_tokens=True)))
        _MAX_TOKEN_BYTES[tokenizer] = cached
    return cached
