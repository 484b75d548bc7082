"""gateway.engine.text: token bytes in, whole characters out, stop strings cut off."""

from __future__ import annotations

from gateway.engine.text import TextStream, incomplete_utf8_tail


def _feed(stream: TextStream, pieces: list[bytes]) -> list[bytes]:
    return [stream.push(p) for p in pieces]


def test_a_character_split_across_tokens_comes_out_whole():
    euro = "€".encode()  # three bytes
    stream = TextStream()

    out = _feed(stream, [b"a", euro[:1], euro[1:2], euro[2:] + b"b"])

    assert out == [b"a", b"", b"", euro + b"b"]
    assert b"".join(out).decode() == "a€b"


def test_incomplete_tail_counts_only_an_unfinished_character():
    assert incomplete_utf8_tail(b"abc") == 0
    assert incomplete_utf8_tail("é".encode()) == 0
    assert incomplete_utf8_tail("é".encode()[:1]) == 1
    assert incomplete_utf8_tail(b"x" + "😀".encode()[:3]) == 3
    assert incomplete_utf8_tail(b"\x80\x80") == 0  # stray continuation bytes are no character to wait for


def test_a_stop_string_across_tokens_ends_the_text_before_it():
    stream = TextStream(["###"])

    out = _feed(stream, [b"hello #", b"#", b"# world"])

    assert out == [b"hello ", b"", b""]
    assert stream.stopped and stream.data == b"hello "


def test_a_held_stop_prefix_is_released_when_it_turns_out_not_to_be_one():
    stream = TextStream(["</s>"])

    assert stream.push(b"a </") == b"a "
    assert stream.push(b"b>") == b"</b>"
    assert not stream.stopped


def test_flush_hands_out_what_was_held():
    stream = TextStream(["STOP"])
    stream.push(b"abc ST")

    assert stream.flush() == b"ST"
    assert stream.emitted == len(stream.data)
