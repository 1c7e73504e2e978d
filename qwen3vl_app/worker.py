"""The gunicorn worker class: gunicorn's gevent worker, answering in OpenAI's JSON shape.

Requests gunicorn itself refuses before the app sees them (a bad request line, a header
block over the limit, a URI over the limit, a bad chunk size) get gunicorn's HTML page by
default; clients of this server parse `{"error": {...}}`.  The status is the one gunicorn
chooses; only the body changes.  A client dropped for not reading its response in time
(the send timed out, see --write-timeout) is logged in one line, not with a traceback.
"""

from __future__ import annotations

import json
import logging

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.ggevent import GeventWorker

from .errors import error_body

log = logging.getLogger("qwen3vl.worker")

# gunicorn's status for each refusal it makes itself (its handle_error); others are 400.
_STATUS = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "The request line (URL) is too long.", "uri_too_long"),
    (
        http_errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "The request headers are too large or too many.",
        "headers_too_large",
    ),
    (
        http_errors.UnsupportedTransferCoding,
        501,
        "Not Implemented",
        "Unsupported Transfer-Encoding.",
        "unsupported_transfer_coding",
    ),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "Unsupported Expect header.", "expectation_failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "Request forbidden.", "forbidden"),
    (http_errors.ConfigurationProblem, 500, "Internal Server Error", "Server configuration problem.", "internal_error"),
    (
        (http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension),
        400,
        "Bad Request",
        "The chunked request body is malformed.",
        "invalid_body",
    ),
    (
        (http_errors.InvalidRequestLine, http_errors.InvalidRequestMethod, http_errors.InvalidHTTPVersion),
        400,
        "Bad Request",
        "The request line is malformed.",
        "invalid_request_line",
    ),
    (
        (http_errors.InvalidHeader, http_errors.InvalidHeaderName, http_errors.ObsoleteFolding),
        400,
        "Bad Request",
        "A request header is malformed.",
        "invalid_header",
    ),
)
_CLIENT_ERRORS = (http_errors.ParseException,)


def error_bytes(exc: BaseException) -> tuple[int, bytes]:
    """(status, whole HTTP response) for an exception gunicorn met while parsing."""
    if isinstance(exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
        status, reason, message, code = 500, "Internal Server Error", "Internal server error.", "internal_error"
    else:
        match = next((row[1:] for row in _STATUS if isinstance(exc, row[0])), None)
        if match is not None:
            status, reason, message, code = match
        else:
            if isinstance(exc, _CLIENT_ERRORS) or type(exc).__name__ == "SSLError":
                status, reason, message, code = 400, "Bad Request", "The request is malformed.", "invalid_request"
            else:
                status, reason, message, code = 500, "Internal Server Error", "Internal server error.", "internal_error"
    body = json.dumps(error_body(message, status, None, code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    return status, head + body


def _discard_pending(sock, limit: int = 256 * 1024) -> None:
    """Read what the client already sent (without waiting): closing a socket with unread
    input sends a reset, which can destroy the answer before the client reads it."""
    sock.setblocking(0)
    try:
        while limit > 0:
            chunk = sock.recv(65536)
            if not chunk:
                break
            limit -= len(chunk)
    except OSError:
        pass
    finally:
        sock.setblocking(1)


class JSONErrorGeventWorker(GeventWorker):
    def handle_error(self, req, client, addr, exc):
        status, data = error_bytes(exc)
        if status >= 500:
            self.log.exception("Error handling request")
        else:  # repr: the client's bytes, escaped
            self.log.warning("Invalid request from ip=%s: %r", (addr or ("",))[0], str(exc)[:200])
        try:
            util.write_nonblock(client, data)  # never wait: the connection is closed next anyway
            _discard_pending(client)
        except Exception:
            self.log.debug("Failed to send error message.")

    def handle_request(self, listener_name, req, sock, addr):
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            log.info("client did not take the response within the write timeout; connection dropped")
            raise StopIteration() from None
