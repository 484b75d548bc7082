"""gateway.engine.process.exit_reason: what a child's exit says in /health, /ui and the logs."""

from __future__ import annotations

from gateway.engine.process import STACK_FRAMES, exit_reason

# What faulthandler (all_threads=False) writes when llama.cpp crashes under the worker's load call.
FAULT = [
    "llama_model_loader: - type q4_K:  169 tensors",
    "load_tensors: loading model tensors, this can take a while... (mmap = true)",
    "Fatal Python error: Segmentation fault",
    "Stack (most recent call first):",
    '  File "/srv/gw/gateway/engine/loading.py", line 131 in load_model',
    '  File "/srv/gw/gateway/engine/loading.py", line 150 in load',
    '  File "/srv/gw/gateway/engine/worker.py", line 120 in load',
    '  File "/srv/gw/gateway/engine/worker.py", line 300 in main',
    '  File "/srv/gw/gateway/engine/worker.py", line 310 in <module>',
    '  File "<frozen runpy>", line 88 in _run_code',
    '  File "<frozen runpy>", line 198 in _run_module_as_main',
    "",
    "Extension modules: msgspec._core, numpy._core._multiarray_umath (total: 2)",
]


def test_a_native_crash_names_the_signal_the_python_stack_and_the_last_log_lines():
    reason = exit_reason("worker", -11, FAULT)
    assert reason.startswith("worker exited with code -11 (SIGSEGV): Fatal Python error: Segmentation fault; ")
    assert "Python stack (most recent call first): gateway/engine/loading.py:131 in load_model <- gateway/engine/loading.py:150 in load" in reason
    assert reason.count(" <- ") == STACK_FRAMES  # five frames, then "..."
    assert reason.endswith("; last log lines: llama_model_loader: - type q4_K:  169 tensors | load_tensors: loading model tensors, this can take a while... (mmap = true)")
    assert "\n" not in reason


def test_the_current_thread_header_of_an_all_threads_dump_is_read_too():
    lines = ["Fatal Python error: Aborted", "", "Current thread 0x00007f01 (most recent call first):", '  File "/a/b/c/d.py", line 3 in f']
    assert exit_reason("the dry run", -6, lines) == "the dry run exited with code -6 (SIGABRT): Fatal Python error: Aborted; Python stack (most recent call first): b/c/d.py:3 in f"


def test_an_exit_without_a_crash_report_names_the_last_lines():
    assert exit_reason("worker", 1, ["a", "b", "c", "d"]) == "worker exited with code 1: b | c | d"
    assert exit_reason("worker", -9, []) == "worker exited with code -9 (SIGKILL)"
    assert exit_reason("worker", None, []) == "worker exited with code None"
