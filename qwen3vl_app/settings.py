"""Every setting of the server, in one table: flag, environment variable, default.

The CLI turns flags into `QWEN3VL_*` environment variables before it starts gunicorn, and
each worker builds its `Settings` from the environment.  So `python -m qwen3vl_app ...`
and `gunicorn -c gunicorn.conf.py wsgi:app` with the same variables behave the same.
Precedence: flag > environment > default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

DEFAULT_MODEL_DIR = "./models/qwen3vl_2b"
OLD_DEFAULT_API_KEY = "abc@123"  # kept for compatibility with the old service; warned about
ENV_PREFIX = "QWEN3VL_"


def _bool(v) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def _list(v) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(v)
    return tuple(p.strip() for p in str(v).split(",") if p.strip())


@dataclass(frozen=True)
class Option:
    name: str  # attribute of Settings; env var is QWEN3VL_<NAME>
    flags: tuple[str, ...]
    default: object
    help: str
    kind: str = "str"  # str | int | float | bool | list | choice
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw):
        if self.kind == "int":
            return int(raw)
        if self.kind == "float":
            return float(raw)
        if self.kind == "bool":
            return _bool(raw)
        if self.kind == "list":
            return _list(raw)
        if self.kind == "choice" and raw not in self.choices:
            raise ValueError(f"{self.env}={raw!r}: choose one of {', '.join(self.choices)}")
        return str(raw)


OPTIONS: tuple[Option, ...] = (
    # --- flags of the old service: same names, short forms and defaults ---
    Option("model_dir", ("-m", "--model_dir"), DEFAULT_MODEL_DIR,
           "model folder: *.bmodel + config/ (BM1684X) or a Hugging Face checkpoint"),
    Option("max_concurrent", ("-c", "--max_concurrent"), 10,
           "most requests admitted at once across the server", "int"),
    Option("log_level", ("-l", "--log_level"), "INFO", "log level", "choice",
           ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Option("devid", ("-d", "--devid"), 0, "TPU device id", "int"),
    Option("video_ratio", ("-v", "--video_ratio"), 0.5,
           "0-1: share of the image pixel budget one video frame may use", "float"),
    Option("port", ("-p", "--port"), 8899, "listening port", "int"),
    Option("api_key", ("--api-key",), (OLD_DEFAULT_API_KEY,),
           "accepted API key; repeat the flag (or comma-separate the variable) for several", "list"),
    Option("api_header", ("--api-header",), "Authorization", "header that carries the key"),
    Option("api_prefix", ("--api-prefix",), "Bearer", "word before the key: '<prefix> <key>'"),
    Option("disable_api_auth", ("--disable-api-auth",), False, "turn auth off (testing only)", "bool"),
    # --- new ---
    Option("api_key_file", ("--api-key-file",), "",
           "file with one API key per line (preferred over --api-key on the command line)"),
    Option("workers", ("--workers",), 1, "gunicorn worker processes, each with its own engine", "int"),
    Option("host", ("--host",), "0.0.0.0", "listening address"),
    Option("engine", ("--engine",), "auto", "engine kind", "choice", ("auto", "bm1684x", "torch")),
    Option("max_queue", ("--max-queue",), 8,
           "requests one worker keeps waiting for its engine before answering 503", "int"),
    Option("request_timeout", ("--request-timeout",), 600.0,
           "seconds one generation may run before it ends with finish_reason 'length'", "float"),
    Option("max_tokens_default", ("--max-tokens-default",), 1024,
           "max_tokens when the request gives none (capped by the context)", "int"),
    Option("max_body_bytes", ("--max-body-bytes",), 64 * 1024 * 1024,
           "largest request body accepted (JSON or upload)", "int"),
    Option("torch_dtype", ("--torch-dtype",), "auto",
           "torch engine weights: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16", "choice",
           ("auto", "float32", "bfloat16")),
    Option("sse_keepalive", ("--sse-keepalive",), 10.0,
           "seconds between ': ping' comments on a stream while the prompt is being processed", "float"),
    Option("load_timeout", ("--load-timeout",), 900.0,
           "seconds a request waits for the worker's engine to finish loading", "float"),
    Option("disable_docs", ("--disable-docs",), False, "turn off /docs and /openapi.json (open by default)", "bool"),
    # --- operations (docs/operations.md) ---
    Option("graceful_timeout", ("--graceful-timeout",), 30,
           "seconds in-flight generations get to finish on SIGTERM/SIGHUP (then they end with "
           "finish_reason 'length' and the worker exits)", "int"),
    Option("metrics_auth", ("--metrics-auth",), False,
           "require the API key on GET /metrics (off: open, for a scraper on localhost)", "bool"),
    Option("runtime_dir", ("--runtime-dir",), "",
           "where the master keeps the shared admission counter and metrics files "
           "(default: a fresh folder in /dev/shm, else the temp dir)"),
    # --- media (docs/media.md) ---
    Option("allowed_local_media_path", ("--allowed-local-media-path",), (),
           "directory whose files (symlinks resolved) requests may name by local path or file://; "
           "repeatable; none = local paths refused", "list"),
    Option("allow_private_media_urls", ("--allow-private-media-urls",), False,
           "let media URLs reach loopback/private/link-local addresses (off: refused)", "bool"),
    Option("allowed_media_network", ("--allowed-media-network",), (),
           "non-public network (CIDR) media URLs may reach, e.g. 192.168.7.0/24; repeatable", "list"),
    Option("max_media_items", ("--max-media-items",), 16, "most images+videos in one request", "int"),
    Option("max_image_pixels", ("--max-image-pixels",), 16777216,
           "ceiling of the resized pixel budget per image (the engine may lower it)", "int"),
    Option("min_image_pixels", ("--min-image-pixels",), 65536, "default lower pixel budget per image", "int"),
    Option("max_source_pixels", ("--max-source-pixels",), 8192 * 8192,
           "largest source image / video frame (width x height) decoded at all", "int"),
    Option("max_video_frames", ("--max-video-frames",), 768, "most frames sampled from one video", "int"),
    Option("video_fps", ("--video-fps",), 2.0, "default frames per second sampled from videos", "float"),
    Option("max_prompt_tokens", ("--max-prompt-tokens",), 0,
           "longest prompt (media tokens included); 0 = what the engine accepts", "int"),
    Option("max_media_bytes", ("--max-media-bytes",), 64 * 1024 * 1024,
           "largest media file fetched, read or decoded from a data: URI", "int"),
    Option("media_fetch_timeout", ("--media-fetch-timeout",), 60.0,
           "seconds one media download may take in total", "float"),
)
_BY_NAME = {o.name: o for o in OPTIONS}


class _SettingsMethods:
    """Methods of `Settings`; its fields are generated from OPTIONS (one place to add a
    setting: a line in OPTIONS gives the flag, the variable, the default and the field)."""

    @classmethod
    def from_env(cls, environ=None):
        environ = os.environ if environ is None else environ
        values = {}
        for opt in OPTIONS:
            if opt.env in environ:
                values[opt.name] = opt.parse(environ[opt.env])
        return cls(**values)

    def api_keys(self) -> tuple[str, ...]:
        keys = list(self.api_key)
        if self.api_key_file:
            for line in Path(self.api_key_file).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(dict.fromkeys(k for k in keys if k))


Settings = make_dataclass(
    "Settings",
    [(o.name, object, field(default=o.default)) for o in OPTIONS],
    bases=(_SettingsMethods,),
    frozen=True,
)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen3vl-server",
        description="OpenAI-compatible Qwen3-VL server (BM1684X TPU or torch). "
        "Every flag also reads an environment variable QWEN3VL_<NAME>.",
    )
    for opt in OPTIONS:
        kw = {"dest": opt.name, "default": None, "help": f"{opt.help} (env {opt.env}; default {opt.default!r})"}
        if opt.kind == "bool":
            kw["action"] = "store_true"
        elif opt.kind == "list":
            kw["action"] = "append"
        elif opt.kind == "choice":
            kw["choices"] = opt.choices
        elif opt.kind in ("int", "float"):
            kw["type"] = int if opt.kind == "int" else float
        p.add_argument(*opt.flags, **kw)
    return p


def args_to_env(ns: argparse.Namespace, environ=None) -> None:
    """Write given flags into the environment, where workers read them."""
    environ = os.environ if environ is None else environ
    for opt in OPTIONS:
        value = getattr(ns, opt.name, None)
        if value is None:
            continue
        if opt.kind == "list":
            value = ",".join(value)
        elif opt.kind == "bool":
            value = "1" if value else "0"
        environ[opt.env] = str(value)


def mask_key(key: str) -> str:
    """First and last 4 characters only, as the old README recommended."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:4]}…{key[-4:]}"
