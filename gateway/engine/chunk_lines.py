"""A stream's Chunk messages as protocol lines, encoded from a template (issue 24).

Every chunk of a streamed completion is the same JSON but for its text: the line
``encode(Chunk(id=..., data=chunk))`` is encoded once with a marker for the text, cut in two
around it, and each token's line is then ``head + JSON string + tail``: the same bytes as
``gateway.engine.protocol.encode`` makes (tests/unit/engine/test_chunk_lines.py), without a
chunk dict, a Chunk struct and a whole encode per token. A chunk that is not plain text (a
finish, log-probabilities) is encoded whole, by ``encode``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from gateway.engine.protocol import Chunk, encode

# Encoded as "\u0000\u0001text\u0001\u0000": no name, id or model path holds it.
_MARKER = "\x00\x01text\x01\x00"
_MARKER_JSON = msgspec.json.encode(_MARKER)


class ChunkLines:
    """One stream's Chunk lines. ``make(text)`` is the chunk whose text is ``text`` (the data a
    plain text chunk carries); the template is made from it once per choice index."""

    def __init__(self, request_id: int, make: Callable[[int, str], dict[str, Any]]) -> None:
        """``make(index, text)``: the stream chunk of choice ``index`` with text ``text``, no
        log-probabilities, no finish reason."""
        self.request_id = request_id
        self._make = make
        self._templates: dict[int, tuple[bytes, bytes] | None] = {}
        self._text = msgspec.json.Encoder().encode

    def text(self, index: int, text: str) -> bytes:
        """The line of choice ``index``'s plain text chunk."""
        template = self._templates.get(index, False)
        if template is False:
            template = self._templates[index] = self._template(index)
        if template is None:
            return self.chunk(self._make(index, text))
        head, tail = template
        return head + self._text(text) + tail

    def chunk(self, data: dict[str, Any]) -> bytes:
        """The line of any chunk, encoded whole."""
        return encode(Chunk(id=self.request_id, data=data))

    def _template(self, index: int) -> tuple[bytes, bytes] | None:
        parts = self.chunk(self._make(index, _MARKER)).split(_MARKER_JSON)
        # The marker once, as the text: else every line of this choice is encoded whole.
        return (parts[0], parts[1]) if len(parts) == 2 else None
