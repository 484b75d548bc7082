"""gateway.engine.worker's parts that need no process: its GPU memory reading (on a fake NVML) and
how it batches a step's messages. The worker spawned for real is tests/system/test_worker.py."""

from __future__ import annotations

import os
import sys

from gateway.engine.protocol import WorkerSpec
from gateway.nvml import process_gpu_memory


class _FakeNvml:
    """The few pynvml calls process_gpu_memory makes: GPU index -> [(pid, bytes or None)]."""

    class NVMLError(Exception):
        pass

    def __init__(self, processes: dict[int, list[tuple[int, int | None]]]) -> None:
        self._processes = processes

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index not in self._processes:
            raise self.NVMLError("invalid argument")
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        return [type("Proc", (), {"pid": pid, "usedGpuMemory": used}) for pid, used in self._processes[handle]]


def test_process_gpu_memory_reports_only_this_pid_per_gpu(monkeypatch):
    fake = _FakeNvml({0: [(10, 1 << 30), (42, 600 << 20)], 1: [(10, 5)], 2: [(42, None)]})
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    assert process_gpu_memory(42, [0, 1, 2, 7]) == {"0": 600 << 20}
    assert process_gpu_memory(42, []) == {}


def test_process_gpu_memory_is_empty_without_a_driver(monkeypatch):
    fake = _FakeNvml({})

    def no_driver() -> None:
        raise fake.NVMLError("driver not loaded")

    fake.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", fake)

    assert process_gpu_memory(os.getpid(), [0]) == {}


class _Writes:
    """A protocol stream that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def test_a_steps_stream_chunks_go_out_in_one_write_and_before_a_later_message(tmp_path):
    from gateway.engine.protocol import Chunk, Stats, decode_worker_message
    from gateway.engine.worker import Worker

    out = _Writes()
    worker = Worker(WorkerSpec(name="m", model_path=str(tmp_path / "m.gguf")), out)  # type: ignore[arg-type]
    for request_id in (1, 2, 3):
        worker.queue(Chunk(id=request_id, data={"text": "x"}))
    assert out.writes == []  # nothing before the step's end
    worker.flush()
    assert len(out.writes) == 1
    assert [decode_worker_message(line).id for line in out.writes[0].splitlines()] == [1, 2, 3]

    # A message sent meanwhile (a request's end, from its own thread) follows the chunks queued before it.
    worker.queue(Chunk(id=4, data={"text": "y"}))
    worker.send(Stats(busy_slots=0, slots=1, batch_sizes={}, cached_prompt_tokens=0))
    lines = out.writes[1].splitlines()
    assert len(out.writes) == 2 and [type(decode_worker_message(line)).__name__ for line in lines] == ["Chunk", "Stats"]
