"""Assertions on OpenAI's error format, for requests' and Flask's test client responses."""

from __future__ import annotations

ERROR_KEYS = {"message", "type", "param", "code"}
LEAK_MARKERS = ("Traceback", 'File "', "0x7f", "object at 0x", "TOPSECRET")


def json_of(resp):
    """The decoded JSON body of a `requests` or a werkzeug test response."""
    return resp.get_json() if hasattr(resp, "get_json") else resp.json()


def text_of(resp) -> str:
    return resp.get_data(as_text=True) if hasattr(resp, "get_data") else resp.text


def openai_error(resp, status: int | None = None, code: str | None = None, param: str | None = None) -> dict:
    """The body is OpenAI's error object (with this status, code and param when given);
    its message leaks no traceback or object address.  Returns the inner object."""
    if status is not None:
        assert resp.status_code == status, (resp.status_code, text_of(resp)[:500])
    assert resp.headers.get("Content-Type", "").startswith("application/json"), dict(resp.headers)
    body = json_of(resp)
    assert isinstance(body, dict) and set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert not any(m in err["message"] for m in LEAK_MARKERS), err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err
