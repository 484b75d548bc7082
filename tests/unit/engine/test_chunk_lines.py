"""A stream's Chunk lines from a template are the bytes the protocol's encode makes."""

from __future__ import annotations

import pytest

from gateway.engine.chunk_lines import ChunkLines
from gateway.engine.protocol import Chunk, encode


def _chunk(model: str):
    def make(index: int, text: str) -> dict:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1764892800,
            "model": model,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": None}],
        }

    return make


@pytest.mark.parametrize("text", ["", "a", "Hello, world", 'quote " and \\ back', "line\nbreak\ttab", "\x00\x1f ctl", "é日本🙂", "\u2028\u2029"])
@pytest.mark.parametrize("index", [0, 3])
def test_a_text_chunks_line_is_the_bytes_encode_makes_for_its_chunk(text, index):
    make = _chunk("/models/tiny.gguf")
    assert ChunkLines(7, make).text(index, text) == encode(Chunk(id=7, data=make(index, text)))


def test_a_model_name_that_holds_the_marker_still_gives_the_protocols_bytes():
    make = _chunk("odd\x00\x01text\x01\x00name")
    lines = ChunkLines(9, make)
    assert lines.text(0, "x") == encode(Chunk(id=9, data=make(0, "x")))
    assert lines.text(0, "\x00\x01text\x01\x00") == encode(Chunk(id=9, data=make(0, "\x00\x01text\x01\x00")))
