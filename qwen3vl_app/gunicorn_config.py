"""gunicorn settings and hooks, shared by `gunicorn -c gunicorn.conf.py` and the CLI.

Workers are gevent workers; each builds the app (no --preload) and starts loading its
own engine right after fork, in its engine thread, while the hub already runs -- so a
slow model load never trips gunicorn's worker timeout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .settings import Settings


def options(settings: Settings) -> dict:
    return {
        "bind": [
            f"{settings.host}:{settings.port}" if ":" not in settings.host else f"[{settings.host}]:{settings.port}"
        ],
        "workers": settings.workers,
        "worker_class": "qwen3vl_app.worker.JSONErrorGeventWorker",  # gevent, errors in OpenAI's shape
        # Connections are cheap greenlets; a pool sized by the generation limit (64) let 300
        # idle connections -- no key needed -- keep /health waiting.  Each costs one fd.
        "worker_connections": worker_connections(),
        "timeout": 60,  # heartbeat; the hub stays free while the engine computes
        "graceful_timeout": settings.graceful_timeout,  # SIGTERM/HUP: in-flight generations get this long
        "keepalive": 5,
        "preload_app": False,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "errorlog": "-",
        "limit_request_field_size": 16384,
        "control_socket_disable": True,  # several servers (tests, benchmarks) may run side by side
        "on_starting": on_starting,
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "child_exit": child_exit,
        "on_exit": on_exit,
        "when_ready": when_ready,
    }


MAX_CONNECTIONS_PER_WORKER = 2000


def worker_connections() -> int:
    """Open connections one worker serves at once: MAX_CONNECTIONS_PER_WORKER, as far as the
    open-file limit allows (raised to its hard limit here, in the master, so workers inherit
    it; a margin stays for model files, logs and media)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_CONNECTIONS_PER_WORKER + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_PER_WORKER
    return max(64, min(MAX_CONNECTIONS_PER_WORKER, soft - 256))


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )


def on_starting(server) -> None:
    """Master, before any fork: the shared admission tickets and a fresh Prometheus
    multiprocess folder, both named in the environment the workers inherit.  Nothing here
    imports prometheus_client: it must see the variable when it is first imported."""
    import shutil

    from .admission import ENV_FILE, Admission, make_runtime_dir

    settings = Settings.from_env()
    runtime = make_runtime_dir(settings.runtime_dir)
    server._qwen3vl_runtime = runtime
    os.environ[ENV_FILE] = Admission.create_file(runtime, settings.max_concurrent)
    from .watches import WATCH_FILE_ENV

    watch_dir = os.path.join(runtime, "watches")  # the same kind of tickets, for --max-watches
    os.makedirs(watch_dir, exist_ok=True)
    os.environ[WATCH_FILE_ENV] = Admission.create_file(watch_dir, settings.max_watches)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir and metrics_dir == os.environ.get("_QWEN3VL_OWN_METRICS_DIR"):
        metrics_dir = None  # inherited from a previous master of ours (USR2 re-exec): make a new one
    if metrics_dir:  # the operator's folder: start it empty, stale files would corrupt totals
        os.makedirs(metrics_dir, exist_ok=True)
        for name in os.listdir(metrics_dir):
            if name.endswith(".db"):
                os.remove(os.path.join(metrics_dir, name))
    else:
        metrics_dir = os.path.join(runtime, "metrics")
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["_QWEN3VL_OWN_METRICS_DIR"] = metrics_dir


def child_exit(server, worker) -> None:
    """Master: a worker is gone (finished, killed or crashed): drop its live gauges and give
    back any admission ticket it still held."""
    from .admission import ENV_FILE, free_tickets_of

    path = os.environ.get(ENV_FILE)
    if path:
        freed = free_tickets_of(path, worker.pid)
        if freed:
            logging.getLogger("qwen3vl").warning(
                "worker %d died holding %d admission ticket(s); freed", worker.pid, freed
            )
    from .watches import WATCH_FILE_ENV

    if os.environ.get(WATCH_FILE_ENV):
        free_tickets_of(os.environ[WATCH_FILE_ENV], worker.pid)  # its watches ended with it
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    import shutil

    runtime = getattr(server, "_qwen3vl_runtime", None)
    if runtime:
        shutil.rmtree(runtime, ignore_errors=True)


