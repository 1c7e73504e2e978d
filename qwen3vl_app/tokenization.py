"""What a request will cost, without running the model: POST /tokenize and /detokenize.

The prompt is built exactly as a generation builds it -- the same messages split
(prompt/messages.py), the same media fetched and preprocessed within the same budgets
(media/pipeline.py: mm_processor_kwargs, per-part controls, their range checks), the same
chat template and vision expansion (prompt/build.py) -- and then only counted: the engine
is asked for its limits and nothing else, and no generation slot is taken.

Plain Python like serving.py: no Flask, no sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import APIError
from .model_constants import PATCH_SIZE
from .prompt.build import tokenize, tokenize_text
from .prompt.messages import split_messages
from .prompt.template import check_length, prompt_limit
from .prompt.vision import vision_tokens
from .serving import resolve_media

if TYPE_CHECKING:
    from .engine.base import Prompt, VisionInput
    from .prompt.messages import MediaRef
    from .protocol import TokenizeRequest
    from .state import ServerState
    from .tokenizer import ChatTokenizer


def count_request(state: ServerState, req: TokenizeRequest) -> dict:
    """A validated /tokenize request (`messages` or `prompt`) -> vLLM's reply
    (`count`, `max_model_len`, `tokens`, `token_strs`) plus, as extensions, the prompt
    limit, the image/video token split and what became of each image and video."""
    engine = state.runner.wait_ready()
    tokenizer = state.tokenizer
    assert tokenizer is not None  # an unusable model folder never gets a ready engine
    settings = state.settings
    refs: list[MediaRef] = []
    if req.messages is not None:
        messages, refs = split_messages(req.messages, req.mm_processor_kwargs)
        vision = resolve_media(state, refs, engine, messages)
        tools = [dict(t) for t in req.tools] or None
        prompt = tokenize(tokenizer, messages, vision, engine.limits, settings.max_prompt_tokens, tools)
        check_length(prompt, engine.limits, settings.max_prompt_tokens)
    else:
        assert req.prompt is not None  # the schema asks for one of the two
        prompt = tokenize_text(tokenizer, req.prompt, engine.limits, settings.max_prompt_tokens)
    return reply(tokenizer, prompt, refs, engine.limits, settings.max_prompt_tokens, req.return_token_strs)


def reply(
    tokenizer: ChatTokenizer, prompt: Prompt, refs: list, limits, max_prompt_tokens: int, token_strs: bool
) -> dict:
    ids = list(prompt.input_ids)
    images, videos = vision_tokens(prompt.vision)
    return {
        "count": len(ids),
        "max_model_len": limits.max_context,
        "tokens": ids,
        "token_strs": [tokenizer.token_bytes(t).decode("utf-8", "replace") for t in ids] if token_strs else None,
        "max_prompt_tokens": prompt_limit(limits, max_prompt_tokens),
        "image_tokens": images,
        "video_tokens": videos,
        "media": [media_entry(i, v, refs[i].param if i < len(refs) else None) for i, v in enumerate(prompt.vision)],
    }


def media_entry(index: int, item: VisionInput, param: str | None) -> dict:
    """One image or video as the prompt holds it: its placeholder tokens, the source's size,
    the size it was resized to and, for a video, the frames sampled and the time of each
    2-frame block."""
    t, h, w = item.grid_thw
    width, height = item.source_size or (None, None)
    out: dict = {
        "index": index,
        "param": param,
        "type": item.kind,
        "tokens": item.num_tokens,
        "width": width,
        "height": height,
        "resized_width": w * PATCH_SIZE,
        "resized_height": h * PATCH_SIZE,
        "grid_thw": [t, h, w],
    }
    if item.kind == "video":
        out["frames"] = item.frames
        out["timestamps"] = [round(s, 3) for s in item.timestamps]
    return out


def detokenize(tokenizer: ChatTokenizer, ids: list[int]) -> dict:
    """vLLM's /detokenize: the text of these token ids, special tokens included."""
    bad = next((t for t in ids if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise APIError(
            f"token id {bad} is outside this model's vocabulary (0 to {tokenizer.vocab_size - 1})",
            400,
            "tokens",
            "invalid_value",
        )
    return {"prompt": tokenizer.decode(ids, skip_special=False)}
