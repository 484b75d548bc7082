"""Chat completions: llama-cpp-python's chat formats and handlers, generating on the batch engine.

llama_chat_format's handlers take a ``llama`` and call its ``tokenize`` and ``create_completion``
(then turn the completion into a chat completion, tool calls included). They get a
``ChatLlama``: the few members of ``llama_cpp.Llama`` that they use, with ``create_completion``
routed to the batch engine. ``Llama.create_chat_completion`` itself runs on it unchanged (it
picks the handler and passes the defaults), so every text chat format behaves as before. The
multimodal (llava) handlers, which evaluate image embeddings through ``Llama.eval``, are not
supported: a worker loads no CLIP model anyway.

``n`` > 1 runs the handler once per choice over one job of n choices: the first handler call
submits it, each later call reads its own choice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.config.chat_formats import DEFAULT_TEMPLATE, chat_format_in_use, returns_tool_calls
from gateway.engine.completion import CompletionOptions, Completions, Started, check_choices
from gateway.engine.jobs import RequestScope
from gateway.engine.schemas import check_schema
from gateway.engine.tool_calls import Family, family_of
from gateway.engine.tool_chat import ToolChat
from gateway.errors import InvalidRequestError


@dataclass(frozen=True)
class ChatSetup:
    """The model's chat format and the handlers of its GGUF chat templates (``Llama.__init__``),
    with each template's formatter and, where the gateway knows how its model writes tool
    calls, that family (gateway.engine.tool_calls)."""

    chat_format: str
    handlers: dict[str, Any]
    formatters: dict[str, Any] = field(default_factory=dict)
    tool_families: dict[str, Family] = field(default_factory=dict)


def chat_setup(model: Any, metadata: dict[str, str], chat_format: str | None) -> ChatSetup:
    """What ``llama_cpp.Llama.__init__`` (0.3.36) derives from the GGUF: a handler per chat
    template, and the format to use when the config names none: the GGUF's template (by the
    name of a built-in format when it is one of theirs), else ChatML as llama.cpp's server
    (gateway.config.chat_formats; Llama() would use llama-2)."""
    from llama_cpp import llama_chat_format

    eos_id, bos_id = model.token_eos(), model.token_bos()
    eos_token = model.token_get_text(eos_id) if eos_id != -1 else ""
    bos_token = model.token_get_text(bos_id) if bos_id != -1 else ""
    templates = {name[10:]: text for name, text in metadata.items() if name.startswith("tokenizer.chat_template.")}
    if "tokenizer.chat_template" in metadata:
        templates["chat_template.default"] = metadata["tokenizer.chat_template"]
    formatters = {
        name: llama_chat_format.Jinja2ChatFormatter(template=text, eos_token=eos_token, bos_token=bos_token, stop_token_ids=[eos_id])
        for name, text in templates.items()
    }
    handlers = {name: formatter.to_chat_handler() for name, formatter in formatters.items()}
    families = {name: family for name, text in templates.items() if (family := family_of(text)) is not None}
    in_use = chat_format_in_use(chat_format, list(templates))
    if chat_format is None and in_use == DEFAULT_TEMPLATE and DEFAULT_TEMPLATE not in families:
        # A template with tool calls stays the template: a built-in format's name for it
        # would render the tools no more.
        in_use = llama_chat_format.guess_chat_format_from_gguf_metadata(metadata) or DEFAULT_TEMPLATE
    return ChatSetup(in_use, handlers, formatters, families)


class _Fanout:
    """One job of n choices, read by n handler calls: call k reads choice k."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started: Started | None = None


class ChatLlama:
    """What llama_chat_format's handlers use of a ``llama_cpp.Llama``, for one request."""

    verbose = False  # handlers print to stderr when verbose
    chat_handler = None

    def __init__(self, completions: Completions, setup: ChatSetup, scope: RequestScope, fanout: _Fanout | None = None, choice: int = 0) -> None:
        self._completions = completions
        self._scope = scope
        self._fanout = fanout
        self._choice = choice
        self._calls = 0
        self.chat_format = setup.chat_format
        self._chat_handlers = setup.handlers

    def create_chat_completion(self, **kwargs: Any) -> Any:
        """``Llama.create_chat_completion`` itself, on this object: it picks the handler and
        calls it with llama=self."""
        from llama_cpp import Llama

        return Llama.create_chat_completion(self, **kwargs)  # type: ignore[arg-type]

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._completions.vocab.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int], prev_tokens: list[int] | None = None, special: bool = False) -> bytes:
        return self._completions.loaded.model.detokenize(tokens, special=special)

    def token_eos(self) -> int:
        return self._completions.vocab.eos

    def token_bos(self) -> int:
        return self._completions.vocab.bos

    def n_ctx(self) -> int:
        return self._completions.n_ctx

    def create_completion(self, **kwargs: Any) -> Any:
        self._calls += 1
        fanout = self._fanout
        if fanout is None:
            return self._completions.create_completion(self._scope, **kwargs)
        if self._calls > 1:
            raise ValueError(f"n > 1 is not supported with chat format {self.chat_format!r}: it makes several completions per answer")
        stream = bool(kwargs.pop("stream", False))
        if fanout.started is None:
            fanout.started = self._completions.start(self._scope, CompletionOptions(**kwargs, n=fanout.n))
        started = fanout.started
        if stream:
            return self._completions.stream(started, choice=self._choice)
        return self._completions.result(started, choice=self._choice)


