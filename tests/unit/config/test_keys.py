"""gateway.config.keys: [[keys]] in models.toml or in a keys file, every problem at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import tomli_w

from gateway.cli.main import main
from gateway.config.keys import key_digest
from gateway.config.loading import dump_config, load_config, parse_config
from gateway.errors import ConfigError

MODELS = [
    {"name": "qwen-7b", "path": "/m/qwen.gguf", "aliases": ["chat"]},
    {"name": "embed-small", "path": "/m/embed.gguf"},
]
CI = key_digest("sk-ci")
OPS = key_digest("sk-ops")


def doc(keys: list[dict] | None = None, **gateway) -> str:
    out: dict = {"models": MODELS}
    if gateway:
        out["gateway"] = gateway
    if keys is not None:
        out["keys"] = keys
    return tomli_w.dumps(out)


def problems(text: str, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ=kwargs.pop("environ", {}), **kwargs)
    return info.value.problems


def test_keys_parse_with_defaults_and_the_hash_is_kept_in_lower_case():
    config = parse_config(
        doc([{"name": "ci-bot", "key_sha256": CI.upper(), "models": ["qwen-7b", "embed-*"], "requests_per_minute": 60}]),
        environ={},
    )
    (key,) = config.keys
    assert key.key_sha256 == CI
    assert (key.models, key.requests_per_minute, key.tokens_per_minute, key.max_concurrency, key.admin) == (
        ["qwen-7b", "embed-*"], 60, None, None, False,
    )
    assert parse_config(dump_config(config), environ={}) == config


def test_a_scope_that_matches_nothing_lists_each_known_name_once():
    text = tomli_w.dumps(
        {
            "models": [{"name": "gemma", "path": "/m/g.gguf", "aliases": ["gemma"]}],
            "keys": [{"name": "ci", "key_sha256": CI, "models": ["nope"]}],
        }
    )
    assert "keys[0].models[0]: 'nope' (matches no model name or alias; known: gemma)" in problems(text)


def test_every_key_problem_is_reported_at_once_with_dotted_paths():
    text = doc(
        [
            {"name": "ci", "key_sha256": CI, "models": ["chat", "nope-*"]},
            {"name": "ci", "key_sha256": CI},
            {"name": "has space", "key_sha256": "abc123", "requests_per_minute": 0},
            {"name": "ops", "key_sha256": key_digest("plain"), "admn": True},
        ],
        api_keys=["plain"],
    )
    assert problems(text) == [
        "keys[0].models[1]: 'nope-*' (matches no model name or alias; known: qwen-7b, chat, embed-small)",
        "keys[1].name: 'ci' (duplicate of keys[0].name)",
        f"keys[1].key_sha256: '{CI}' (the same key as keys[0].key_sha256)",
        "keys[2].name: 'has space' (must be 1 to 64 letters, digits or . _ : / @ -)",
        "keys[2].key_sha256: 'abc123' (must be 64 hexadecimal digits, the sha256 of the key: `gateway hash-key` prints it)",
        "keys[2].requests_per_minute: 0 (must be > 0)",
        "keys[3].admn: unknown key (did you mean admin?)",
        f"keys[3].key_sha256: '{key_digest('plain')}' (the hash of gateway.api_keys[0]: a key is either plain or named, not both)",
    ]


def test_key_problems_come_with_the_models_problems():
    text = tomli_w.dumps({
        "models": [{"name": "m", "path": "/m/m.gguf", "n_ctx": -1}],
        "keys": [{"name": "k", "key_sha256": "zz"}],
    })
    assert problems(text) == [
        "models[0].n_ctx: -1 (must be > 0)",
        "keys[0].key_sha256: 'zz' (must be 64 hexadecimal digits, the sha256 of the key: `gateway hash-key` prints it)",
    ]


def write_keys(path: Path, keys: list[dict]) -> Path:
    path.write_text(tomli_w.dumps({"keys": keys}))
    return path


def test_a_keys_file_named_by_models_toml_is_read_relative_to_it(tmp_path):
    (tmp_path / "secrets").mkdir()
    write_keys(tmp_path / "secrets" / "keys.toml", [{"name": "ci", "key_sha256": CI, "models": ["chat"]}])
    cfg = tmp_path / "models.toml"
    cfg.write_text(doc(keys_file="secrets/keys.toml"))
    config = load_config(cfg, environ={})
    assert [k.name for k in config.keys] == ["ci"]
    # The keys now travel with the config (the state file of `gateway serve`): nothing to read twice.
    assert config.gateway.keys_file is None
    assert parse_config(dump_config(config), environ={}) == config


def test_gateway_keys_file_in_the_environment_names_the_keys_file(tmp_path):
    keys = write_keys(tmp_path / "keys.toml", [{"name": "ops", "key_sha256": OPS, "admin": True}])
    cfg = tmp_path / "models.toml"
    cfg.write_text(doc())
    config = load_config(cfg, environ={"GATEWAY_KEYS_FILE": str(keys)})
    assert [(k.name, k.admin) for k in config.keys] == [("ops", True)]


def test_a_keys_file_reports_its_problems_under_its_own_name(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text(tomli_w.dumps({
        "keys": [{"name": "a", "key_sha256": CI, "models": ["gpt-*"]}, {"name": "a", "key_sha256": "x"}],
        "api_keys": ["misplaced"],
    }))
    cfg = tmp_path / "models.toml"
    cfg.write_text(doc(keys_file="keys.toml"))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    assert info.value.problems == [
        f"{keys}: api_keys: unknown key (a keys file holds only [[keys]] tables)",
        f"{keys}: keys[0].models[0]: 'gpt-*' (matches no model name or alias; known: qwen-7b, chat, embed-small)",
        f"{keys}: keys[1].key_sha256: 'x' (must be 64 hexadecimal digits, the sha256 of the key: `gateway hash-key` prints it)",
        f"{keys}: keys[1].name: 'a' (duplicate of keys[0].name)",
    ]


def test_a_missing_keys_file_is_a_config_error(tmp_path):
    cfg = tmp_path / "models.toml"
    cfg.write_text(doc(keys_file="absent.toml"))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    assert info.value.problems == [f"{tmp_path / 'absent.toml'}: cannot read the keys file (No such file or directory)"]


def test_keys_in_models_toml_and_a_keys_file_at_once_is_an_error():
    text = doc([{"name": "ci", "key_sha256": CI}], keys_file="keys.toml")
    assert problems(text) == ["gateway.keys_file: 'keys.toml' (models.toml has [[keys]] too: keep the keys in one place)"]


def test_validate_config_lists_the_key_problems(tmp_path, capsys):
    cfg = tmp_path / "models.toml"
    cfg.write_text(doc([{"name": "ci", "key_sha256": CI, "models": ["nope"]}, {"name": "ci", "key_sha256": "bad"}]))
    assert main(["validate-config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "keys[0].models[0]: 'nope' (matches no model name or alias" in err
    assert "keys[1].name: 'ci' (duplicate of keys[0].name)" in err
    assert "keys[1].key_sha256: 'bad' (must be 64 hexadecimal digits" in err


def test_hash_key_prints_the_line_for_a_given_key_and_a_table_with_a_name(capsys):
    assert main(["hash-key", "sk-ci"]) == 0
    assert capsys.readouterr().out == f'key_sha256 = "{CI}"\n'
    assert main(["hash-key", "sk-ci", "--name", "ci-bot"]) == 0
    assert capsys.readouterr().out == textwrap.dedent(f'''\
        [[keys]]
        name = "ci-bot"
        key_sha256 = "{CI}"
        ''')


def test_hash_key_without_a_key_makes_a_new_one_and_prints_its_hash(capsys):
    assert main(["hash-key"]) == 0
    comment, line = capsys.readouterr().out.splitlines()
    key = comment.rsplit(" ", 1)[-1]
    assert key.startswith("sk-gw-") and len(key) > 40
    assert line == f'key_sha256 = "{key_digest(key)}"'
