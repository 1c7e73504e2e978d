"""Token ids -> text, incrementally, and stop strings matched across token boundaries.

A token may end in the middle of a multi-byte UTF-8 character (emoji, CJK are often split
over two or three byte-level tokens).  `Detokenizer` keeps such bytes back until the
character completes, so a stream never shows U+FFFD for a split character and never
sends an empty delta.
"""

from __future__ import annotations

import codecs


class Detokenizer:
    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._special = tokenizer.special_ids

    def push(self, token_id: int) -> str:
        if token_id in self._special:
            return ""  # end/vision/control tokens are not text
        return self._utf8.decode(self._tok.token_bytes(token_id))

    def flush(self) -> str:
        """End of output: bytes of a character the model never finished are dropped rather
        than shown as U+FFFD."""
        self._utf8.reset()
        return ""


class StopMatcher:
    """Holds back just enough text to recognise a stop string that spans deltas; the stop
    string itself and anything after it are never emitted."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if not self.stops:
            return text
        if self.stopped:
            return ""
        buf = self._pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(hits)]
        keep = self._longest_partial(buf)
        self._pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _longest_partial(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best
