"""TextStream: streamed text never shows a stop string or its start, and ends with everything held back."""

from __future__ import annotations

from vlbridge.serve.textstream import TextStream

PIECES = ["Hel", "lo", " wor", "ld", "!", " EN", "D", " more"]


def _decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_stop_string_cut_and_never_sent_partially() -> None:
    stream = TextStream(_decode, ["END"])
    sent = [stream.push(i) for i in range(7)]
    assert stream.stopped
    assert "".join(sent) == "Hello world! "
    assert all("E" not in piece for piece in sent)


def test_held_text_flushed_when_no_stop_follows() -> None:
    stream = TextStream(_decode, ["world!!"])
    sent = "".join(stream.push(i) for i in range(5))
    assert sent == "Hello "  # "world!" could still begin the stop string
    assert stream.flush() == "world!" and not stream.stopped
