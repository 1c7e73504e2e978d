"""Decide which model folder to serve, before any worker starts.

An explicit folder (-m or QWEN3VL_MODEL_DIR) must exist and look like a model, or the
server refuses to start with a clear message.  With no explicit folder and nothing at the
old default path, the tiny random-weight demo model is built (or reused) and served --
loudly labelled as a demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from .engine import ModelFolderError, detect_engine
from .media.cameras import load_cameras
from .media.sources import parse_networks
from .model_constants import DEMO_MARKER
from .settings import DEFAULT_MODEL_DIR, OPTIONS
from .tokenizer import config_dir


class StartupError(SystemExit):
    def __init__(self, message: str):
        super().__init__(f"qwen3vl-server: error: {message}")


def resolve_model_dir(settings, environ=None):
    environ = os.environ if environ is None else environ
    explicit = next(o for o in OPTIONS if o.name == "model_dir").env in environ
    path = Path(settings.model_dir)
    if not explicit and settings.model_dir == DEFAULT_MODEL_DIR and not path.exists():
        path = build_demo_model()
        environ["QWEN3VL_MODEL_DIR"] = str(path)
    try:
        kind = detect_engine(path)
    except ModelFolderError as e:
        raise StartupError(str(e)) from None
    if settings.engine not in ("auto", kind):
        raise StartupError(f"--engine {settings.engine} does not match {path} (a {kind} model folder)")
    try:
        parse_networks(settings.allowed_media_network)  # a typo fails here, not on every request
        load_cameras(settings.camera, settings.camera_file)  # errors name the camera, never its URL
    except OSError as e:
        raise StartupError(f"--camera-file: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise StartupError(str(e)) from None
    return replace(settings, model_dir=str(path))


def build_demo_model() -> Path:
    """Run the tiny-model builder in a child process: the master never imports torch."""
    print(
        "qwen3vl-server: no model at ./models/qwen3vl_2b and no -m given; using the tiny "
        "RANDOM-WEIGHT demo model (output is meaningless).\n"
        "qwen3vl-server: for a real model: `make model` fetches the vendor's 2B BM1684X build into "
        "./models/qwen3vl_2b (`make model MODEL=qwen3vl_4b` the 4B, then -m ./models/qwen3vl_4b); "
        "or pass -m /path/to/model",
        file=sys.stderr,
    )
    out = subprocess.run(
        [sys.executable, "-m", "qwen3vl_app.devtools.tiny_model"], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def is_demo(model_dir: Path) -> bool:
    """The folder is the tiny random-weight demo model (`devtools/tiny_model.py` marks it)."""
    path = config_dir(Path(model_dir)) / DEMO_MARKER
    try:
        return bool(json.loads(path.read_text()).get("random_weights"))
    except (OSError, ValueError):
        return False
