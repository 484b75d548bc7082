"""gateway.engine.decode_thread, and the decode loop that takes a step's text beside the next decode.

The engine's tests run a tiny random-weight model in this process (the worker's protocol and
processes are tests/system/test_batching.py's): the same requests with the overlap on every step
and without it must send the same text, ends and token counts.
"""

from __future__ import annotations

import threading

import msgspec
import pytest

from gateway.engine.decode_thread import DecodeThread
from testkit.ggufmaker import write_tiny_llama


def test_a_decode_runs_on_its_own_thread_while_the_caller_works_and_its_result_comes_back():
    entered, release = threading.Event(), threading.Event()
    threads = []

    def decode() -> int:
        threads.append(threading.current_thread())
        entered.set()
        release.wait(30)
        return 7

    decoder = DecodeThread(decode)
    try:
        decoder.start()
        assert entered.wait(30)  # start returned with the decode under way, not before it began
        assert threads[0] is not threading.current_thread()
        release.set()
        assert decoder.wait() == 7
        release.clear()
        entered.clear()
        decoder.start()
        release.set()
        assert decoder.wait() == 7
    finally:
        decoder.close()


def test_a_failing_decode_raises_in_the_caller_and_the_thread_takes_the_next_one():
    results = iter([RuntimeError("decode broke"), 0])

    def decode() -> int:
        r = next(results)
        if isinstance(r, BaseException):
            raise r
        return r

    decoder = DecodeThread(decode)
    try:
        decoder.start()
        with pytest.raises(RuntimeError, match="decode broke"):
            decoder.wait()
        decoder.start()
        assert decoder.wait() == 0
    finally:
        decoder.close()


def test_a_second_start_before_the_wait_is_refused():
    release = threading.Event()
    decoder = DecodeThread(lambda: int(release.wait(30)))
    try:
        decoder.start()
        with pytest.raises(RuntimeError, match="while the last one is"):
            decoder.start()
        release.set()
        assert decoder.wait() == 1
    finally:
        decoder.close()


# ---------------------------------------------------------------- the decode loop, pipelined or not


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from gateway.engine import loading
    from gateway.engine.protocol import WorkerSpec
    from gateway.engine.vocab import Vocab

    path = write_tiny_llama(tmp_path_factory.mktemp("pipeline") / "tiny.gguf", n_layers=2, n_embd=64, ctx=256)
    loaded = loading.load(WorkerSpec(name="tiny", model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, slots=12))
    yield loaded, Vocab(loaded.model)
    loaded.close()


PROMPTS = ["The capital of France is", "Water boils at", "1 2 3 4", "A haiku:", "Once upon a time", "ab" * 9]


def _serve(tiny_model, requests: list[dict], pipeline_min_tokens: int | None):
    """Every request at once through one BatchEngine: per request, its streamed lines (the
    worker's sink) or its whole result, and whether any step's text ran beside a decode."""
    from llama_cpp import llama_cpp as capi

    from gateway.engine.batching import BatchEngine
    from gateway.engine.completion import CompletionOptions, Completions
    from gateway.engine.jobs import RequestScope
    from gateway.engine.step_profile import StepProfiler

    loaded, vocab = tiny_model
    capi.llama_memory_clear(capi.llama_get_memory(loaded.ctx), True)
    lines: dict[int, list[tuple[str, str | None]]] = {i: [] for i in range(len(requests))}
    pending: list[bytes] = []
    lock = threading.Lock()

    def flush() -> None:
        with lock:
            for line in pending:
                message = msgspec.json.decode(line)
                choice = message["data"]["choices"][0]  # a chunk's id and creation time differ by run
                lines[message["id"]].append((choice["text"], choice["finish_reason"]))
            pending.clear()

    profiler = StepProfiler()
    engine = BatchEngine(loaded, vocab, after_step=flush, profiler=profiler, pipeline_min_tokens=pipeline_min_tokens)
    completions = Completions(engine, loaded, vocab)
    started = []
    for i, params in enumerate(requests):
        options = CompletionOptions.of(params)

        def queue(line: bytes) -> None:
            with lock:
                pending.append(line)

        started.append((options, completions.start(RequestScope(i), options, on_line=queue if options.stream else None, request_id=i)))
    engine.start()
    try:
        out = []
        for i, (options, s) in enumerate(started):
            if options.stream:
                summary = s.reader.wait()
                out.append(("stream", lines[i], summary.completion_tokens))
            else:
                result = completions.result(s)
                out.append(("whole", [c["text"] for c in result["choices"]], [c["finish_reason"] for c in result["choices"]], result["usage"]))
    finally:
        engine.stop()
    return out, profiler.report().overlapped_s > 0


