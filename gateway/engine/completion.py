"""``create_completion`` on the batch engine, with llama-cpp-python's arguments and shapes.

The prompt's tokens, the defaults and the limits are llama-cpp-python 0.3.36's
(``Llama._create_completion``): so the chat handlers of llama_chat_format, which call
``llama.create_completion``, work unchanged on top of it (gateway.engine.chat), and the response
JSON keeps the shapes clients and tests know. What changes: logprobs work (the engine has every
sequence's logits), ``n`` choices share one prompt, and a generation never runs past its context
inside a UTF-8 character.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.engine.batching import BatchEngine
from gateway.engine.chunk_lines import ChunkLines
from gateway.engine.jobs import Delta, Finish, GenerationJob, JobReader, RequestScope, TokenLogprob
from gateway.engine.loading import LoadedModel
from gateway.engine.options import engine_options, options_class
from gateway.engine.sampling import SamplerChain, sampling_params
from gateway.engine.vocab import Vocab


# CompletionOptions' fields, built from the options' declarations; the class below adds ``of``.
_CompletionOptions: Any = options_class(
    "CompletionOptions",
    engine_options("completion"),
    first=[("prompt", str | list[int])],
    extra=[
        ("stream", bool, False),
        ("tfs_z", float, 1.0),  # taken and ignored: llama.cpp has no tail-free sampling any more
        ("model", str | None, None),
        ("stopping_criteria", Any, None),
        ("logits_processor", Any, None),
        ("grammar", Any, None),  # a LlamaGrammar (the chat handlers'), or GBNF text
    ],
    module=__name__,
    doc="A completion's arguments (see CompletionOptions).",
)


class CompletionOptions(_CompletionOptions):  # type: ignore[misc, valid-type]
    """The arguments of ``Llama.create_completion`` (llama-cpp-python 0.3.36), with its defaults,
    plus ``n``: one field per request option a completion takes (gateway.engine.options), and
    llama-cpp-python's own (stream, tfs_z, model, stopping_criteria, logits_processor, grammar)."""

    @classmethod
    def of(cls, params: dict[str, Any]) -> CompletionOptions:
        """A request's params as options; ValueError names an argument that is not one."""
        try:
            return cls(**params)
        except TypeError as exc:  # an unknown or missing argument is the request's fault
            raise ValueError(str(exc)) from None


@dataclass
class Started:
    """A submitted completion: its job and what its responses say about it."""

    job: GenerationJob
    reader: JobReader
    scope: RequestScope
    completion_id: str
    created: int
    model_name: str
    echo_text: str | None  # the prompt, when echo was asked for


def check_choices(n: int, slots: int) -> None:
    """``n`` choices take a slot each: ValueError when the model has fewer."""
    if n > slots:
        raise ValueError(f"n = {n} is more than this model's {slots} slot(s) (max_concurrency)")


def completion_prompt_tokens(vocab: Vocab, metadata: dict[str, str], prompt: str | list[int], suffix: str | None) -> list[int]:
    """The tokens llama-cpp-python 0.3.36 decodes for a completion prompt (and suffix).

    Its infill tokens are placeholders (token 0, "TODO: Fix" there); they are kept so a suffix
    gives the same prompt as before.
    """
    model = vocab.model
    bos_id, cls_id, sep_id = model.token_bos(), model.token_cls(), model.token_sep()
    prefix_id = middle_id = suffix_id = 0
    add_space_prefix = metadata.get("tokenizer.ggml.add_space_prefix", "true") == "true"
    bos_tokens = [cls_id if cls_id != -1 else bos_id]
    eos_tokens = [sep_id if sep_id != -1 else model.token_eos()]
    is_tokens = isinstance(prompt, list)
    if (is_tokens and suffix is None) or not model.add_bos_token() or bos_tokens[:1] == [-1]:
        bos_tokens = []
    if (is_tokens and suffix is None) or (not model.add_eos_token() and sep_id == -1):
        eos_tokens = []
    suffix_space_prefix = 0
    if add_space_prefix and suffix_id >= 0 and suffix:
        suffix = "☺" + suffix
        suffix_space_prefix = 2
    if isinstance(prompt, str):
        body = vocab.tokenize(prompt.encode("utf-8"), add_bos=False, special=(prefix_id < 0 or suffix is None)) if prompt else []
    else:
        body = list(prompt)
    prefix_tokens = ([prefix_id] if prefix_id >= 0 and suffix is not None else []) + body
    suffix_tokens = (
        [suffix_id] + (vocab.tokenize(suffix.encode("utf-8"), add_bos=False, special=False)[suffix_space_prefix:] if suffix else [])
        if suffix_id >= 0 and suffix is not None
        else []
    )
    middle_tokens = [middle_id] if middle_id >= 0 and suffix is not None else []
    return bos_tokens + prefix_tokens + suffix_tokens + middle_tokens + eos_tokens


