"""Every setting of the server, in one typed, frozen dataclass: each field carries its
flag(s), help and default; its environment variable is `QWEN3VL_<NAME>`.  Settings that
only one engine reads live in that engine's package (`engine/<name>/__init__.py`, its
`SPEC.settings` class) and reach it as `settings.engine_settings(name)`; their flags and
variables are gathered here with the rest.

The CLI turns flags into `QWEN3VL_*` environment variables before it starts gunicorn, and
each worker builds its `Settings` from the environment.  So `python -m qwen3vl_app ...`
and `gunicorn -c gunicorn.conf.py wsgi:app` with the same variables behave the same.
Precedence: flag > environment > default.  Nothing else in the package reads `QWEN3VL_*`
variables: a new setting is one field here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine import engine_specs
from .options import Option, options_of
from .options import opt as _opt

DEFAULT_MODEL_DIR = "./models/qwen3vl_2b"
OLD_DEFAULT_API_KEY = "abc@123"  # kept for compatibility with the old service; warned about


def _default_engine_settings() -> tuple[tuple[str, Any], ...]:
    return tuple((spec.name, spec.settings()) for spec in engine_specs())


@dataclass(frozen=True)
class Settings:
    # --- flags of the old service: same names, short forms and defaults ---
    model_dir: str = _opt(
        DEFAULT_MODEL_DIR,
        ("-m", "--model_dir"),
        "model folder: *.bmodel + config/ (BM1684X) or a Hugging Face checkpoint",
    )
    max_concurrent: int = _opt(10, ("-c", "--max_concurrent"), "most requests admitted at once across the server")
    log_level: str = _opt(
        "INFO", ("-l", "--log_level"), "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    )
    video_ratio: float = _opt(
        0.5, ("-v", "--video_ratio"), "0-1: share of the image pixel budget one video frame may use"
    )
    port: int = _opt(8899, ("-p", "--port"), "listening port")
    api_key: tuple[str, ...] = _opt(
        (OLD_DEFAULT_API_KEY,),
        ("--api-key",),
        "accepted API key; repeat the flag (or comma-separate the variable) for several",
        secret=True,
    )
    api_header: str = _opt("Authorization", ("--api-header",), "header that carries the key")
    api_prefix: str = _opt("Bearer", ("--api-prefix",), "word before the key: '<prefix> <key>'")
    disable_api_auth: bool = _opt(False, ("--disable-api-auth",), "turn auth off (testing only)")
    # --- new ---
    api_key_file: str = _opt(
        "", ("--api-key-file",), "file with one API key per line (preferred over --api-key on the command line)"
    )
    workers: int = _opt(1, ("--workers",), "gunicorn worker processes, each with its own engine")
    host: str = _opt("0.0.0.0", ("--host",), "listening address")
    engine: str = _opt("auto", ("--engine",), "engine kind", choices=("auto", *(spec.name for spec in engine_specs())))
    max_batch: int = _opt(
        1,
        ("--max-batch",),
        "sequences one worker's engine advances together (continuous batching); 1 = one at a "
        "time. A worker takes max-batch running + max-queue waiting requests (docs/operations.md)",
    )
    max_queue: int = _opt(8, ("--max-queue",), "requests one worker keeps waiting for its engine before answering 503")
    request_timeout: float = _opt(
        600.0, ("--request-timeout",), "seconds one generation may run before it ends with finish_reason 'length'"
    )
    body_timeout: float = _opt(
        60.0,
        ("--body-timeout",),
        "seconds a client has to send a generation request's whole body (slower: 408); no "
        "admission slot is taken before the body is in",
    )
    write_timeout: float = _opt(
        30.0,
        ("--write-timeout",),
        "seconds a client may leave a response (a stream chunk) unread before it is dropped and its "
        "generation cancelled",
    )
    max_tokens_default: int = _opt(
        1024, ("--max-tokens-default",), "max_tokens when the request gives none (capped by the context)"
    )
    max_body_bytes: int = _opt(
        64 * 1024 * 1024, ("--max-body-bytes",), "largest request body accepted (JSON or upload)"
    )
    sse_keepalive: float = _opt(
        10.0, ("--sse-keepalive",), "seconds between ': ping' comments on a stream while the prompt is being processed"
    )
    load_timeout: float = _opt(
        900.0, ("--load-timeout",), "seconds a request waits for the worker's engine to finish loading"
    )
    served_model_name: tuple[str, ...] = _opt(
        ("qwen3-vl-instruct",),
        ("--served-model-name",),
        "model name(s) requests may name (repeatable; the first is the one responses and /health "
        "report when a request names none); any other name is a 404 model_not_found",
    )
    disable_docs: bool = _opt(False, ("--disable-docs",), "turn off /docs and /openapi.json (open by default)")
    # --- operations (docs/operations.md) ---
    graceful_timeout: int = _opt(
        30,
        ("--graceful-timeout",),
        "seconds in-flight generations get to finish on SIGTERM/SIGHUP (then they end with "
        "finish_reason 'length' and the worker exits)",
    )
    metrics_auth: bool = _opt(
        False, ("--metrics-auth",), "require the API key on GET /metrics (off: open, for a scraper on localhost)"
    )
    runtime_dir: str = _opt(
        "",
        ("--runtime-dir",),
        "where the master keeps the shared admission counter and metrics files "
        "(default: a fresh folder in /dev/shm, else the temp dir)",
    )
    # --- media (docs/media.md) ---
    allowed_local_media_path: tuple[str, ...] = _opt(
        (),
        ("--allowed-local-media-path",),
        "directory whose files (symlinks resolved) requests may name by local path or file://; "
        "repeatable; none = local paths refused",
    )
    allow_private_media_urls: bool = _opt(
        False,
        ("--allow-private-media-urls",),
        "let media URLs reach loopback/private/link-local addresses (off: refused)",
    )
    allowed_media_network: tuple[str, ...] = _opt(
        (),
        ("--allowed-media-network",),
        "non-public network (CIDR) media URLs may reach, e.g. 192.168.7.0/24; repeatable",
    )
    max_media_items: int = _opt(16, ("--max-media-items",), "most images+videos in one request")
    max_image_pixels: int = _opt(
        16777216, ("--max-image-pixels",), "ceiling of the resized pixel budget per image (the engine may lower it)"
    )
    min_image_pixels: int = _opt(65536, ("--min-image-pixels",), "default lower pixel budget per image")
    max_source_pixels: int = _opt(
        8192 * 8192, ("--max-source-pixels",), "largest source image / video frame (width x height) decoded at all"
    )
    max_request_pixels: int = _opt(
        8192 * 8192,
        ("--max-request-pixels",),
        "most source image pixels one request may decode, summed over its images (memory bound)",
    )
    media_request_timeout: float = _opt(
        120.0, ("--media-request-timeout",), "seconds all media downloads of one request may take together"
    )
    max_video_frames: int = _opt(768, ("--max-video-frames",), "most frames sampled from one video")
    video_fps: float = _opt(2.0, ("--video-fps",), "default frames per second sampled from videos")
    max_prompt_tokens: int = _opt(
        0, ("--max-prompt-tokens",), "longest prompt (media tokens included); 0 = what the engine accepts"
    )
    max_media_bytes: int = _opt(
        64 * 1024 * 1024, ("--max-media-bytes",), "largest media file fetched, read or decoded from a data: URI"
    )
    media_fetch_timeout: float = _opt(60.0, ("--media-fetch-timeout",), "seconds one media download may take in total")

    # --- cameras and watches (docs/cameras.md) ---
    camera: tuple[str, ...] = _opt(
        (),
        ("--camera",),
        "a named camera NAME=rtsp://... that requests reach as camera://NAME; repeatable (a URL with "
        "credentials belongs in --camera-file, which keeps it off the command line)",
        secret=True,
    )
    camera_file: str = _opt("", ("--camera-file",), "file of cameras, one NAME=URL per line (# comments)")
    camera_connect_timeout: float = _opt(
        8.0, ("--camera-connect-timeout",), "seconds to open a camera stream (RTSP connect and first packets)"
    )
    camera_read_timeout: float = _opt(
        5.0, ("--camera-read-timeout",), "seconds without a frame before a camera counts as stalled and reconnects"
    )
    camera_idle_timeout: float = _opt(
        60.0, ("--camera-idle-timeout",), "seconds a camera's reader stays open after its last use"
    )
    camera_buffer_frames: int = _opt(
        8, ("--camera-buffer-frames",), "recent frames each camera reader keeps (decoded, full size)"
    )
    camera_clip_seconds: float = _opt(
        3.0, ("--camera-clip-seconds",), "length of a camera://NAME video clip when the request gives no duration"
    )
    camera_max_clip_seconds: float = _opt(
        20.0, ("--camera-max-clip-seconds",), "longest camera clip a request may ask for (duration)"
    )
    watch_min_interval: float = _opt(
        2.0, ("--watch-min-interval",), "shortest interval (seconds) a watch (POST /v1/watches) may ask for"
    )
    watch_max_duration: float = _opt(
        3600.0, ("--watch-max-duration",), "longest a watch runs (seconds); also its default duration"
    )
    max_watches: int = _opt(
        4,
        ("--max-watches",),
        "watches the server runs at once, all workers together (each also holds an admission ticket)",
    )
    max_watches_per_key: int = _opt(2, ("--max-watches-per-key",), "watches one API key may run at once per worker")

    prompt_cache_scope: str = _opt(
        "key",
        ("--prompt-cache-scope",),
        "who may reuse a prompt's cached work (prefix KV, vision-encoder outputs): key = requests "
        "with the same API key only; shared = every key (a request's cache_salt separates either way)",
        choices=("key", "shared"),
    )
    worker_pid_header: bool = _opt(
        False,
        ("--worker-pid-header",),
        "send X-Worker-Pid on every response (debugging, load-balancer checks); off: clients cannot "
        "tell which worker served them",
    )
    vision_cache_mb: int = _opt(
        256,
        ("--vision-cache-mb",),
        "per worker: MiB of vision-encoder outputs kept so a repeated image skips the encoder (0: off)",
    )
    max_schema_bytes: int = _opt(
        256 * 1024,
        ("--max-schema-bytes",),
        "largest JSON schema (response_format, or all tool parameters together) compiled into a grammar "
        "for constrained decoding; larger: 400 invalid_schema",
    )
    grammar_timeout: float = _opt(
        10.0,
        ("--grammar-timeout",),
        "seconds a request waits for its grammar (response_format, forced tool calls) to compile off the "
        "event loop; slower: 400 invalid_schema (compile thread too busy to start it: 503)",
    )
    speculative_tokens: int = _opt(
        0,
        ("--speculative-tokens",),
        "speculative decoding: tokens drafted per step from n-gram matches in the prompt and the text so "
        "far, verified in one engine step (0: off; at most 32; engines that cannot verify ignore it). "
        "Requests may override it (speculative_tokens); a request with `prediction` drafts 8 when this is 0",
    )
    default_thinking_budget: int = _opt(
        0,
        ("--default-thinking-budget",),
        "Thinking models: tokens of thinking a request may spend when it sets no thinking_budget; then the "
        "server closes the thinking (</think>) and the model answers. 0: unbounded (docs/thinking.md)",
    )
    loop_guard: bool = _opt(
        False,
        ("--loop-guard",),
        "stop a generation whose last tokens repeat one cycle for --loop-guard-span tokens (finish_reason "
        "'stop', marked stopped_by 'loop_guard'); a request's loop_guard field overrides it (docs/thinking.md)",
    )
    loop_guard_span: int = _opt(
        512, ("--loop-guard-span",), "tokens one repeated cycle must cover before the loop guard stops it"
    )
    # each engine's own settings (engine/<name>/__init__.py): (engine name, its settings object)
    engines: tuple[tuple[str, Any], ...] = field(default_factory=_default_engine_settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ

        def given(options: tuple[Option, ...]) -> dict[str, Any]:
            return {o.field: o.parse(environ[o.env]) for o in options if o.env in environ}

        engines = tuple(
            (spec.name, spec.settings(**given(options_of(spec.settings, spec.option_prefix))))
            for spec in engine_specs()
        )
        return cls(**given(options_of(cls)), engines=engines)

    def engine_settings(self, name: str) -> Any:
        """The settings object of engine `name` (its package's `SPEC.settings` class)."""
        return dict(self.engines)[name]

    def api_keys(self) -> tuple[str, ...]:
        keys = list(self.api_key)
        if self.api_key_file:
            for line in Path(self.api_key_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(dict.fromkeys(k for k in keys if k))


# Every option: the server's, then each engine's (the CLI shows those in their own group).
ENGINE_OPTIONS: tuple[tuple[str, tuple[Option, ...]], ...] = tuple(
    (spec.name, options_of(spec.settings, spec.option_prefix)) for spec in engine_specs()
)
OPTIONS: tuple[Option, ...] = options_of(Settings) + tuple(o for _, group in ENGINE_OPTIONS for o in group)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen3vl-server",
        description="OpenAI-compatible Qwen3-VL server (BM1684X TPU or torch). "
        "Every flag also reads an environment variable QWEN3VL_<NAME>.",
    )
    groups: dict[str, Any] = {}
    for name, group in ENGINE_OPTIONS:
        section = p.add_argument_group(f"{name} engine")
        groups.update((o.name, section) for o in group)
    for opt in OPTIONS:
        kw: dict[str, Any] = {
            "dest": opt.name,
            "default": None,
            "help": f"{opt.help} (env {opt.env}; default {opt.default!r})",
        }
        if opt.kind is bool:
            kw["action"] = "store_true"
        elif opt.kind is tuple:
            kw["action"] = "append"
        elif opt.choices:
            kw["choices"] = opt.choices
        elif opt.kind in (int, float):
            kw["type"] = opt.kind
        groups.get(opt.name, p).add_argument(*opt.flags, **kw)
    return p


def args_to_env(ns: argparse.Namespace, environ: MutableMapping[str, str] | None = None) -> None:
    """Write given flags into the environment, where workers read them."""
    environ = os.environ if environ is None else environ
    for opt in OPTIONS:
        value = getattr(ns, opt.name, None)
        if value is None:
            continue
        if opt.kind is tuple:
            value = ",".join(value)
        elif opt.kind is bool:
            value = "1" if value else "0"
        environ[opt.env] = str(value)


def mask_key(key: str) -> str:
    """First and last 4 characters only, as the old README recommended."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:4]}…{key[-4:]}"
