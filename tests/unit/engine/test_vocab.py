"""The vocabulary's pieces, one token at a time and a step's at once."""

from __future__ import annotations

import pytest

from gateway.engine.vocab import Vocab
from testkit.ggufmaker import write_tiny_llama


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    import llama_cpp

    path = write_tiny_llama(tmp_path_factory.mktemp("vocab") / "tiny.gguf", n_layers=2, n_embd=64, ctx=256)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    yield Vocab(llm._model)
    llm.close()


def test_a_steps_pieces_are_each_tokens_piece_and_none_for_an_end_of_generation(vocab):
    tokens = [t for t in range(vocab.n_vocab)] + [vocab.eos, 3, 3, vocab.eos]
    expected = [None if vocab.is_eog(t) else vocab.piece(t) for t in tokens]
    assert None in expected and any(expected)
    assert vocab.pieces(tokens) == expected
    assert vocab.pieces(tokens) == expected  # and again, from what the first look-up kept