class ChunkSink:
    """A streamed completion's job sink: each choice's text and end as its stream chunk's
    protocol line (the chunks ``Completions.stream`` yields, each as the Chunk message the
    worker writes), handed to ``out`` on the decode loop's thread. Plain text takes the
    template's way (gateway.engine.chunk_lines): no Delta, chunk dict or whole encode a token."""

    def __init__(self, completions: Completions, started: Started, lines: ChunkLines, out: Callable[[bytes], None]) -> None:
        self._completions = completions
        self._started = started
        self._lines = lines
        self._out = out

    def delta(self, choice: int, text: str, logprobs: tuple[TokenLogprob, ...]) -> None:
        if logprobs:
            self._out(self._lines.chunk(self._completions._chunk(self._started, choice, text, self._completions._logprobs(logprobs), None)))
        elif text:
            self._out(self._lines.text(choice, text))

    def finish(self, choice: int, reason: str, completion_tokens: int) -> None:
        if reason != "cancelled":
            self._out(self._lines.chunk(self._completions._chunk(self._started, choice, "", None, reason)))


class Completions:
    """Completions of one worker's model, decoded by its batch engine."""

    def __init__(self, engine: BatchEngine, loaded: LoadedModel, vocab: Vocab) -> None:
        self.engine = engine
        self.loaded = loaded
        self.vocab = vocab
        self.metadata: dict[str, str] = loaded.model.metadata()
        self.model_name = loaded.spec.model_path

    @property
    def n_ctx(self) -> int:
        return self.loaded.n_ctx_seq

    def create_completion(self, scope: RequestScope, **params: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """``Llama.create_completion(**params)`` on the batch engine: a whole response, or its
        stream chunks when ``stream``. ValueError names an argument it does not take."""
        options = CompletionOptions.of(params)
        started = self.start(scope, options)
        return self.stream(started) if options.stream else self.result(started)

    def start(
        self, scope: RequestScope, options: CompletionOptions, *, on_line: Callable[[bytes], None] | None = None, request_id: int = 0
    ) -> Started:
        """Check what the model decides (ValueError naming what is wrong), submit the job. The
        options' types and bounds were checked where they were parsed (gateway.engine.options);
        the sampler's are checked again before llama.cpp sees them. With ``on_line``, the
        decode loop hands it each stream chunk (as ``stream`` would yield them) as the protocol
        line of request ``request_id``'s Chunk message, on its own thread (ChunkSink);
        ``reader`` then sees only the job's end."""
        o = options
        prompt, suffix, n, logprobs, echo, stop, max_tokens = o.prompt, o.suffix, o.n, o.logprobs, o.echo, o.stop, o.max_tokens
        if o.logits_processor is not None:
            raise ValueError("logits_processor is not supported (the batch engine samples with llama.cpp's samplers)")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            raise ValueError("prompt must be a string or a list of token ids")
        check_choices(n, len(self.engine.slots))
        if echo and logprobs is not None:
            raise ValueError("echo with logprobs is not supported (the prompt's tokens have no logits here)")
        stops = [stop] if isinstance(stop, str) else list(stop or [])

        prompt_tokens = completion_prompt_tokens(self.vocab, self.metadata, prompt, suffix)
        self.vocab.check_tokens(prompt_tokens, "prompt")
        if not prompt_tokens:
            raise ValueError("the prompt is empty (and this model adds no BOS token)")
        n_ctx = self.n_ctx
        if len(prompt_tokens) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {n_ctx}")
        room = n_ctx - len(prompt_tokens)
        limit = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)

        params = sampling_params(o, grammar=o.grammar, n_vocab=self.vocab.n_vocab)
        chains: list[SamplerChain] = []
        try:
            for i in range(n):
                # n choices with one seed must still differ: one seed each.
                choice_params = params if o.seed is None or i == 0 else dataclasses.replace(params, seed=(params.seed + i) & 0xFFFFFFFF)
                chains.append(SamplerChain(choice_params, self.loaded.model.vocab, self.vocab.n_vocab))
        except BaseException:
            for chain in chains:
                chain.free()
            raise
        job = GenerationJob(
            accepted_at=scope.accepted_at,
            prompt=prompt_tokens,
            chains=chains,
            max_tokens=limit,
            stops=stops,
            logprobs=logprobs,
            text_offset=len(prompt),
            stopping_criteria=o.stopping_criteria,
            fresh_prompt=o.seed is not None,
        )
        echo_text = None
        if echo:
            echo_text = prompt if isinstance(prompt, str) else self.vocab.detokenize(prompt).decode("utf-8", errors="ignore")
        started = Started(
            job=job,
            reader=JobReader(job),
            scope=scope,
            completion_id=f"cmpl-{uuid.uuid4()}",
            created=int(time.time()),
            model_name=o.model if isinstance(o.model, str) else self.model_name,
            echo_text=echo_text,
        )
        if on_line is not None:
            job.sink = ChunkSink(self, started, ChunkLines(request_id, lambda index, text: self._chunk(started, index, text, None, None)), on_line)
        try:
            scope.register(job, self.engine.cancel)
        except BaseException:
            job.free_chains()
            raise
        self.engine.submit(job)
        scope.track(started.reader)
        return started

    # ------------------------------------------------------------------ shapes

    def _logprobs(self, entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any] | None:
        if not entries:
            return None
        text = self.vocab.text
        tops = []
        for e in entries:
            top = {text(token): lp for token, lp in e.top}
            top[text(e.token)] = e.logprob
            tops.append(top)
        return {
            "tokens": [text(e.token) for e in entries],
            "text_offset": [e.offset for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops,
        }

    def _chunk(self, started: Started, index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {
            "id": started.completion_id,
            "object": "text_completion",
            "created": started.created,
            "model": started.model_name,
            "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}],
        }

    def _chunk_for(self, started: Started, event: Delta | Finish, index: int) -> dict[str, Any] | None:
        """The stream chunk an event makes (at choice ``index``), or None when it makes none."""
        if isinstance(event, Delta):
            if event.text or event.logprobs:
                return self._chunk(started, index, event.text, self._logprobs(event.logprobs), None)
        elif event.reason != "cancelled":
            return self._chunk(started, index, "", None, event.reason)
        return None

    def stream(self, started: Started, choice: int | None = None) -> Iterator[dict[str, Any]]:
        """The job's stream chunks: every choice's (index = choice), or one choice's (index 0)."""
        reader = started.reader
        read_to_end = False
        try:
            while (event := reader.next(choice)) is not None:
                chunk = self._chunk_for(started, event, event.choice if choice is None else 0)
                if chunk is not None:
                    yield chunk
            read_to_end = True
        finally:
            if not read_to_end:
                self.engine.cancel(started.job)  # the consumer went away, or failed

    def result(self, started: Started, choice: int | None = None) -> dict[str, Any]:
        """The whole response: every choice, or one choice's (index 0) for a chat handler."""
        reader = started.reader
        n = started.job.n_choices
        texts: dict[int, list[str]] = {i: [] for i in range(n)}
        entries: dict[int, list[TokenLogprob]] = {i: [] for i in range(n)}
        finish: dict[int, str] = {}
        while (event := reader.next(choice)) is not None:
            if isinstance(event, Delta):
                texts[event.choice].append(event.text)
                entries[event.choice].extend(event.logprobs)
            elif isinstance(event, Finish):
                finish[event.choice] = event.reason
                if choice is not None:
                    break
        summary = reader.wait()
        wanted = range(n) if choice is None else [choice]
        choices = []
        for i in wanted:
            text = "".join(texts[i])
            if started.echo_text is not None:
                text = started.echo_text + text
            choices.append(
                {
                    "text": text,
                    "index": i if choice is None else 0,
                    "logprobs": self._logprobs(entries[i]) if started.job.logprobs is not None else None,
                    "finish_reason": finish.get(i, "stop"),
                }
            )
        return {
            "id": started.completion_id,
            "object": "text_completion",
            "created": started.created,
            "model": started.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": summary.prompt_tokens,
                "completion_tokens": summary.completion_tokens,
                "total_tokens": summary.prompt_tokens + summary.completion_tokens,
            },
        }