class Chat:
    """Chat completions of one worker's model."""

    def __init__(self, completions: Completions, setup: ChatSetup) -> None:
        self.completions = completions
        self.setup = setup

    def signature_target(self) -> Any:
        """The callable whose signature a request's params must fit (besides n):
        ``Llama.create_chat_completion``'s, and OpenAI's ``parallel_tool_calls``."""
        import inspect

        from llama_cpp import Llama

        signature = inspect.signature(Llama.create_chat_completion)
        extra = inspect.Parameter("parallel_tool_calls", inspect.Parameter.KEYWORD_ONLY, default=None)

        def target(*args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("a signature only")

        target.__signature__ = signature.replace(parameters=[*signature.parameters.values(), extra])  # type: ignore[attr-defined]
        return target

    def _with_tools(self, params: dict[str, Any]) -> Family | None:
        """The family whose calls this chat's answer is parsed for (the GGUF template's), or
        None when llama_chat_format's handler answers; an InvalidRequestError when the tools
        would be ignored. Drops what that handler does not take."""
        parallel = params.pop("parallel_tool_calls", None)
        if not params.get("tools"):
            return None
        fmt = self.setup.chat_format
        choice = params.get("tool_choice") or "auto"
        if returns_tool_calls(fmt):
            return None  # llama-cpp-python's function-calling formats parse their calls
        if choice == "none":
            # The model is not to call: its template renders no tools (nor call syntax).
            params.pop("tools")
            params.pop("tool_choice", None)
            return None
        family = self.setup.tool_families.get(fmt)
        if family is not None:
            params["parallel_tool_calls"] = parallel
            return family
        if isinstance(choice, dict):
            return None  # llama_chat_format forces the named function's arguments with a grammar
        template = "its GGUF chat template" if fmt.startswith("chat_template.") else f"chat_format {fmt!r}"
        raise InvalidRequestError(
            f"this model cannot call tools with tool_choice {choice!r}: {template} writes no tool calls the gateway "
            "can parse (supported: the GGUF template of a Llama 3.x, Hermes/Qwen, Mistral or Functionary model, "
            "or chat_format chatml-function-calling / functionary); name one function in tool_choice to force "
            "its arguments, or leave tools out",
            param="tools",
        )

    def create(self, scope: RequestScope, params: dict[str, Any], stream: bool) -> dict[str, Any] | Iterator[dict[str, Any]]:
        params = dict(params)
        fmt = params.get("response_format")
        if isinstance(fmt, dict) and "schema" in fmt:
            check_schema(fmt["schema"])
        n = params.pop("n", 1)
        check_choices(n, len(self.completions.engine.slots))
        if params.get("logprobs") and params.get("top_logprobs") is None:
            # The handlers pass logprobs=top_logprobs, so logprobs=true alone would give none.
            params["top_logprobs"] = 0
        family = self._with_tools(params)
        if family is not None:
            if n > 1:
                raise InvalidRequestError("n > 1 cannot be combined with 'tools'", param="n")
            fmt = self.setup.chat_format
            return ToolChat(self.completions, self.setup.formatters[fmt], family).create(scope, params, stream)
        params["stream"] = stream
        if n == 1:
            return ChatLlama(self.completions, self.setup, scope).create_chat_completion(**params)
        fanout = _Fanout(n)
        answers = [ChatLlama(self.completions, self.setup, scope, fanout, k).create_chat_completion(**params) for k in range(n)]
        if stream:
            return _interleave(answers)
        merged = dict(answers[0])
        choices = []
        for k, answer in enumerate(answers):
            choice = dict(answer["choices"][0])
            choice["index"] = k
            choices.append(choice)
        merged["choices"] = choices
        return merged


def _interleave(streams: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """The choices' chunk streams in turn, each chunk's choice index set to its choice."""
    active = list(enumerate(streams))
    try:
        while active:
            for item in list(active):
                k, stream = item
                try:
                    chunk = next(stream)
                except StopIteration:
                    active.remove(item)
                    continue
                for choice in chunk.get("choices", ()):
                    choice["index"] = k
                yield chunk
    finally:
        for _, stream in active:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
