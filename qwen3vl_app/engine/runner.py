"""Per-worker engine owner: one real OS thread runs the model, greenlets wait on it.

The engine is loaded after fork, in that thread, while the gevent hub keeps answering
(`/health` says "loading") and gunicorn's heartbeat keeps ticking.  Generations run one
at a time; up to `max_queue` more wait their turn, beyond that the caller is refused at
once so the client can retry elsewhere.

Up to `--max-batch` generations (lowered at load to what the engine can batch; 1 by
default) hold a turn at once.  Each joins the worker's `BatchScheduler`, whose loop runs
in the engine thread while any slot is busy and hands tokens back through one
`TokenChannel` per request: a generation costs no thread hand-off per token.  Loading
and closing the engine go through `call()`, which parks only the calling greenlet.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import contextmanager
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.threadpool import ThreadPool

from .. import metrics
from ..errors import EngineUnavailable, QueueFull
from ..settings import Settings
from .scheduler import BatchScheduler, SlotRequest

log = logging.getLogger("qwen3vl.runner")


class EngineRunner:
    def __init__(self, settings: Settings, load_fn):
        self.settings = settings
        self._load_fn = load_fn
        self._pool: ThreadPool | None = None
        self._ready = Event()
        self.max_batch = max(1, settings.max_batch)  # lowered at load to what the engine can batch
        self._turn = Semaphore(self.max_batch)
        self.scheduler: BatchScheduler | None = None
        self._loop: Any = None  # AsyncResult of the scheduler loop while it runs in the engine thread
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
            self._size_batch(engine)
            self.state = "ready"
            metrics.engine_loaded(self.load_seconds, self.max_batch)
            log.info(
                "engine %s ready on %s in %.1f s; %d slot(s) (--max-batch), %d more may queue (--max-queue)",
                engine.name,
                engine.device,
                self.load_seconds,
                self.max_batch,
                self.settings.max_queue,
            )
        except Exception as e:  # the worker stays up and reports the failure on /health
            self.state = "failed"
            self.error = f"{type(e).__name__}: {e}"
            log.exception("engine failed to load")
        finally:
            self._ready.set()

    def _size_batch(self, engine) -> None:
        """Lower the slot count to what the engine can batch; the surplus turns are taken
        for good, so admission counts the slots that really exist."""
        can = max(1, int(getattr(engine, "max_batch", 1)))
        if self.max_batch > can:
            log.warning(
                "engine %s runs at most %d sequence(s) per step: --max-batch %d lowered to %d",
                engine.name,
                can,
                self.max_batch,
                can,
            )
            surplus, self.max_batch = self.max_batch - can, can
            gevent.spawn(lambda: [self._turn.acquire() for _ in range(surplus)])
        self.scheduler = BatchScheduler(engine, self.max_batch)

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
            log.info(
                "shutting down: refusing new requests; %d running, %d queued get %.1f s to finish",
                self.running,
                self.waiting,
                max(0.0, grace - margin),
            )

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
            metrics.engine_closed(self.max_batch)
        if self._pool is not None:
            self._pool.kill()
            self._pool = None
        TokenChannel.shutdown()

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

    def join(
        self, prompt, params, eos_ids, cancel, constrain=None, speculative=0, prediction=(), steer=None
    ) -> TokenChannel:
        """Hand a generation to the scheduler (caller holds a turn and the engine is ready);
        its tokens arrive on the returned channel.  `constrain`, `speculative`,
        `prediction`, `steer`: see SlotRequest."""
        assert self.scheduler is not None
        channel = TokenChannel()
        channel.request = SlotRequest(
            prompt,
            params,
            eos_ids,
            cancel,
            channel.put,
            constrain=constrain,
            speculative=speculative,
            prediction=prediction,
            steer=steer,
        )
        self.scheduler.pending.append(channel.request)
        self._kick()
        return channel

    def _kick(self) -> None:
        if self._loop is None and self.scheduler is not None:
            self._loop = self.pool.spawn(self.scheduler.run_until_idle)
            self._loop.rawlink(self._loop_ended)

    def _loop_ended(self, result) -> None:
        """Hub side: the loop found nothing to do (or crashed).  Requests appended after its
        last look are still pending: start it again."""
        self._loop = None
        if self.scheduler is None:
            return
        if not result.successful():
            log.error("batch scheduler loop failed: %r", result.exception)
            for slot in self.scheduler.slots:  # never leave a request waiting on a dead loop
                if slot.request is not None:
                    slot.request.deliver(result.exception)
                    slot.request = None
        if self.scheduler.pending:
            self._kick()

    @contextmanager
    def turn(self):
        """Hold the engine for one generation (one of its slots with --max-batch), queueing
        behind at most max_queue others."""
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


class TokenChannel:
    """Engine thread -> one request greenlet.  `put` may be called from any thread; `get`
    parks only the calling greenlet.  gevent's patched queues and events must not cross
    threads, so items travel through a plain deque and the hub is woken by one libev
    async watcher shared by every channel of the worker (created on first use, in the hub)."""

    TIMEOUT = object()
    _outbox: deque = deque()  # (channel, item), appended by the engine thread
    _watcher: Any = None

    def __init__(self):
        self._items: deque = deque()
        self._wake = Event()
        self.request: SlotRequest | None = None
        if TokenChannel._watcher is None:
            TokenChannel._watcher = gevent.get_hub().loop.async_()
            TokenChannel._watcher.start(TokenChannel._dispatch)

    def put(self, item) -> None:
        TokenChannel._outbox.append((self, item))
        watcher = TokenChannel._watcher
        if watcher is not None:  # None once the worker is exiting
            watcher.send()

    @staticmethod
    def _dispatch() -> None:  # in the hub
        outbox = TokenChannel._outbox
        while outbox:
            channel, item = outbox.popleft()
            channel._items.append(item)
            channel._wake.set()

    @staticmethod
    def shutdown() -> None:
        """Release the watcher (worker exit): an active async watcher keeps the hub's loop,
        and so the worker process, alive."""
        watcher, TokenChannel._watcher = TokenChannel._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()

    def get(self, timeout: float | None = None):
        """The next item, or TIMEOUT when none came within `timeout` seconds."""
        while not self._items:
            self._wake.clear()
            if not self._wake.wait(timeout) and not self._items:
                return self.TIMEOUT
        return self._items.popleft()
