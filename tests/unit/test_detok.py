from qwen3vl_app.processing.detok import Detokenizer, StopMatcher
from qwen3vl_app.tokenizer import ChatTokenizer


def test_split_multibyte_never_yields_replacement(tiny_model_dir):
    tok = ChatTokenizer(tiny_model_dir)
    text = "🤖👨‍👩‍👧 世界 naïve"
    ids = tok.encode(text)
    # The emoji must really be split across tokens for this test to mean anything.
    assert any(tok.token_bytes(i) and not _valid_utf8(tok.token_bytes(i)) for i in ids)
    d = Detokenizer(tok)
    deltas = [d.push(i) for i in ids] + [d.flush()]
    assert "\ufffd" not in "".join(deltas)
    assert "".join(deltas) == text


def test_special_tokens_are_not_text(tiny_model_dir):
    tok = ChatTokenizer(tiny_model_dir)
    d = Detokenizer(tok)
    assert d.push(151645) == "" and d.push(151655) == ""


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


def _run(stops, pieces):
    m = StopMatcher(stops)
    out = []
    for p in pieces:
        out.append(m.push(p))
        if m.stopped:
            break
    out.append(m.flush())
    return "".join(out), m.stopped, out


def test_stop_across_pieces():
    text, stopped, out = _run(["END"], ["hello E", "N", "D tail"])
    assert text == "hello " and stopped
    assert out[0] == "hello "  # "E" held back, not emitted then retracted


def test_no_false_stop_releases_held_text():
    text, stopped, _ = _run(["END"], ["a E", "NX", " b"])
    assert text == "a ENX b" and not stopped


def test_earliest_of_several_stops():
    text, stopped, _ = _run(["xyz", "b"], ["aaxy", "zb"])
    assert text == "aa" and stopped


def test_no_stops_passthrough():
    assert _run([], ["a", "b"])[0] == "ab"
