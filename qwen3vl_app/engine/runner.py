"""Per-worker engine owner: one real OS thread runs the model, greenlets wait on it.

The engine is loaded after fork, in that thread, while the gevent hub keeps answering
(`/health` says "loading") and gunicorn's heartbeat keeps ticking.  Generations run one
at a time; up to `max_queue` more wait their turn, beyond that the caller is refused at
once so the client can retry elsewhere.  Every engine call goes through `call()`, which
parks only the calling greenlet.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

from .. import metrics
from ..errors import EngineUnavailable, QueueFull
from ..settings import Settings

log = logging.getLogger("qwen3vl.runner")


class EngineRunner:
    def __init__(self, settings: Settings, load_fn):
        self.settings = settings
        self._load_fn = load_fn
        self._pool: ThreadPool | None = None
        self._ready = Event()
        self._turn = Semaphore(1)
        self.engine = None
        self.state = "idle"  # idle -> loading -> ready | failed
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.waiting = 0
        self.running = 0
        self.drain_deadline: float | None = None  # monotonic; set when the worker shuts down

    # -- lifecycle ---------------------------------------------------------------
    def start_loading(self) -> None:
        """Begin loading in the engine thread; returns at once.  Idempotent."""
        if self.state != "idle":
            return
        self.state = "loading"
        gevent.spawn(self._load)

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            engine = self.call(self._load_fn)
            self.engine = engine
            self.load_seconds = time.monotonic() - t0
            self.state = "ready"
            metrics.engine_loaded(self.load_seconds)
            log.info("engine %s ready on %s in %.1f s", engine.name, engine.device, self.load_seconds)
        except Exception as e:  # the worker stays up and reports the failure on /health
            self.state = "failed"
            self.error = f"{type(e).__name__}: {e}"
            log.exception("engine failed to load")
        finally:
            self._ready.set()

    def wait_ready(self):
        self.start_loading()
        if not self._ready.wait(self.settings.load_timeout):
            raise EngineUnavailable("the model is still loading; retry shortly")
        if self.engine is None:
            raise EngineUnavailable(f"the model failed to load: {self.error}")
        return self.engine

    @property
    def draining(self) -> bool:
        return self.drain_deadline is not None

    def begin_drain(self, grace: float) -> None:
        """The worker is shutting down: new requests are refused, running generations may go
        on until `grace` seconds from now (a little less, so they end cleanly before the
        master's kill)."""
        if self.drain_deadline is None:
            margin = min(2.0, grace * 0.25)
            self.drain_deadline = time.monotonic() + max(0.0, grace - margin)
            log.info("shutting down: refusing new requests; %d running, %d queued get %.1f s to finish",
                     self.running, self.waiting, max(0.0, grace - margin))

    def close(self) -> None:
        if self.state == "loading":  # stopped mid-load: let it finish, so the device is released cleanly
            self._ready.wait(float(self.settings.graceful_timeout))
        if self.engine is not None:
            engine, self.engine = self.engine, None
            try:
                self.call(engine.close)
                log.info("engine %s released", engine.name)
            except Exception:
                log.exception("engine close failed")
            metrics.engine_closed()
        if self._pool is not None:
            self._pool.kill()
            self._pool = None

    # -- execution ---------------------------------------------------------------
    @property
    def pool(self) -> ThreadPool:
        if self._pool is None:
            # One thread, never retired: it owns the model/device handle for the worker's life.
            self._pool = ThreadPool(1)
        return self._pool

    def call(self, fn, *args):
        """Run fn in the engine thread; only this greenlet waits."""
        return self.pool.apply(fn, args)

    def spawn(self, fn, *args):
        """Run fn in the engine thread; returns an AsyncResult to wait on with a timeout."""
        return self.pool.spawn(fn, *args)

    @contextmanager
    def turn(self):
        """Hold the engine for one generation, queueing behind at most max_queue others."""
        if self._turn.locked() and self.waiting >= self.settings.max_queue:
            metrics.rejected("worker_queue_full")
            raise QueueFull()
        self.waiting += 1
        metrics.QUEUED.inc()
        try:
            self._turn.acquire()
        finally:
            self.waiting -= 1
            metrics.QUEUED.dec()
        self.running += 1
        metrics.RUNNING.inc()
        try:
            yield self.wait_ready()
        finally:
            self.running -= 1
            metrics.RUNNING.dec()
            self._turn.release()
