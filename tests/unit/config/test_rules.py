"""gateway.config.rules: the cross-field rules, run once on a config's TOML data."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import rules
from gateway.config.loading import parse_config
from gateway.config.schema import Config, ModelConfig
from gateway.errors import ConfigError


def test_a_field_that_fails_its_own_validation_skips_only_the_rules_that_read_it() -> None:
    data = {"models": [{"name": "m", "path": "/m.gguf", "n_batch": "big", "n_ubatch": 1024, "type_v": "q8_0"}]}
    lines = [p.render() for p in rules.cross_problems(data, Config)]
    # n_batch is invalid: the n_ubatch <= n_batch rule is skipped, the flash-attention one is not.
    assert lines == ["models[0].type_v: 'q8_0' (a quantized V cache requires flash_attn = true)"]


def test_parse_config_runs_the_cross_field_rules_once_on_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = rules.model_problems

    def counted(get, prefix):
        calls.append(prefix)
        return real(get, prefix)

    monkeypatch.setattr(rules, "model_problems", counted)
    text = '[[models]]\nname = "a"\npath = "/a.gguf"\n[[models]]\nname = "b"\npath = "/b.gguf"\n'
    parse_config(text, environ={})
    assert calls == [("models", 0), ("models", 1)]


def test_config_built_in_code_and_a_file_report_the_same_lines() -> None:
    with pytest.raises(ConfigError) as from_file:
        parse_config(
            '[gateway]\ndefault_model = "x"\n[[models]]\nname = "m"\npath = "/a.gguf"\n'
            '[[models]]\nname = "m"\npath = "/b.gguf"\n',
            environ={},
        )
    with pytest.raises(ValidationError) as from_code:
        Config.model_validate({
            "gateway": {"default_model": "x"},
            "models": [ModelConfig(name="m", path="/a.gguf"), ModelConfig(name="m", path="/b.gguf")],
        })
    assert from_file.value.problems == [
        "gateway.default_model: 'x' (not a model name or alias; known: m)",
        "models[1].name: 'm' (duplicate of models[0].name)",
    ]
    assert all(line in str(from_code.value) for line in from_file.value.problems)
