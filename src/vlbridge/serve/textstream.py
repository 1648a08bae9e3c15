"""Incremental text of a generated reply, with stop strings cut out as OpenAI's API does.

Streaming sends text as tokens arrive, but a token's text can change once the next one is known (a multi-byte
character split over tokens, a word piece), and a stop string must never reach the client, not even its first
characters. So each step decodes the whole reply, holds back any tail that could still begin a stop string, and sends
only the part of the text that can no longer change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """The reply's token ids so far and the text already sent; `push(token)` returns the new text that is safe."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str]) -> None:
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; the text that may now be sent (possibly ''); sets `stopped` once a stop string appeared."""
        self.ids.append(token)
        text = self.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(text[:cut])
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the token that completes it
            return ""
        return self._advance(text[: len(text) - self._held(text)])

    def flush(self) -> str:
        """At the end of the reply: whatever was held back for a stop string that never came."""
        return "" if self.stopped else self._advance(self.decode(self.ids))

    def _held(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _advance(self, text: str) -> str:
        """The part of `text` past what was sent, when `text` extends it (a decode that rewrote sent text waits)."""
        if not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent) :], text
        return piece

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return self.sent
