"""llama.cpp's native library, loaded before numpy: the first thing every model-loading process does.

Why: on an NVIDIA H200 (driver 580.159.04, CUDA 13.0, Python 3.12, numpy 2.5.2, llama-cpp-python
0.3.36 built with CUDA), every process that imported numpy before llama-cpp-python's native
library died with SIGSEGV inside ``llama_model_load_from_file`` (in ``llama_model::print_info``,
in a copy of libstdc++ that the CUDA build's libggml-cuda.so carries, while numpy had loaded the
system's libstdc++ first); the same load succeeded with the native library first
(docs/calibration.md#import-order). llama-cpp-python's own package import loads the library
before numpy, which is why ``Llama()`` users never meet it; our processes imported numpy first
through their own modules.

So the entry point of each process that loads a model (the worker, the dry run of
``plan --verify``, the benchmarks' children) calls ``load_first()`` before it imports anything
that pulls numpy in, and the modules they import at the top stay free of numpy.
tests/system/test_native.py proves the order in real processes with the dynamic loader's
own log (``LD_DEBUG=files``), so that a later import cannot bring the crash back unnoticed.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from gateway.errors import ImportOrderError

NATIVE_MODULE = "llama_cpp.llama_cpp"  # llama-cpp-python's ctypes module: importing it opens libllama


def load_first() -> ModuleType:
    """Open llama.cpp's native library now; ``ImportOrderError`` if numpy is already loaded
    without it (the order that crashed CUDA loads), so the mistake fails on every machine."""
    if NATIVE_MODULE not in sys.modules and "numpy" in sys.modules:
        raise ImportOrderError(
            "numpy was imported before llama.cpp's native library; a CUDA build of llama.cpp "
            "then crashes while loading a model (gateway/engine/native.py says why): call "
            "gateway.engine.native.load_first() before anything that imports numpy"
        )
    return importlib.import_module(NATIVE_MODULE)
