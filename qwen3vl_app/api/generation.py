"""Shared by the chat and media endpoints: request -> sampling parameters -> a running
generation (prompt built and checked, engine turn taken)."""
from __future__ import annotations

from flask import g

from ..chat_service import ChatJob, events
from ..engine.sampling import SamplingParams
from ..errors import APIError
from ..processing.prompt import build_prompt, check_length
from .common import run_guarded


def sampling_params(req: dict, defaults: dict, settings, greedy_only: bool) -> SamplingParams:
    """Request values win over the model folder's generation_config.json."""

    def pick(name, fallback):
        value = req.get(name)
        return fallback if value is None else value

    if req.get("logprobs") and greedy_only:
        raise APIError("This engine picks tokens on the device and returns no logits, so logprobs "
                       "are unavailable.", 400, "logprobs", "unsupported_parameter")
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or settings.max_tokens_default
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=pick("temperature", defaults.get("temperature", 1.0) if defaults.get("do_sample", True) else 0.0),
        top_p=pick("top_p", defaults.get("top_p", 1.0)),
        top_k=pick("top_k", defaults.get("top_k", 0)),
        repetition_penalty=pick("repetition_penalty", defaults.get("repetition_penalty", 1.0)),
        presence_penalty=pick("presence_penalty", 0.0),
        frequency_penalty=pick("frequency_penalty", 0.0),
        seed=req.get("seed"),
        logprobs=bool(req.get("logprobs")),
        top_logprobs=req.get("top_logprobs") or 0,
    )


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "presence_penalty",
                   "frequency_penalty", "seed")


def ignored_params(req: dict, greedy_only: bool) -> list[str]:
    """Sampling fields a device-greedy engine cannot honour; the response names them in
    `X-Ignored-Params` (and /v1/models lists the capabilities) instead of hiding it."""
    return [f for f in SAMPLING_FIELDS if greedy_only and req.get(f) is not None]


def start_generation(state, engine, messages, vision, req: dict, stops: list[str], stream: bool):
    """Build and check the prompt, then wait for this worker's engine (503 at once when its
    queue is full).  Returns the event iterator, already past ADMITTED."""
    settings = state.settings
    prompt = run_guarded(build_prompt, state.tokenizer, messages, vision)
    run_guarded(check_length, prompt, engine.limits, settings.max_prompt_tokens)
    params = sampling_params(req, state.tokenizer.generation_config, settings, not engine.capabilities.sampling)
    job = ChatJob(prompt, params, stops, settings.request_timeout)
    g.job_stats = job.stats  # TTFT, tokens, engine time: request log + metrics
    it = events(state.runner, state.tokenizer, job, settings.sse_keepalive if stream else None)
    run_guarded(next, it)
    return it
