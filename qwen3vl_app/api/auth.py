"""API-key auth with flask-httpauth.

The key travels as `<prefix> <key>` in the configured header (old service: `Authorization:
Bearer <key>`); a custom header such as `X-API-Key` may carry the bare key.  Keys are
compared in constant time, several keys may be valid at once, and only a masked form
(first/last 4 characters) ever reaches a log.

`auth` is built once, at import, so blueprints can declare their routes at import; the
header, prefix and keys are read from the serving app's settings on every request, so
several apps with different settings can live in one process.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import unicodedata

from flask import current_app, g, request
from flask_httpauth import HTTPTokenAuth
from werkzeug.datastructures import Authorization

from ..settings import OLD_DEFAULT_API_KEY, Settings, mask_key
from .errors import error_response

log = logging.getLogger("qwen3vl.auth")
ANONYMOUS = "anonymous"


def _settings() -> Settings:
    return current_app.extensions["qwen3vl"].settings


class ApiKeyAuth(HTTPTokenAuth):
    """flask-httpauth's token auth, with the header and prefix taken from the settings of
    the app serving the request.  The header is read as sent: werkzeug's own parser would
    take `Bearer a=b` for parameters and lose the key."""

    def get_auth(self) -> Authorization | None:
        settings = _settings()
        if settings.disable_api_auth:
            auth = Authorization(settings.api_prefix or "token")
            auth.token = ANONYMOUS
            return auth
        raw = request.headers.get(settings.api_header)
        if raw is None:
            return None
        token = raw.strip()
        prefix = settings.api_prefix
        has_prefix = bool(prefix) and token[: len(prefix) + 1].lower() == prefix.lower() + " "
        if has_prefix:
            token = token[len(prefix) + 1 :].strip()
        elif prefix and settings.api_header.lower() == "authorization":
            return None  # `Authorization` must name its scheme; a custom header may carry the bare key
        auth = Authorization(prefix or "token")
        auth.token = token
        return auth

    def authenticate_header(self) -> str:
        return f'{_settings().api_prefix or "ApiKey"} realm="{self.realm}"'


auth = ApiKeyAuth()


@auth.verify_token
def _verify(token: str) -> str | None:
    state = current_app.extensions["qwen3vl"]
    if state.settings.disable_api_auth:
        return ANONYMOUS
    try:  # WSGI hands headers over as Latin-1: back to the bytes the client sent (UTF-8 keys work)
        candidate = token.encode("latin-1")
    except UnicodeEncodeError:
        candidate = token.encode("utf-8", "surrogateescape")
    # Compare against every key so timing does not reveal which one (or whether any) matched.
    matched = None
    for key in state.api_keys:
        if hmac.compare_digest(candidate, key):
            matched = key
    if matched is None:
        return None
    g.key_id = mask_key(matched.decode("utf-8", "replace"))
    g.key_digest = hashlib.sha256(matched).digest()  # the key's cache scope (serving.cache_scope)
    return g.key_id


@auth.error_handler
def _unauthorized(status: int):
    settings = _settings()
    header, prefix = settings.api_header, settings.api_prefix
    where = f"'{header}: {prefix} <key>'" if header.lower() == "authorization" else f"the '{header}' header"
    if status == 403:
        return error_response("This key may not use this endpoint.", 403)
    return error_response(f"Missing or invalid API key: send it in {where}.", 401, None, "invalid_api_key")


def check_api_keys(settings: Settings, cli_keys: list[str] | None = None) -> None:
    """Refuse at start-up the keys no request could ever match (ValueError naming which, by
    its masked form).  The header value arrives stripped of surrounding whitespace and
    cannot carry control characters, so keys with either never match; a comma in a
    --api-key flag would split the key in two on its way to the workers (the variable is
    comma-separated): such keys belong in --api-key-file."""
    if settings.disable_api_auth:
        return
    problems = []
    for key in cli_keys or ():
        if "," in key:
            problems.append(f"{mask_key(key)!r} contains a comma (put it in --api-key-file instead)")
    try:
        keys = settings.api_keys()
    except OSError as e:
        raise ValueError(f"--api-key-file {settings.api_key_file!r} cannot be read: {e.strerror}") from None
    for key in dict.fromkeys([*(cli_keys or ()), *keys]):
        if key != key.strip():
            problems.append(f"{mask_key(key)!r} starts or ends with whitespace")
        if any(unicodedata.category(c) == "Cc" for c in key):
            problems.append(f"{mask_key(key)!r} contains control characters")
    if problems:
        raise ValueError("API key(s) that no request could match: " + "; ".join(problems))
    if not keys:
        raise ValueError("no API key configured: give --api-key / --api-key-file, or --disable-api-auth")


def log_auth_config(settings: Settings) -> None:
    if settings.disable_api_auth:
        log.warning("API auth is DISABLED (--disable-api-auth): anyone who reaches the port can use the model")
        return
    keys = settings.api_keys()
    log.info(
        "API auth: header %r, prefix %r, %d key(s): %s",
        settings.api_header,
        settings.api_prefix,
        len(keys),
        ", ".join(mask_key(k) for k in keys),
    )
    if OLD_DEFAULT_API_KEY in keys:
        log.warning(
            "the public default API key of the old service is in use; set QWEN3VL_API_KEY or "
            "--api-key-file to your own key"
        )
