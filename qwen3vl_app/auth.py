"""API-key auth with flask-httpauth.

The key travels as `<prefix> <key>` in the configured header (old service: `Authorization:
Bearer <key>`); a custom header such as `X-API-Key` may carry the bare key.  Keys are
compared in constant time, several keys may be valid at once, and only a masked form
(first/last 4 characters) ever reaches a log.
"""
from __future__ import annotations

import hmac
import logging

from flask import g
from flask_httpauth import HTTPTokenAuth

from .errors import error_response
from .settings import OLD_DEFAULT_API_KEY, mask_key

log = logging.getLogger("qwen3vl.auth")


def build_auth(settings) -> HTTPTokenAuth:
    header = settings.api_header
    prefix = settings.api_prefix
    custom_header = header.lower() != "authorization"
    auth = HTTPTokenAuth(scheme=prefix, header=None if not custom_header else header)
    keys = [k.encode() for k in settings.api_keys()]
    enabled = not settings.disable_api_auth

    @auth.verify_token
    def verify(token: str):
        if not enabled:
            return "anonymous"
        if custom_header and prefix and token[: len(prefix) + 1].lower() == prefix.lower() + " ":
            token = token[len(prefix) + 1:]
        candidate = token.strip().encode()
        # Compare against every key so timing does not reveal which one (or whether any) matched.
        matched = None
        for key in keys:
            if hmac.compare_digest(candidate, key):
                matched = key
        if matched is None:
            return None
        g.key_id = mask_key(matched.decode())
        return g.key_id

    if not enabled:
        # Without a header flask-httpauth never calls verify(); let every request through.
        auth.get_auth = lambda: _Anonymous(prefix)

    @auth.error_handler
    def unauthorized(status):
        where = f"'{header}: {prefix} <key>'" if not custom_header else f"the '{header}' header"
        if status == 403:
            return error_response("This key may not use this endpoint.", 403)
        return error_response(f"Missing or invalid API key: send it in {where}.", 401, None, "invalid_api_key")

    return auth


class _Anonymous(dict):
    def __init__(self, scheme):
        super().__init__()
        self.type = scheme
        self.token = "anonymous"


def log_auth_config(settings) -> None:
    if settings.disable_api_auth:
        log.warning("API auth is DISABLED (--disable-api-auth): anyone who reaches the port can use the model")
        return
    keys = settings.api_keys()
    log.info("API auth: header %r, prefix %r, %d key(s): %s", settings.api_header, settings.api_prefix,
             len(keys), ", ".join(mask_key(k) for k in keys))
    if OLD_DEFAULT_API_KEY in keys:
        log.warning("the public default API key of the old service is in use; set QWEN3VL_API_KEY or "
                    "--api-key-file to your own key")