def when_ready(server) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    from .api.auth import log_auth_config
    from .model_dir import is_demo

    log = logging.getLogger("qwen3vl")
    log.info(
        "serving %s on %s:%d with %d gevent worker(s)",
        settings.model_dir,
        settings.host,
        settings.port,
        settings.workers,
    )
    if is_demo(Path(settings.model_dir)):
        log.warning("=" * 72)
        log.warning("DEMO MODEL: %s holds a tiny RANDOM-WEIGHT Qwen3-VL. Output is meaningless.", settings.model_dir)
        log.warning(
            "For a real model: `make model` (the vendor's 2B build into ./models/qwen3vl_2b; "
            "MODEL=qwen3vl_4b for the 4B), then `make run`; or pass -m /path/to/model."
        )
        log.warning("=" * 72)
    log_auth_config(settings)
    log.info("playground: open %s in a browser", playground_url(settings))
    log.info(
        "admission: %d request(s) at once server-wide (-c), %d waiting per worker (--max-queue); "
        "graceful timeout %d s; metrics files in %s",
        settings.max_concurrent,
        settings.max_queue,
        settings.graceful_timeout,
        os.environ.get("PROMETHEUS_MULTIPROC_DIR", "-"),
    )
    reachable = settings.workers * (1 + settings.max_queue)
    if settings.max_concurrent > reachable:
        log.info(
            "at most %d generation requests are admitted at once: %d worker(s) x (1 running + %d queued)",
            reachable,
            settings.workers,
            settings.max_queue,
        )
    elif settings.max_concurrent < settings.workers:
        log.warning(
            "-c %d is below --workers %d: some engines can never be busy at the same time",
            settings.max_concurrent,
            settings.workers,
        )


def playground_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        return f"http://127.0.0.1:{settings.port}/ (or this machine's address, port {settings.port})"
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/"


def post_worker_init(worker) -> None:
    import signal

    configure_logging(Settings.from_env().log_level)
    # Ctrl-C in a terminal signals the whole process group: the master answers it (SIGQUIT
    # to every worker, one quick exit); a second, direct SIGINT would interrupt the
    # worker's clean-up half way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _return_big_blocks_to_the_os()
    state = worker.wsgi.extensions["qwen3vl"]
    state.runner.start_loading()
    import gevent

    gevent.spawn(_watch_shutdown, worker, state.runner, float(worker.cfg.graceful_timeout))


def _return_big_blocks_to_the_os() -> None:
    """glibc serves large allocations with mmap only below a threshold that grows with
    every large block freed (up to 32 MiB); past that, decoded images and token arrays come
    from the heap arenas and stay mapped after they are freed (2.8 GB stayed in a worker
    after three large PNGs).  A fixed 1 MiB threshold hands every large block back to the
    kernel on free.  No-op outside glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
        libc.mallopt(m_trim_threshold, 8 << 20)
    except (OSError, AttributeError):
        pass


def _watch_shutdown(worker, runner, grace: float) -> None:
    """SIGTERM (stop) or SIGHUP (reload: the master retires old workers with SIGTERM) sets
    worker.alive to False; from then on new generations are refused and running ones get
    `grace` seconds to finish while gunicorn keeps serving their connections."""
    import gevent

    while worker.alive:
        gevent.sleep(0.1)
    runner.begin_drain(grace)


def worker_exit(server, worker) -> None:
    """Release the engine, then leave at once.  A normal interpreter exit would wait for
    the threads that libraries started (a concurrent.futures pool, as gevent greenlets)
    and that can no longer run once the worker's hub is stopping: that wait cost 4-5 s on
    SIGTERM and, on Ctrl-C, hung until the master's SIGKILL.  Nothing else is left to do
    at that point: the master frees the admission tickets and metrics of a dead worker.
    A worker that failed to boot keeps its exit code (the master reads it)."""
    import sys

    exc = sys.exc_info()[1]
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("qwen3vl") if app is not None else None
    try:
        if state is not None:
            state.runner.close()
    finally:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(0)