@pytest.mark.llama
def test_text_taken_beside_the_next_decode_sends_what_the_step_by_step_loop_sends(tiny_model):
    eog_bias = {}  # none: some streams may end on an end-of-generation token
    base = [
        {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 6 + 5 * i, "temperature": 0, "stream": i % 3 != 2, "logit_bias": eog_bias}
        for i in range(12)
    ]
    plain, overlapped = _serve(tiny_model, base, None)
    assert not overlapped
    # Stop strings from the texts themselves, so that some streams end on one mid-way (a stop
    # found in a deferred step's text ends its stream a step late: what is sent must not change).
    texts = ["".join(text for text, _ in r[1]) if r[0] == "stream" else r[1][0] for r in plain]
    requests = []
    for i, (params, text) in enumerate(zip(base, texts)):
        if i % 2 == 0 and len(text) > 6:
            params = {**params, "stop": [text[len(text) // 2 : len(text) // 2 + 2]]}
        requests.append(params)
    assert any("stop" in r for r in requests)

    step_by_step, overlapped = _serve(tiny_model, requests, None)
    assert not overlapped
    pipelined, overlapped = _serve(tiny_model, requests, 1)
    assert overlapped  # the text of most steps ran beside the next decode
    assert pipelined == step_by_step
    finishes = [finish for r in step_by_step if r[0] == "stream" for _, finish in r[1] if finish]
    assert "stop" in finishes and "length" in finishes


def test_text_goes_beside_the_decode_only_where_the_decodes_threads_leave_a_core():
    from gateway.engine.decode_thread import PIPELINE_MIN_TOKENS, overlap_threshold

    assert overlap_threshold(1, 2) == PIPELINE_MIN_TOKENS  # a CPU model on one of two cores
    assert overlap_threshold(2, 16) == PIPELINE_MIN_TOKENS  # a model on GPUs: two threads of sixteen
    assert overlap_threshold(2, 2) is None  # every core decodes: the loop's work would stall it
    assert overlap_threshold(4, 2) is None


def _end_a_stream_a_step_late_then_fail_its_decode(tiny_model, prompts: list[str], ret: int):
    """The prompts' greedy streams, the first prompt's with a stop string found mid-way, through
    a pipelined engine whose decode returns ``ret`` once: on the decode of the step whose
    deferred text ended a stream (1: before writing any cell, as for a full KV pool; otherwise
    after decoding, as when a later ubatch of the batch fails). The engine (stopped), each
    request's finish reasons or its error, and whether the decode failed."""
    from types import SimpleNamespace

    from llama_cpp import llama_cpp as capi

    from gateway.engine.batching import BatchEngine
    from gateway.engine.completion import CompletionOptions, Completions
    from gateway.engine.jobs import RequestScope

    loaded, vocab = tiny_model
    base = [{"prompt": prompt, "max_tokens": 24, "temperature": 0} for prompt in prompts]
    plain, _ = _serve(tiny_model, base, None)
    text = plain[0][1][0]
    assert len(text) > 8
    stop = [text[len(text) // 2 : len(text) // 2 + 2]]
    requests = [{**params, "stop": stop} if params["prompt"] == prompts[0] else params for params in base]

    capi.llama_memory_clear(capi.llama_get_memory(loaded.ctx), True)
    engine = BatchEngine(loaded, vocab, pipeline_min_tokens=1)
    ended_late = threading.Event()
    taken = threading.Event()
    failed_once = []
    original_take = engine._take_plain

    def take(items, now):
        in_batch = [seq for seq, _, _ in items if seq.pending is not None]
        try:
            original_take(items, now)
        finally:
            if any(seq.done for seq in in_batch):
                ended_late.set()
            taken.set()

    def decode(ctx, batch):
        if threading.current_thread().name == "decode-call":
            taken.wait(30)
            taken.clear()
            if ended_late.is_set() and not failed_once:
                failed_once.append(True)
                if ret != 1:
                    capi.llama_decode(ctx, batch)
                return ret
        return capi.llama_decode(ctx, batch)

    engine._take_plain = take
    engine._capi = SimpleNamespace(**{name: getattr(capi, name) for name in dir(capi) if name.startswith("llama_")})
    engine._capi.llama_decode = decode
    completions = Completions(engine, loaded, vocab)
    started = [completions.start(RequestScope(i), CompletionOptions.of(p), request_id=i) for i, p in enumerate(requests)]
    engine.start()
    outcomes: list[object] = []
    try:
        for s in started:
            try:
                outcomes.append([c["finish_reason"] for c in completions.result(s)["choices"]])
            except Exception as exc:  # noqa: BLE001 - a failed request's error is its outcome
                outcomes.append(exc)
    finally:
        engine.stop()
    return engine, outcomes, bool(failed_once)


def _assert_each_slot_caches_its_cells(engine) -> None:
    from llama_cpp import llama_cpp as capi

    memory = capi.llama_get_memory(engine.loaded.ctx)
    for slot in engine.slots:
        # Its cached tokens are its cells from position 0 on: the last one at len(cached) - 1.
        assert capi.llama_memory_seq_pos_max(memory, slot.index) == len(slot.cached) - 1, slot.index


@pytest.mark.llama
@pytest.mark.parametrize("prompts", [PROMPTS[:3], [PROMPTS[0]] * 2], ids=["beside-others", "all-ended"])
def test_a_slot_whose_stream_ended_a_step_late_keeps_cells_and_cache_in_step_when_a_full_pool_makes_room(tiny_model, prompts):
    """A stop string in a deferred step's text ends its stream while the next decode (holding
    its last token) runs. When that decode finds no KV cells (returns 1), making room must not
    clear that slot's cache: the retried decode writes the token's cell back, and the slot's
    ``cached`` would say [token] at position 0 while its one cell sits at the old position (a
    later prompt starting with that token would reuse it and fail its batch's decode). When every
    stream in the batch ended so, nothing running is left to give way: the step is built again."""
    engine, outcomes, failed = _end_a_stream_a_step_late_then_fail_its_decode(tiny_model, prompts, 1)
    assert failed  # the step that ended a stream a step late found the pool full
    assert outcomes == [["stop"] if prompt == prompts[0] else ["length"] for prompt in prompts]
    _assert_each_slot_caches_its_cells(engine)


@pytest.mark.llama
def test_a_failed_decode_leaves_no_unknown_cell_in_the_slot_of_a_stream_that_ended_a_step_late(tiny_model):
    """A decode that fails after writing cells (a later ubatch's error) fails the jobs still
    running; the stream its deferred text ended meanwhile had its last token in that batch, and
    its slot, kept as a prompt cache, must not hold a cell its ``cached`` does not list (a prompt
    reusing the whole cache would be decoded at a position already taken)."""
    engine, outcomes, failed = _end_a_stream_a_step_late_then_fail_its_decode(tiny_model, PROMPTS[:3], -3)
    assert failed
    assert outcomes[0] == ["stop"] and all(isinstance(o, Exception) for o in outcomes[1:])
    _assert_each_slot_caches_its_cells(engine)
