"""What one worker knows about its model: tokenizer, engine runner, identity, keys."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .admission import Admission
from .engine import detect_engine, load_engine
from .engine.constraints import warm_up
from .engine.runner import EngineRunner
from .fault_injection import maybe_wrap
from .model_dir import is_demo
from .settings import Settings
from .tokenizer import ChatTokenizer

MODEL_ID = "qwen3-vl-instruct"  # the old service's model id; clients send it


@dataclass
class ServerState:
    settings: Settings
    tokenizer: ChatTokenizer | None  # None when the model folder is unusable (then every request is a 503)
    runner: EngineRunner
    engine_kind: str
    demo: bool
    admission: Admission
    api_keys: tuple[bytes, ...] = ()  # UTF-8, read once (the key file too)
    model_id: str = MODEL_ID
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def create(cls, settings: Settings) -> ServerState:
        admission = Admission.from_env(settings.max_concurrent)
        keys = tuple(k.encode("utf-8") for k in settings.api_keys())
        model_dir = Path(settings.model_dir)
        try:
            kind = settings.engine if settings.engine != "auto" else detect_engine(model_dir)
            tokenizer = ChatTokenizer(model_dir)
        except Exception as e:
            # The folder was checked when the server started, so it went away or became
            # unreadable since.  Boot anyway and report it (/health 503, requests 503): a
            # worker that fails to boot makes gunicorn halt the whole server, healthy workers
            # included -- which is what one worker crash did with the folder gone.
            logging.getLogger("qwen3vl").exception("model folder %s is unusable", model_dir)
            error = f"{type(e).__name__}: {e}"

            def unusable():
                raise RuntimeError(error)

            return cls(settings, None, EngineRunner(settings, unusable), settings.engine, False, admission, keys)
        # warm_up: constrained decoding's token trie, built while loading; maybe_wrap: the
        # test-only fault hook, inert unless QWEN3VL_FAULT_INJECT is set
        runner = EngineRunner(settings, lambda: warm_up(maybe_wrap(load_engine(settings, kind)), tokenizer))
        return cls(settings, tokenizer, runner, kind, is_demo(model_dir), admission, keys)

    def __post_init__(self):
        if self.settings.served_model_name:
            self.model_id = self.settings.served_model_name[0]

    @property
    def served_names(self) -> tuple[str, ...]:
        return self.settings.served_model_name or (self.model_id,)

    @property
    def demo_notice(self) -> str | None:
        if not self.demo:
            return None
        return "DEMO: random-weight tiny Qwen3-VL (built by `make tiny-model`); output is meaningless"
