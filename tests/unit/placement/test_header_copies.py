"""Header copies: a model's GGUF header without its tensor data reads as the model does, and
stands in for a model file that is not on this machine, only when a config is checked."""

import dataclasses
from pathlib import Path

import pytest

from gateway.config.loading import parse_config
from gateway.placement.header_copies import write_header_copy
from gateway.placement.planning import read_models
from planner.gguf_reader import read_model_info
from testkit import ggufmaker as gm

SMALL = dict(arch="llama", n_layers=4, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_vocab=100)


def _qwen7b(path: Path) -> Path:  # a 152k vocabulary and merges: what a copy leaves out
    return gm.write_qwen2_7b_q4_k_m(path, n_merges=20_000)


def _gemma(path: Path) -> Path:  # sliding window, tied embeddings, vocabulary in the header
    return gm.write_gemma3_1b_like(path, vocab_in_header=True)


def _big_endian_aligned(path: Path) -> Path:
    return gm.write_header_only_model(path, **{**SMALL, "n_head_kv": [4, 2, 2, 1]}, big_endian=True, alignment=64)


def _split(path: Path) -> Path:
    return gm.write_header_only_model(path, **SMALL, split_max_tensors=10)


def _tiny_real(path: Path) -> Path:  # llama-cpp-python runs it: a chat template, a byte tokenizer
    return gm.write_tiny_llama(path)


@pytest.mark.parametrize("make", [_qwen7b, _gemma, _big_endian_aligned, _split, _tiny_real], ids=lambda f: f.__name__)
def test_a_header_copy_reads_as_the_model_it_was_copied_from(tmp_path, make):
    model = make(tmp_path / "model.gguf")
    copy = write_header_copy(model, tmp_path / "copy.gguf")
    original, copied = read_model_info(model), read_model_info(copy)
    assert copied.header_copy and not original.header_copy
    # Everything the planner reads is the model's, the size on disk included; tensors too.
    assert dataclasses.replace(copied, paths=(), header_copy=False) == dataclasses.replace(original, paths=())
    assert copied.tensors == original.tensors
    assert copy.stat().st_size < 64 * 1024


def test_a_header_copy_leaves_out_the_tokenizer_lists(tmp_path):
    model = _qwen7b(tmp_path / "qwen.gguf")
    copy = write_header_copy(model, tmp_path / "copy.gguf")
    # The model's header alone is megabytes (152,064 tokens, 20,000 merges); its copy is not.
    assert copy.stat().st_size < 32 * 1024 < 1024 * 1024 < model.stat().st_size - read_model_info(model).total_bytes
    assert read_model_info(copy).n_vocab == 152_064


def _config(tmp_path: Path, model_path: str, headers: str | None) -> object:
    planner = f'[planner]\nmodel_headers = "{headers}"\n' if headers is not None else ""
    text = f'{planner}[[models]]\nname = "m"\npath = "{model_path}"\n'
    return parse_config(text, base_dir=tmp_path, environ={})


def test_an_absent_model_is_checked_with_its_header_copy_and_says_so(tmp_path):
    model = _qwen7b(tmp_path / "qwen.gguf")
    (tmp_path / "headers").mkdir()
    write_header_copy(model, tmp_path / "headers" / "qwen.gguf")
    config = _config(tmp_path, "/models/qwen.gguf", "headers")
    files = read_models(config, header_copies=True)
    assert files.problems == []
    assert files.header_copies == {"m": tmp_path / "headers" / "qwen.gguf"}
    assert dataclasses.replace(files.infos["m"], paths=(), header_copy=False) == dataclasses.replace(read_model_info(model), paths=())
    assert files.header_copy_notes(config) == [
        f"models[0].path: /models/qwen.gguf is not on this machine: checked with its header copy {tmp_path / 'headers' / 'qwen.gguf'}"
    ]


def test_a_model_file_that_is_here_is_read_not_its_header_copy(tmp_path):
    model = gm.write_header_only_model(tmp_path / "m.gguf", **SMALL)
    (tmp_path / "headers").mkdir()
    # A copy of another model under the same name: never read while the file itself is here.
    write_header_copy(gm.write_header_only_model(tmp_path / "other.gguf", **{**SMALL, "n_layers": 6}), tmp_path / "headers" / "m.gguf")
    files = read_models(_config(tmp_path, "m.gguf", "headers"), header_copies=True)
    assert files.problems == [] and files.header_copies == {}
    assert files.infos["m"].n_layers == 4 and not files.infos["m"].header_copy


def test_serving_never_reads_a_header_copy_for_an_absent_model(tmp_path):
    (tmp_path / "headers").mkdir()
    write_header_copy(gm.write_header_only_model(tmp_path / "src.gguf", **SMALL), tmp_path / "headers" / "m.gguf")
    files = read_models(_config(tmp_path, "/models/m.gguf", "headers"))
    assert files.infos == {}
    assert files.problems == ["models[0].path: /models/m.gguf: file not found"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (
            None,
            "file not found (to check this config on a machine without its model files, run "
            "`gateway copy-headers /models/m.gguf --out DIR` where the file is, and set planner.model_headers = DIR)",
        ),
        ("nowhere", "file not found, and planner.model_headers '{tmp}/nowhere' is not a folder"),
        (
            "headers",
            "file not found, and no header copy of it in planner.model_headers ({tmp}/headers/m.gguf is absent; "
            "`gateway copy-headers /models/m.gguf --out {tmp}/headers` where the file is writes it)",
        ),
    ],
    ids=["no folder set", "folder absent", "no copy"],
)
def test_an_absent_model_without_a_header_copy_says_how_to_make_one(tmp_path, headers, reason):
    (tmp_path / "headers").mkdir()
    files = read_models(_config(tmp_path, "/models/m.gguf", headers), header_copies=True)
    assert files.problems == [f"models[0].path: /models/m.gguf: {reason.format(tmp=tmp_path)}"]


@pytest.mark.parametrize("header_copies", [False, True], ids=["serving", "checking"])
def test_a_configured_path_that_is_a_header_copy_is_refused(tmp_path, header_copies):
    copy = write_header_copy(gm.write_header_only_model(tmp_path / "src.gguf", **SMALL), tmp_path / "copy.gguf")
    files = read_models(_config(tmp_path, "copy.gguf", None), header_copies=header_copies)
    assert files.infos == {}
    assert files.problems == [
        f"models[0].path: {copy}: a header copy, without the model's weights: it cannot be served "
        "(put it in the folder planner.model_headers names to check this config without the model file)"
    ]


def test_model_headers_is_relative_to_the_config_file(tmp_path):
    assert _config(tmp_path, "m.gguf", "headers").planner.model_headers == str(tmp_path / "headers")
    assert _config(tmp_path, "m.gguf", "/abs/headers").planner.model_headers == "/abs/headers"
