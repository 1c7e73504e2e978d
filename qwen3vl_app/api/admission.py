"""The HTTP side of admission (`admission.py` holds the server-wide tickets): a view
decorator that reads the body within --body-timeout, then takes a ticket for the whole
response or answers 503 at once, and gives the ticket back when the response closes."""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, request

from .. import metrics
from ..errors import APIError, ServerBusy


def admitted(view):
    """Hold a server-wide admission ticket for the whole response (a stream included); 503 at once when
    the server is full or this worker is shutting down.  Put it under `login_required`.
    The body is read first, within --body-timeout: a client dripping its body holds its
    own connection for that long at most, and never a ticket."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        state = current_app.extensions["qwen3vl"]
        read_body_in_time(state.settings.body_timeout)
        if state.runner.draining:
            metrics.rejected("shutting_down")
            raise ServerBusy("This server process is shutting down; retry shortly.", "server_shutting_down")
        ticket = state.admission.try_acquire()
        if ticket is None:
            metrics.rejected("server_full")
            raise ServerBusy(f"The server is at capacity ({state.admission.limit} requests at once); retry shortly.")
        g.admission_ticket = ticket
        metrics.IN_FLIGHT.inc()
        return view(*args, **kwargs)

    return wrapper


class _BodyTimeout(Exception):
    pass


def read_body_in_time(seconds: float) -> None:
    """Read the whole request body into the request (werkzeug keeps it for the JSON and
    form parsers) within `seconds`, or answer 408.  A body the HTTP layer cannot parse
    (a bad chunk size, a connection cut short) is a 400.  Either way the connection is
    closed after the answer: the rest of the body is never read."""
    try:
        from gevent import Timeout, monkey

        timer = Timeout(seconds, _BodyTimeout) if monkey.is_module_patched("socket") else None
    except ImportError:
        timer = None
    try:
        if timer is None:
            request.get_data(cache=True)
        else:
            with timer:
                _read_in_steps(request)
    except (_BodyTimeout, TimeoutError):
        g.close_connection = True
        raise APIError(
            f"The request body did not arrive within {seconds:g} s (--body-timeout).", 408, None, "request_timeout"
        ) from None
    except Exception as e:
        if not _is_http_parse_error(e):
            raise
        g.close_connection = True
        raise APIError(
            "The request body is malformed (bad chunked encoding, or the connection ended early).",
            400,
            None,
            "invalid_body",
        ) from None


BODY_STEP = 1 << 20  # bytes read between two turns of the event loop


def _read_in_steps(request) -> None:
    """The body in steps of BODY_STEP with a turn of the event loop between them (a 64 MB
    body already in the kernel's buffers takes ~0.5 s to read, which in one call would
    stall every other connection of the worker), kept where werkzeug's parsers look for it."""
    import gevent

    parts = []
    while chunk := request.stream.read(BODY_STEP):
        parts.append(chunk)
        if len(chunk) == BODY_STEP:  # more may follow: let the loop run first
            gevent.sleep(0.001)  # sleep(0) would not let the loop poll for I/O
    request._cached_data = b"".join(parts)


def _is_http_parse_error(e: Exception) -> bool:
    try:
        from gunicorn.http.errors import NoMoreData, ParseException
    except ImportError:
        return False
    return isinstance(e, (ParseException, NoMoreData))


def release_request_ticket(g) -> None:
    """When the response is closed (request_log): after the last byte of a stream too."""
    ticket = g.__dict__.pop("admission_ticket", None)
    if ticket is not None:
        ticket.release()
        metrics.IN_FLIGHT.dec()
