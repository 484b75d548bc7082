"""A model's outward view in /v1/models: capabilities from its config and its header's facts."""

import dataclasses

import pytest

from gateway.config.schema import ModelConfig
from gateway.placement.facts import ModelFacts, facts_from_info, model_card, quantization_name
from tests.chat_templates import QWEN2_5
from testkit.factories import model_info


def facts(architecture: str = "llama", templates: tuple[str, ...] = ()) -> ModelFacts:
    return ModelFacts(architecture, 8192, 1_000_000, 2_000_000, "Q8_0", templates)


@pytest.mark.parametrize(
    ("chat_format", "tools"),
    [("chatml-function-calling", True), ("functionary-v2", True), ("chatml", False), ("gemma", False), (None, False)],
)
def test_tools_only_where_the_chat_format_answers_with_tool_calls(chat_format, tools):
    card = model_card(ModelConfig(name="m", path="/m.gguf", chat_format=chat_format), facts(templates=("chat_template.default",)))
    assert card["capabilities"]["tools"] is tools
    assert card["chat_format"] == (chat_format or "chat_template.default")


def test_tools_where_the_gguf_template_writes_calls_the_gateway_parses():
    with_calls = ModelFacts("llama", 8192, 1, 1, None, ("chat_template.default",), tool_call_templates=("chat_template.default",))
    assert model_card(ModelConfig(name="m", path="/m.gguf"), with_calls)["capabilities"]["tools"] is True
    # A built-in format named in the config renders no template: no tools then.
    assert model_card(ModelConfig(name="m", path="/m.gguf", chat_format="chatml"), with_calls)["capabilities"]["tools"] is False


def test_facts_tell_the_templates_of_a_tool_call_family():
    info = dataclasses.replace(
        model_info(),
        chat_templates=("chat_template.default", "chat_template.rag"),
        chat_template_texts=(("chat_template.default", QWEN2_5), ("chat_template.rag", "{{ messages }}")),
    )
    assert facts_from_info(info).tool_call_templates == ("chat_template.default",)


def test_an_encoder_embeds_and_does_not_generate():
    card = model_card(ModelConfig(name="e", path="/e.gguf", embedding=True), facts("bert"))
    assert card["capabilities"] == {"completion": False, "chat": False, "embeddings": True, "tools": False}
    assert card["chat_format"] is None


def test_an_unread_file_leaves_the_header_facts_null():
    card = model_card(ModelConfig(name="m", path="/m.gguf", n_ctx=2048), None)
    assert (card["n_ctx"], card["context_length"], card["n_params"], card["file_bytes"], card["quantization"]) == (2048, None, None, None, None)


def test_quantization_is_named_as_llama_cpp_names_the_file_type():
    assert [quantization_name(t) for t in (0, 1, 15, 7, 32, None)] == ["F32", "F16", "Q4_K_M", "Q8_0", "BF16", None]
