"""TEST-ONLY fault injection into the engine of a real server.  Off unless the environment
variable QWEN3VL_FAULT_INJECT names a trigger file; never set it in production.

With it set, the loaded engine is wrapped.  Before each engine step the wrapper looks for
the trigger file; when it exists and names that step, the file is removed (one shot) and
the step fails the way a broken device or model folder would:

  prefill | decode   the step raises RuntimeError (as a failing native call does)
  exit               the worker process dies on the spot (as a crash in native code does)

tests/resilience/test_faults.py writes the file, sends a request and checks the 500 /
error event and that the worker recovers (or is replaced).
"""

from __future__ import annotations

import logging
import os

ENV = "QWEN3VL_FAULT_INJECT"
log = logging.getLogger("qwen3vl.faults")


class InjectedFault(RuntimeError):
    pass


class FaultInjectingEngine:
    def __init__(self, engine, trigger: str):
        self._engine = engine
        self._trigger = trigger

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _maybe_fail(self, step: str) -> None:
        try:
            with open(self._trigger) as f:
                wanted = f.read().strip()
        except OSError:
            return
        if wanted != step:
            return
        try:
            os.unlink(self._trigger)
        except FileNotFoundError:
            return  # another worker took this one
        log.warning("injecting a fault into %s (%s is set: test only)", step, ENV)
        if step == "exit":
            os._exit(70)
        raise InjectedFault(f"injected fault in {step}")

    def prefill_slot(self, slot, prompt):
        self._maybe_fail("prefill")
        self._maybe_fail("exit")
        return self._engine.prefill_slot(slot, prompt)

    def decode_batch(self, tokens):
        self._maybe_fail("decode")
        return self._engine.decode_batch(tokens)


def maybe_wrap(engine):
    trigger = os.environ.get(ENV)
    if not trigger:
        return engine
    log.warning("%s is set: engine fault injection is armed (test only)", ENV)
    return FaultInjectingEngine(engine, trigger)
