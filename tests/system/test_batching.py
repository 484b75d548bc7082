"""The batch engine through the worker's protocol: real worker processes, real llama.cpp.

Tiny random-weight models (testkit/ggufmaker.py) where the text does not matter; Gemma 3 270M
where it does (greedy text batched against alone, a chat's second turn from the prompt cache).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from gateway.engine.prefill import PrefillBudget
from gateway.engine.protocol import WorkerSpec
from testkit.ggufmaker import write_tiny_llama
from tests.workers import GEMMA_TIMEOUT_S, GREEDY, TIMEOUT_S, WorkerProcess

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("batching") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny(tiny_path) -> WorkerSpec:
    return WorkerSpec(name="tiny", model_path=str(tiny_path), n_ctx=512, n_threads=2, slots=2)


def _ready(spawn, spec: WorkerSpec) -> WorkerProcess:
    worker = spawn(spec)
    worker.wait_ready()
    return worker


def _text(messages: list[dict]) -> str:
    return "".join(m["data"]["choices"][0]["text"] for m in messages if m["type"] == "chunk")


def _collect(worker: WorkerProcess, ids: set[int], timeout: float = TIMEOUT_S) -> dict[int, list[tuple[float, dict]]]:
    """Every message of the given requests, timestamped, until each has its terminal one.

    ``timeout`` guards against a hung worker: it fails when no message comes for that long, not
    when the whole takes longer (a busy CI machine decodes the tiny model a hundred times slower).
    """
    out: dict[int, list[tuple[float, dict]]] = {i: [] for i in ids}
    open_ids = set(ids)
    while open_ids:
        at, message = worker.recv_timed(timeout)
        if message.get("id") in out:
            out[message["id"]].append((at, message))
            if message["type"] in ("result", "end", "error"):
                open_ids.discard(message["id"])
    return out


def _first(worker: WorkerProcess, request_id: int) -> dict:
    while (message := worker.recv()).get("id") != request_id:
        pass
    return message


@pytest.fixture(scope="module")
def gemma_spec(gemma_path) -> WorkerSpec:
    return WorkerSpec(name="gemma", model_path=str(gemma_path), n_ctx=256, n_threads=2, slots=2, chat_format="gemma")


def test_two_interleaved_greedy_streams_give_the_text_each_gives_alone(spawn, gemma_spec):
    worker = _ready(spawn, gemma_spec)
    prompts = {1: "The capital of France is", 2: "Once upon a time, in a land far away,"}
    alone = {}
    for i, prompt in prompts.items():
        worker.request(i, "completion", {"prompt": prompt, "max_tokens": 16, "temperature": 0})
        [result] = worker.answer(i, timeout=GEMMA_TIMEOUT_S)
        alone[i] = result["data"]["choices"][0]["text"]

    for i, prompt in prompts.items():
        worker.request(10 + i, "completion", {"prompt": prompt, "max_tokens": 16, "temperature": 0}, stream=True)
    both = _collect(worker, {11, 12}, GEMMA_TIMEOUT_S)

    assert _text([m for _, m in both[11]]) == alone[1]
    assert _text([m for _, m in both[12]]) == alone[2]
    (first1, last1), (first2, last2) = ((s[0][0], s[-1][0]) for s in both.values())
    assert max(first1, first2) < min(last1, last2), "the streams did not run together"


def test_a_chats_second_turn_decodes_only_its_new_tokens(spawn, gemma_spec):
    worker = _ready(spawn, dataclasses.replace(gemma_spec, slots=1))
    turn1 = [{"role": "user", "content": "Name a fruit."}]
    worker.request(1, "chat", {"messages": turn1, "max_tokens": 8, "temperature": 0})
    [first] = worker.answer(1, timeout=GEMMA_TIMEOUT_S)
    reply = first["data"]["choices"][0]["message"]["content"]
    turn2 = turn1 + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Another one?"}]

    worker.request(2, "chat", {"messages": turn2, "max_tokens": 8, "temperature": 0})
    [second] = worker.answer(2, timeout=GEMMA_TIMEOUT_S)
    # Something unrelated takes the slot, so the same turn is then read from scratch.
    worker.request(3, "completion", {"prompt": "Zebras", "max_tokens": 2, "temperature": 0})
    worker.answer(3, timeout=GEMMA_TIMEOUT_S)
    worker.request(4, "chat", {"messages": turn2, "max_tokens": 8, "temperature": 0})
    [cold] = worker.answer(4, timeout=GEMMA_TIMEOUT_S)

    assert first["timings"]["cached_prompt_tokens"] == 0
    assert second["timings"]["cached_prompt_tokens"] >= first["usage"]["prompt_tokens"]
    assert second["timings"]["prompt_tokens"] == second["usage"]["prompt_tokens"]
    assert cold["timings"]["cached_prompt_tokens"] < 5
    assert second["data"]["choices"][0]["message"] == cold["data"]["choices"][0]["message"]


def test_a_sliding_window_cache_is_reused_only_where_its_cells_are_still_held(spawn, tmp_path):
    path = write_tiny_llama(tmp_path / "swa.gguf", arch="gemma3", n_layers=2, sliding_window=32, sliding_window_pattern=2)
    # The window's cache holds pad256(32 + n_ubatch) = 256 cells: a longer sequence overwrites
    # the cells that fell out of its window.
    spec = WorkerSpec(name="swa", model_path=str(path), n_ctx=1024, n_batch=32, n_ubatch=32, n_threads=2, slots=1, swa_full=False)
    worker = _ready(spawn, spec)
    long_prompt = " ".join(f"w{i}" for i in range(120))
    short = " ".join(f"w{i}" for i in range(30)) + " then something else entirely"
    ask = {"max_tokens": 12, "temperature": 0, "logprobs": 1}

    worker.request(1, "completion", {"prompt": short, **ask})
    [reference] = worker.answer(1)
    worker.request(2, "completion", {"prompt": long_prompt, **ask})
    worker.answer(2)
    # The long prompt's cache shares a prefix with this one, but its window no longer holds
    # the cells that prefix's end attends to: the prompt must be read again.
    worker.request(3, "completion", {"prompt": short, **ask})
    [again] = worker.answer(3)

    assert again["timings"]["cached_prompt_tokens"] == 0
    ref, got = reference["data"]["choices"][0]["logprobs"], again["data"]["choices"][0]["logprobs"]
    assert got["tokens"] == ref["tokens"]
    assert got["token_logprobs"] == pytest.approx(ref["token_logprobs"], abs=1e-3)


def test_a_cancelled_stream_frees_its_slot_for_a_waiting_request(spawn, tiny):
    worker = _ready(spawn, dataclasses.replace(tiny, n_ctx=4096, slots=1))
    arrived: list[dict] = []  # every message of requests 1 and 2, in the order the worker wrote them

    def until(done) -> None:
        while not done():
            message = worker.recv()
            if message.get("id") in (1, 2):
                arrived.append(message)

    def chunks_of(request_id: int) -> int:
        return sum(m["id"] == request_id and m["type"] == "chunk" for m in arrived)

    def ended(request_id: int) -> bool:
        return any(m["id"] == request_id and m["type"] in ("result", "end", "error") for m in arrived)

    # Request 1 cannot end by itself before its cancel is read, however fast the machine: the
    # test stops reading the worker's output after request 1's first chunk, so the worker blocks
    # on its writes a few hundred tokens later (tests/workers.py, output_held_after), far short of
    # its 4000. Request 2 and the cancel are written meanwhile, in that order: the worker reads
    # request 2 while request 1 holds the one slot.
    with worker.output_held_after(lambda m: m.get("id") == 1 and m["type"] == "chunk"):
        worker.request(1, "completion", {**GREEDY, "max_tokens": 4000}, stream=True)
        until(lambda: chunks_of(1) >= 1)
        worker.request(2, "completion", {**GREEDY, "max_tokens": 4}, stream=True)
        worker.send(type="cancel", id=1)
    until(lambda: ended(1) and ended(2))

    end1 = next(m for m in arrived if m["id"] == 1 and m["type"] != "chunk")
    end2 = next(m for m in arrived if m["id"] == 2 and m["type"] != "chunk")
    # Request 1 stopped before its length: the cancel, not its end, freed the slot...
    assert end1["type"] == "end" and end1["usage"]["completion_tokens"] < 4000, end1
    # ...and request 2 ran in it, in full, only once request 1 had left it: the decode loop writes
    # each step's chunks in step order, so every chunk of request 1 comes before request 2's first.
    assert end2["type"] == "end" and end2["usage"]["completion_tokens"] == 4, end2
    order = [m["id"] for m in arrived if m["type"] == "chunk"]
    assert 2 in order and 1 not in order[order.index(2) :], order


def test_a_failing_request_fails_alone_and_the_others_go_on(spawn, tiny):
    # One thread: llama.cpp's threads spin at each barrier, and two of them on a 2-core machine
    # beside a busy core decode ~100x slower (300 tokens: ~40 s instead of ~0.3 s).
    worker = _ready(spawn, dataclasses.replace(tiny, n_ctx=2048, slots=2, n_threads=1))
    worker.request(1, "completion", {**GREEDY, "max_tokens": 300}, stream=True)
    # A NUL byte starts no token's text: the grammar allows nothing, at the first token.
    worker.request(2, "completion", {"prompt": "x", "max_tokens": 8, "grammar": 'root ::= "\\x00"'})
    worker.request(3, "completion", {"prompt": "hello " * 3000, "max_tokens": 4})
    worker.request(4, "completion", {"prompt": "x", "max_tokens": 4, "logit_bias": {"99999": 1.0}})
    worker.request(5, "completion", {"prompt": "x", "max_tokens": 4, "grammar": "root ::= undefined_rule"})

    got = _collect(worker, {1, 2, 3, 4, 5})

    for failing in (2, 3, 4, 5):
        error = got[failing][-1][1]
        assert error["type"] == "error" and error["kind"] == "invalid_request", error
    assert "grammar allows no token" in got[2][-1][1]["message"]
    assert "exceed context window" in got[3][-1][1]["message"]
    assert "not in the vocabulary" in got[4][-1][1]["message"]
    end = got[1][-1][1]
    assert end["type"] == "end" and end["usage"]["completion_tokens"] == 300
    assert _text([m for _, m in got[1]]) == "a" * 300


def test_logprobs_come_with_completions_and_chats(spawn, tiny):
    worker = _ready(spawn, tiny)
    worker.request(1, "completion", {**GREEDY, "max_tokens": 3, "logprobs": 2})
    worker.request(2, "completion", {**GREEDY, "max_tokens": 3, "logprobs": 2}, stream=True)
    worker.request(3, "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2})

    got = _collect(worker, {1, 2, 3})

    lp = got[1][-1][1]["data"]["choices"][0]["logprobs"]
    assert lp["tokens"] == ["a", "a", "a"]
    assert len(lp["token_logprobs"]) == 3 and all(x <= 0 for x in lp["token_logprobs"])
    # Greedy picks the most likely token (the logit bias is part of the sampling, not of the
    # model's distribution that logprobs describe, so compare with the listed alternatives).
    assert all(len(top) >= 2 for top in lp["top_logprobs"])
    assert lp["text_offset"] == sorted(lp["text_offset"])
    streamed = [m["data"]["choices"][0]["logprobs"] for _, m in got[2] if m["type"] == "chunk"]
    assert [s["tokens"] for s in streamed if s] == [["a"], ["a"], ["a"]]
    chat = got[3][-1][1]["data"]["choices"][0]["logprobs"]["content"]
    assert len(chat) == 3
    for entry in chat:
        assert entry["logprob"] == pytest.approx(max(t["logprob"] for t in entry["top_logprobs"]))


def test_n_choices_share_one_prompt(spawn, tiny):
    worker = _ready(spawn, tiny)
    sampled = {"prompt": "hello world", "max_tokens": 6, "temperature": 1.0, "seed": 7}
    worker.request(1, "completion", {**sampled, "n": 2})
    worker.request(2, "completion", {**GREEDY, "max_tokens": 4, "n": 2}, stream=True)
    worker.request(3, "chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logit_bias": {"97": 50.0}, "n": 2})
    worker.request(4, "completion", {**GREEDY, "max_tokens": 4, "n": 3})

    got = _collect(worker, {1, 2, 3, 4})

    result = got[1][-1][1]
    choices = result["data"]["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert result["data"]["usage"]["completion_tokens"] == 12
    assert result["timings"]["completion_tokens"] == 12
    assert result["data"]["usage"]["prompt_tokens"] == result["timings"]["prompt_tokens"]
    streamed: dict[int, str] = {0: "", 1: ""}
    for _, m in got[2]:
        if m["type"] == "chunk":
            choice = m["data"]["choices"][0]
            streamed[choice["index"]] += choice["text"]
    assert streamed == {0: "aaaa", 1: "aaaa"}
    chat = got[3][-1][1]["data"]
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    assert all(c["message"]["content"] == "aaa" for c in chat["choices"])
    too_many = got[4][-1][1]
    assert too_many["type"] == "error" and too_many["kind"] == "invalid_request" and "slot" in too_many["message"]


def test_embeddings_are_one_pooled_vector_per_input(spawn, tiny):
    # The tiny llama has no pooling type of its own: the worker averages its token vectors.
    mean_here = _ready(spawn, dataclasses.replace(tiny, embedding=True))
    llama_mean = _ready(spawn, dataclasses.replace(tiny, embedding=True, pooling="mean"))
    per_token = _ready(spawn, dataclasses.replace(tiny, embedding=True, pooling="none"))
    generative = _ready(spawn, tiny)
    inputs = {"input": ["hello world", "the end", "a third input"]}
    for worker in (mean_here, llama_mean, per_token, generative):
        worker.request(1, "embedding", inputs)

    ours = mean_here.answer(1)[-1]
    theirs = llama_mean.answer(1)[-1]

    assert ours["type"] == "result", ours
    data = ours["data"]["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(len(d["embedding"]) == 64 and isinstance(d["embedding"][0], float) for d in data)
    for mine, llamas in zip(data, theirs["data"]["data"]):
        assert np.allclose(mine["embedding"], llamas["embedding"], atol=1e-4)
    assert ours["data"]["usage"]["prompt_tokens"] == ours["usage"]["prompt_tokens"] > 0
    for refused in (per_token, generative):
        error = refused.answer(1)[-1]
        assert error["type"] == "error" and error["kind"] == "invalid_request", error


def test_every_result_and_end_carries_usage_and_timings(spawn, tiny):
    worker = _ready(spawn, tiny)
    sent = time.monotonic()
    worker.request(1, "completion", {**GREEDY, "max_tokens": 5})
    worker.request(2, "completion", {**GREEDY, "max_tokens": 5}, stream=True)

    got = _collect(worker, {1, 2})
    waited = time.monotonic() - sent

    for request_id in (1, 2):
        last = got[request_id][-1][1]
        assert last["type"] in ("result", "end")
        timings = last["timings"]
        assert set(timings) == {"ttft_s", "prompt_s", "decode_s", "completion_tokens", "prompt_tokens", "cached_prompt_tokens"}
        # Within what the test waited for it (no guessed bound: a busy machine is slow).
        assert 0 < timings["ttft_s"] <= waited and 0 <= timings["decode_s"] <= waited
        assert timings["completion_tokens"] == last["usage"]["completion_tokens"] == 5
        assert timings["prompt_tokens"] == last["usage"]["prompt_tokens"] > 0


def test_stats_report_slots_and_batch_sizes_at_most_once_a_second(spawn, tiny):
    worker = _ready(spawn, tiny)
    for request_id in (1, 2):
        worker.request(request_id, "completion", {**GREEDY, "max_tokens": 200}, stream=True)

    # Until the stats say both slots are free again, however long the two streams take on a busy
    # machine (a 5 s deadline here once cut a slow run short); recv_timed's timeout guards a hang.
    stats = []
    while not stats or stats[-1][1]["busy_slots"] != 0:
        at, message = worker.recv_timed()
        if message["type"] == "stats":
            stats.append((at, message))

    sizes = {int(k): v for _, m in stats for k, v in m["batch_sizes"].items()}
    assert 2 in sizes  # both streams in one decode
    assert all(m["slots"] == 2 for _, m in stats)
    assert stats[-1][1]["busy_slots"] == 0
    gaps = [b[0] - a[0] for a, b in zip(stats, stats[1:])]
    assert all(g > 0.9 for g in gaps), gaps


@pytest.mark.parametrize("unified", [False, True], ids=["own-cells", "shared-pool"])
def test_each_request_keeps_its_full_context_in_every_slot(spawn, tiny, unified):
    spec = dataclasses.replace(tiny, n_ctx=256, slots=2, kv_unified=unified, kv_pool_tokens=512 if unified else None)
    worker = _ready(spawn, spec)
    for request_id in (1, 2):
        worker.request(request_id, "completion", {**GREEDY, "prompt": "hello world " * 20, "max_tokens": 1000})

    got = _collect(worker, {1, 2})

    for request_id in (1, 2):
        data = got[request_id][-1][1]["data"]
        assert data["choices"][0]["finish_reason"] == "length"
        assert data["usage"]["total_tokens"] == 256


def test_prefill_budget_keeps_a_step_within_the_ratio_of_a_generation_step():
    budget = PrefillBudget(512, ratio=2.0, floor=8, first_guess=32)
    assert budget.tokens(0) == 512  # nothing generating: the whole batch
    assert budget.tokens(3) == 32  # nothing measured yet
    for _ in range(20):
        budget.observe(3, 0, 0.030)  # a step of three generation tokens: 30 ms
        budget.observe(3, 100, 0.080)  # 100 prompt tokens add 50 ms
    # 0.5 ms per prompt token: 60 tokens fill the 30 ms a step may add.
    assert budget.tokens(3) == pytest.approx(60, abs=2)
    budget.observe(3, 0, 0.001)
    assert budget.tokens(3) >= 8


def test_prefill_budget_reads_the_whole_batch_while_more_prompts_wait_than_streams_generate():
    budget = PrefillBudget(512, ratio=2.0, floor=8, first_guess=32)
    assert budget.tokens(3, waiting=3) == 32  # nothing measured yet: the first guess
    # ... or, beside many streams, as many prompt tokens as the ratio allows if a prompt token
    # costs what a generating one does (the measure needs a step without prompts)
    assert budget.tokens(100, waiting=10) == 100
    for _ in range(20):
        budget.observe(3, 0, 0.030)
        budget.observe(3, 100, 0.080)
    assert budget.tokens(3, waiting=3) == pytest.approx(60, abs=2)  # no more waiting than generating: the ratio
    # More prompts in line than streams generating: all of them, up to the batch (llama.cpp's
    # server and its batch API alone read them in one decode), not a few dozen tokens a step.
    assert budget.tokens(3, waiting=4) == 509
    assert budget.tokens(1, waiting=63) == 511


def test_penalties_and_sampling_options_reach_llama_cpp(spawn, tiny):
    worker = _ready(spawn, tiny)
    options = {"repeat_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": 0.5, "top_k": 5, "top_p": 0.9,
               "min_p": 0.1, "typical_p": 0.95, "temperature": 0.7, "seed": 3, "mirostat_mode": 0}  # fmt: skip
    worker.request(1, "completion", {"prompt": "hello", "max_tokens": 6, **options})
    worker.request(2, "completion", {"prompt": "hello", "max_tokens": 6, **options})
    worker.request(3, "completion", {"prompt": "hello", "max_tokens": 6, "repeat_penalty": 0.0})
    worker.request(4, "completion", {"prompt": "hello", "max_tokens": 6, "temperature": 0.5, "mirostat_mode": 2, "seed": 1})

    got = _collect(worker, {1, 2, 3, 4})

    first, second = (got[i][-1][1] for i in (1, 2))
    assert first["type"] == second["type"] == "result"
    assert first["data"]["choices"][0]["text"] == second["data"]["choices"][0]["text"]  # one seed, one text
    assert got[3][-1][1]["kind"] == "invalid_request" and "repeat_penalty" in got[3][-1][1]["message"]
    assert got[4][-1][1]["type"] == "result"


def test_one_seed_gives_one_text_whatever_the_slots_cached(spawn, tiny):
    # Issue 21, item 12: a cached prompt prefix decodes the rest in another batch shape, whose
    # logits differ in their last bits, and so did the sampled text. The log-probabilities show
    # the smallest difference, so they are compared too. (In a shared pool, kv_unified, where
    # the cells land changes the sums too: there a seed promises less, docs/reliability.md.)
    worker = _ready(spawn, dataclasses.replace(tiny, slots=2))
    prompt = "the quick brown fox jumps over the lazy dog " * 8
    worker.request(1, "completion", {"prompt": prompt, "max_tokens": 1})  # caches most of the next prompt
    worker.answer(1)
    seeded = {"prompt": prompt + "and then", "max_tokens": 40, "temperature": 1.0, "seed": 7, "logprobs": 1}
    answers = []
    for request_id, stream in ((2, False), (3, True), (4, False), (5, True)):
        worker.request(request_id, "completion", seeded, stream=stream)
        messages = worker.answer(request_id)
        assert messages[-1]["type"] == ("end" if stream else "result"), messages[-1]
        choices = [m["data"]["choices"][0] for m in messages if m["type"] in ("chunk", "result")]
        text = "".join(c["text"] for c in choices)
        logprobs = [lp for c in choices if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]]
        answers.append((text, logprobs))

    assert len(answers[0][1]) == 40
    assert all(answer == answers[0] for answer in answers[1:])


def test_response_format_json_constrains_a_chat_with_a_grammar(spawn, tiny):
    import json

    worker = _ready(spawn, tiny)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, "temperature": 0}
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    worker.request(1, "chat", {**chat, "response_format": {"type": "json_object"}})
    worker.request(2, "chat", {**chat, "response_format": {"type": "json_object", "schema": schema}})

    got = _collect(worker, {1, 2})

    for request_id in (1, 2):
        choice = got[request_id][-1][1]["data"]["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        value = json.loads(choice["message"]["content"])
        assert isinstance(value, dict)
    assert isinstance(json.loads(got[2][-1][1]["data"]["choices"][0]["message"]["content"])["a"], bool)


def test_a_full_shared_pool_ends_the_newest_request_with_length_and_keeps_serving(spawn, tiny):
    spec = dataclasses.replace(tiny, n_ctx=256, slots=2, kv_unified=True, kv_pool_tokens=256)
    worker = _ready(spawn, spec)
    worker.request(1, "completion", {**GREEDY, "max_tokens": 200}, stream=True)
    assert _first(worker, 1)["type"] == "chunk"
    worker.request(2, "completion", {**GREEDY, "prompt": "the end", "max_tokens": 200}, stream=True)

    got = _collect(worker, {1, 2})

    ends = {i: got[i][-1][1] for i in (1, 2)}
    assert all(e["type"] == "end" for e in ends.values()), ends
    assert ends[1]["usage"]["completion_tokens"] == 200  # the older request ran to its end
    # The newer one gave way when both no longer fitted in the 256 cells.
    assert ends[2]["usage"]["completion_tokens"] < 200
    assert got[2][-2][1]["data"]["choices"][0]["finish_reason"] == "length"
    # Idle caches give way to the next request.
    worker.request(3, "completion", {**GREEDY, "prompt": "something new", "max_tokens": 100})
    result = worker.answer(3)[-1]
    assert result["type"] == "result" and result["data"]["usage"]["completion_tokens"] == 100


def test_many_streams_at_once_end_as_asked_while_their_text_is_taken_beside_the_next_decode(spawn, tiny):
    # Ten greedy streams in ten slots: most steps have more greedy tokens than the engine's
    # threshold (gateway.engine.decode_thread.PIPELINE_MIN_TOKENS), so their text and chunks are
    # taken while the next step decodes on its own thread, and a stop string ends its stream a
    # step late. The bias makes every token an "a", whatever the random weights.
    worker = _ready(spawn, dataclasses.replace(tiny, n_ctx=128, slots=10, n_threads=1))
    asks = {i: {**GREEDY, "max_tokens": 40 + 4 * i} for i in range(1, 11)}
    for i in (2, 5, 9):
        asks[i]["stop"] = ["a" * 30]  # found at the 30th token: no text
    asks[4]["logprobs"] = 1  # sampled one by one beside the others
    for i, params in asks.items():
        worker.request(i, "completion", params, stream=True)

    got = _collect(worker, set(asks))

    for i, params in asks.items():
        messages = [m for _, m in got[i]]
        end = messages[-1]
        assert end["type"] == "end", end
        finishes = [m["data"]["choices"][0]["finish_reason"] for m in messages if m["type"] == "chunk"]
        if "stop" in params:
            assert (_text(messages), finishes[-1], end["usage"]["completion_tokens"]) == ("", "stop", 30), i
        else:
            assert (_text(messages), finishes[-1]) == ("a" * params["max_tokens"], "length"), i
            assert end["usage"]["completion_tokens"] == params["max_tokens"]
