"""Prometheus metrics, correct across gunicorn workers and worker restarts.

The gunicorn master points PROMETHEUS_MULTIPROC_DIR at a fresh folder before it forks
(`gunicorn_config.on_starting`); every worker then writes its values to its own mmap'd
files there, `GET /metrics` merges them, and the master drops a dead worker's live
gauges (`child_exit` -> `mark_process_dead`).  Counters and histograms of dead workers
are kept, so totals never go backwards when a worker restarts.

Without the variable (an app built outside our gunicorn config, unit tests) the same
metrics live in this process's default registry.

Every update happens in a request greenlet or the hub, never in the engine thread.
Other modules call the small functions below (e.g. `media_fetch_failed(reason)`), so
none of them imports prometheus_client directly.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import values as _values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

if os.environ.get(MULTIPROC_ENV) and not getattr(_values.ValueClass, "_multiprocess", False):
    # prometheus_client chose its value class when it was first imported; if that was
    # before the master set the variable, choose again (before any metric exists).
    _values.ValueClass = _values.get_value_class()

_LATENCY = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0)
_PER_TOKEN = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
_WAIT = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOTAL = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_OVERHEAD = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("qwen3vl_requests", "HTTP requests answered, by endpoint (route) and status", ["endpoint", "status"])
REQUEST_SECONDS = Histogram(
    "qwen3vl_request_duration_seconds",
    "whole request, first byte in to last byte out (streams included)",
    ["endpoint"],
    buckets=_TOTAL,
)
TTFT = Histogram(
    "qwen3vl_time_to_first_token_seconds",
    "request arrival to the first generated token (media, queue and prefill included)",
    ["endpoint"],
    buckets=_LATENCY,
)
TPOT = Histogram(
    "qwen3vl_time_per_output_token_seconds",
    "mean time between generated tokens after the first, one observation per request",
    ["endpoint"],
    buckets=_PER_TOKEN,
)
QUEUE_WAIT = Histogram("qwen3vl_queue_wait_seconds", "time a request waited for its worker's engine", buckets=_WAIT)
OVERHEAD = Histogram(
    "qwen3vl_server_overhead_seconds",
    "request time outside the engine and the queue (HTTP, JSON, media, prompt, streaming)",
    ["endpoint"],
    buckets=_OVERHEAD,
)
PROMPT_TOKENS = Counter("qwen3vl_prompt_tokens", "prompt tokens processed (media tokens included)", ["endpoint"])
COMPLETION_TOKENS = Counter("qwen3vl_completion_tokens", "tokens generated", ["endpoint"])
GENERATIONS = Counter("qwen3vl_generations", "finished generations by finish reason", ["finish_reason"])
REJECTED = Counter(
    "qwen3vl_requests_rejected",
    "requests refused with 503: server_full (--max_concurrent), worker_queue_full (--max-queue), shutting_down",
    ["reason"],
)
MEDIA_FETCH_FAILURES = Counter(
    "qwen3vl_media_fetch_failures", "media that could not be fetched or read, by reason", ["reason"]
)
IN_FLIGHT = Gauge(
    "qwen3vl_requests_in_flight",
    "generation requests admitted (holding a --max_concurrent ticket)",
    multiprocess_mode="livesum",
)
RUNNING = Gauge(
    "qwen3vl_requests_running", "generations running on an engine (= batch slots in use)", multiprocess_mode="livesum"
)
SLOTS = Gauge(
    "qwen3vl_engine_slots",
    "sequences the loaded engines can run at once (--max-batch per worker)",
    multiprocess_mode="livesum",
)
QUEUED = Gauge("qwen3vl_requests_queued", "requests waiting for their worker's engine", multiprocess_mode="livesum")
ENGINES_READY = Gauge("qwen3vl_engines_ready", "workers whose engine is loaded", multiprocess_mode="livesum")
ENGINE_LOAD_SECONDS = Gauge(
    "qwen3vl_engine_load_seconds", "seconds the worker took to load its engine (per pid)", multiprocess_mode="liveall"
)
VISION_CACHE = Counter("qwen3vl_vision_cache_lookups", "vision-encoder cache lookups, by result (hit/miss)", ["result"])
VISION_CACHE_BYTES = Gauge(
    "qwen3vl_vision_cache_bytes", "bytes held by the vision-encoder caches", multiprocess_mode="livesum"
)
CACHED_PROMPT_TOKENS = Counter(
    "qwen3vl_cached_prompt_tokens", "prompt tokens whose KV was reused from an earlier request (not prefilled again)"
)
DRAFT_TOKENS = Counter(
    "qwen3vl_draft_tokens", "speculative decoding: draft tokens verified, by result (accepted/rejected)", ["result"]
)
DRAFT_ACCEPTANCE = Gauge(
    "qwen3vl_draft_acceptance_ratio",
    "speculative decoding: share of this worker's verified draft tokens that were kept (since it started)",
    multiprocess_mode="liveall",
)
ENGINE_STEPS = Counter(
    "qwen3vl_engine_steps",
    "engine steps (prefill, decode or verify) that produced generated tokens, counted per request "
    "(a step shared by a batch counts once for each of its requests); completion tokens / this = tokens per step",
)
CAMERA_CONNECTED = Gauge(
    "qwen3vl_camera_connected",
    "workers whose reader of this camera is connected (one RTSP session each)",
    ["camera"],
    multiprocess_mode="livesum",
)
CAMERA_FRAMES = Counter("qwen3vl_camera_frames", "frames decoded from each camera", ["camera"])
CAMERA_FAILURES = Counter(
    "qwen3vl_camera_failures", "camera stream opens or reads that failed (each followed by a reconnect)", ["camera"]
)
WATCHES = Gauge("qwen3vl_watches_active", "watches running (POST /v1/watches)", multiprocess_mode="livesum")
WATCH_EVENTS = Counter("qwen3vl_watch_events", "answers sent by watches because they changed")
WATCH_ASKS = Counter("qwen3vl_watch_questions", "questions watches asked of the model")
WATCHES_REFUSED = Counter("qwen3vl_watches_refused", "watches refused, by reason", ["reason"])
ADMISSION_LIMIT = Gauge("qwen3vl_max_concurrent", "the --max_concurrent limit", multiprocess_mode="livemax")


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def render() -> tuple[bytes, str]:
    """The exposition text: every live and dead worker's values merged."""
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


