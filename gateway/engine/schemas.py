"""JSON Schemas that a request asks the model to follow (a response_format's, a tool's parameters),
checked the way llama-cpp-python will turn them into a grammar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from gateway.errors import InvalidRequestError


def check_schema(schema: Any, where: str = "response_format.json_schema.schema", param: str = "response_format") -> None:
    """A JSON Schema (a response_format's, a tool's parameters) as llama-cpp-python will turn it
    into a grammar; an InvalidRequestError naming the field when it cannot. llama_chat_format
    would instead fall back to any JSON, silently (issue 21, item 11). A ``$ref`` outside the
    schema is refused too: the converter would fetch a URL for a request."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    for ref in _refs(schema):
        if not (isinstance(ref, str) and ref.startswith("#")):
            raise InvalidRequestError(f"'{where}': $ref {ref!r} is outside the schema (only '#...' references are followed)", param=param)
    try:
        json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - the converter reports a bad schema with asserts, KeyError, TypeError...
        raise InvalidRequestError(f"'{where}' is not a JSON Schema that can be followed: {type(exc).__name__}: {exc}", param=param) from None


def _refs(node: Any) -> Iterator[Any]:
    """Every ``$ref`` value in a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and not isinstance(value, (dict, list)):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)
