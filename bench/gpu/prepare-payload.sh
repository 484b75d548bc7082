#!/bin/bash
# Prepares what a GPU check on a CUDA machine without network access needs:
#   - the llama-cpp-python sdist, trimmed to ~9 MB (no git history, test vocabularies, docs or web UI)
#   - wheels (Python 3.12, x86-64) of what the CUDA machine's image lacks for `gateway serve`,
#     bench/gpu_check.py, bench/concurrency.py and bench/gpu_serve.py's openai client (its image has numpy, httpx, pyyaml, anyio,
#     prometheus-client, nvidia-ml-py, rich, click; not litestar, granian, pydantic, gguf...)
# Measured on the H200 (2026-12): the build takes 338 s on 16 cores (184 s with -DGGML_CUDA_FA=OFF);
# the wheel is 114 MB, too big to bring back, so one call must build and measure.
# Usage: bench/gpu/prepare-payload.sh DEST   (DEST must be a folder the repo ignores: `make gpu-payload` uses .gpu)
# Then, on the CUDA machine, from the repo root: bash bench/gpu/validate.sh (docs/gpu-validation.md).
set -euo pipefail
DEST=${1:?usage: prepare-payload.sh DEST}
VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$DEST/wheels"
tmp=$(mktemp -d)
# The sdist straight from PyPI: `pip download --no-binary :all:` would build its build
# dependencies (cmake among them) from source just to read its metadata.
python3 - "$VER" "$tmp" <<'PY'
import hashlib, re, sys, urllib.request
ver, dest = sys.argv[1], sys.argv[2]
name = f"llama_cpp_python-{ver}.tar.gz"
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/").read().decode()
url = next(u for u in re.findall(r'href="([^"]+)"', page) if u.split("#")[0].endswith("/" + name))
data = urllib.request.urlopen(url.split("#")[0]).read()
if "#sha256=" in url and hashlib.sha256(data).hexdigest() != url.split("#sha256=")[1]:
    sys.exit(f"{name}: sha256 does not match the index")
open(f"{dest}/{name}", "wb").write(data)
PY
tar xzf "$tmp"/llama_cpp_python-$VER.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-$VER"
# Drop what the library build never reads (git packs, vocab test models, docs, web UI, tests).
rm -rf "$src/.git" "$src/vendor/llama.cpp/.git" "$src"/vendor/llama.cpp/models/*.gguf \
       "$src/vendor/llama.cpp/docs" "$src/vendor/llama.cpp/tools/ui" "$src/vendor/llama.cpp/tools/server" \
       "$src/vendor/llama.cpp/tests" "$src/vendor/llama.cpp/benches" "$src/vendor/llama.cpp/conversion"
tar czf "$DEST/llama_cpp_python-$VER.tar.gz" -C "$tmp" "llama_cpp_python-$VER"
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  -d "$DEST/wheels" diskcache gguf pydantic pydantic-core pydantic-settings annotated-types \
  typing-inspection python-dotenv tomli-w litestar litestar-htmx msgspec multipart polyfactory \
  faker rich-click granian sniffio openai jiter distro httpx2 httpcore2 truststore ${EXTRA_WHEELS:-}
rm -rf "$tmp"
du -sh "$DEST"
echo "next, on the CUDA machine from the repo root: bash bench/gpu/validate.sh (it reads $DEST; see docs/gpu-validation.md)"