# -- calls from other modules ----------------------------------------------------------


def media_fetch_failed(reason: str) -> None:
    """A media item could not be fetched/read (reason: a short code such as 'media_fetch_timeout')."""
    MEDIA_FETCH_FAILURES.labels(str(reason or "unknown")[:64]).inc()


def vision_cache(hit: bool) -> None:
    VISION_CACHE.labels("hit" if hit else "miss").inc()


def rejected(reason: str) -> None:
    REJECTED.labels(reason).inc()


_drafts = [0, 0]  # this process: accepted, rejected


def _observe_drafts(accepted: int, rejected: int) -> None:
    DRAFT_TOKENS.labels("accepted").inc(accepted)
    DRAFT_TOKENS.labels("rejected").inc(rejected)
    _drafts[0] += accepted
    _drafts[1] += rejected
    DRAFT_ACCEPTANCE.set(_drafts[0] / max(1, sum(_drafts)))


def engine_loaded(seconds: float, slots: int = 1) -> None:
    ENGINE_LOAD_SECONDS.set(seconds)
    ENGINES_READY.inc()
    SLOTS.inc(slots)


def engine_closed(slots: int = 1) -> None:
    ENGINES_READY.dec()
    SLOTS.dec(slots)


def observe_request(endpoint: str, status: int, seconds: float, stats=None, started: float | None = None) -> None:
    """One finished request; `stats` (serving.JobStats) for generations, `started`
    the monotonic time it arrived."""
    REQUESTS.labels(endpoint, str(status)).inc()
    REQUEST_SECONDS.labels(endpoint).observe(seconds)
    if stats is None:
        return
    if stats.queue_wait is not None:
        QUEUE_WAIT.observe(stats.queue_wait)
    if stats.prompt_tokens:
        PROMPT_TOKENS.labels(endpoint).inc(stats.prompt_tokens)
    if stats.cached_tokens:
        CACHED_PROMPT_TOKENS.inc(stats.cached_tokens)
    if stats.completion_tokens:
        COMPLETION_TOKENS.labels(endpoint).inc(stats.completion_tokens)
    if stats.finish_reason:
        GENERATIONS.labels(stats.finish_reason).inc()
    if stats.steps:
        ENGINE_STEPS.inc(stats.steps)
    if stats.drafted:
        _observe_drafts(stats.accepted, stats.drafted - stats.accepted)
    ttft = stats.ttft(started) if started is not None else None
    if ttft is not None:
        TTFT.labels(endpoint).observe(ttft)
    tpot = stats.tpot
    if tpot is not None:
        TPOT.labels(endpoint).observe(tpot)
    overhead = stats.overhead(seconds)
    if overhead is not None:
        OVERHEAD.labels(endpoint).observe(overhead)


_camera_seen: dict[str, tuple[int, int]] = {}


def camera_state(name: str, connected: bool, frames: int, failures: int) -> None:
    """A camera reader's figures (cumulative in the reader; counters get the difference)."""
    CAMERA_CONNECTED.labels(name).set(1 if connected else 0)
    seen_frames, seen_failures = _camera_seen.get(name, (0, 0))
    if frames > seen_frames:
        CAMERA_FRAMES.labels(name).inc(frames - seen_frames)
    if failures > seen_failures:
        CAMERA_FAILURES.labels(name).inc(failures - seen_failures)
    _camera_seen[name] = (max(frames, seen_frames), max(failures, seen_failures))
