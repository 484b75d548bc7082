"""Chat formats: the names a model's ``chat_format`` may take, the one a model chats in, and
which of them answer with tool calls.

A model chats in its configured ``chat_format`` (one of llama-cpp-python's registered formats, or
one of the GGUF's own templates by llama-cpp-python's name for it); without one, in the GGUF's
own template; and when the GGUF carries none, in ChatML, as llama.cpp's server does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

TEMPLATE_PREFIX = "chat_template."  # llama-cpp-python's names for a GGUF's templates
DEFAULT_TEMPLATE = "chat_template.default"  # tokenizer.chat_template
# What llama-server renders when the GGUF has no chat template (llama.cpp common/chat.cpp).
FALLBACK_CHAT_FORMAT = "chatml"
# The llama-cpp-python handlers that parse a model's answer back into OpenAI tool_calls; the
# others render at most the tools into the prompt and answer in text. (A GGUF's own template
# answers with tool_calls when it is of a family gateway.engine.tool_calls parses.)
TOOL_CALL_FORMATS = frozenset({"chatml-function-calling", "functionary", "functionary-v1", "functionary-v2"})


@functools.cache
def registered_chat_formats() -> tuple[str, ...]:
    """The chat formats llama-cpp-python registers (read once: importing it loads libllama)."""
    from llama_cpp import llama_chat_format

    # The registry has no public listing; its handlers are what Llama.create_chat_completion
    # looks a chat_format up in.
    return tuple(sorted(llama_chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers))


def chat_format_in_use(configured: str | None, templates: Sequence[str]) -> str:
    """The format a model chats in, given its configured one and its GGUF's template names."""
    if configured is not None:
        return configured
    return DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in templates else FALLBACK_CHAT_FORMAT


def chat_format_problem(configured: str | None, templates: Sequence[str]) -> str | None:
    """Why ``configured`` names no chat format of llama-cpp-python or of the model; None if it does."""
    if configured is None:
        return None
    allowed = [*registered_chat_formats(), *sorted(templates)]
    if configured in allowed:
        return None
    return f"{configured!r} (must be one of {', '.join(allowed)})"


def returns_tool_calls(chat_format: str) -> bool:
    """Whether chats in this format answer with OpenAI ``tool_calls``."""
    return chat_format in TOOL_CALL_FORMATS
