"""Configuration: defaults, YAML, environment overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from iatros.config import ConfigError, load_settings
from iatros.gateway import Gateway


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "iatros.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_are_local_only() -> None:
    settings = load_settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert {p.type for p in settings.providers.values()} == {
        "local",
        "sentence-transformers",
        "whisper",
    }
    assert settings.models["assistant"].deployments == ["gemma-3-270m"]
    assert settings.embeddings.default_model == "all-minilm-l6-v2"
    assert settings.log_content is False


def test_yaml_file_replaces_sections_and_env_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env")
    path = write(
        tmp_path,
        """
server: {port: 9000, workers: 2}
providers:
  openai: {type: openai, base_url: "https://api.openai.com/v1", api_key: "${UPSTREAM_KEY}"}
deployments:
  gpt: {provider: openai, model: gpt-4o-mini}
models:
  assistant: {deployments: [gpt]}
embeddings: {default_model: null}
""",
    )
    monkeypatch.setenv("IATROS_SERVER__PORT", "9100")
    monkeypatch.setenv("IATROS_ADMIN_KEY", "sk-admin-0123456789abcdefghijklmnop")
    settings = load_settings(path)
    assert settings.server.port == 9100  # environment beats the file
    assert settings.server.workers == 2
    assert list(settings.providers) == ["openai"]
    assert settings.providers["openai"].options()["api_key"] == "sk-from-env"
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == "sk-admin-0123456789abcdefghijklmnop"
    assert "sk-admin" not in repr(settings)


def test_config_from_iatros_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "log_level: debug\n")
    monkeypatch.setenv("IATROS_CONFIG", str(path))
    assert load_settings().log_level == "debug"


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("server: {port: 70000}", "server.port: Input should be less than or equal to 65535"),
        ("server: {prot: 9000}", "server.prot: unknown setting"),
        ("colour: blue", "colour: unknown setting"),
        (
            "deployments: {x: {provider: nowhere, model: m}}",
            "deployments.x.provider: unknown provider 'nowhere'",
        ),
        ("deployments: {x: {provider: local}}", "deployments.x.model: Field required"),
        (
            "deployments: {x: {provider: local, model: ''}}",
            "deployments.x.model: String should have at least 1 character",
        ),
        ("models: {a: {deployments: [ghost]}}", "models.a.deployments: unknown deployment 'ghost'"),
        ("models: {a: {deployments: [all-minilm-l6-v2]}}", "is an embedding deployment"),
        (
            "models: {gemma-3-270m: {deployments: [gemma-3-270m]}}",
            "models.gemma-3-270m: name is already used by a deployment",
        ),
        (
            "embeddings: {default_model: gemma-3-270m}",
            "embeddings.default_model: 'gemma-3-270m' is not an embedding deployment",
        ),
        ("providers: {p: {base_url: x}}", "providers.p.type: Field required"),
        (
            "server: {stall_log_ms: -1}",
            "server.stall_log_ms: Input should be greater than or equal to 0",
        ),
        ("server: [1, 2", "not valid YAML"),
        ("- just\n- a list", "the top level must be a mapping"),
        (
            "providers: {p: {type: openai, base_url: '${NOT_SET_ANYWHERE}'}}",
            "providers.p.base_url: environment variable NOT_SET_ANYWHERE is not set",
        ),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, yaml_text))
    assert fragment in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/iatros.yaml")


def test_network_bind_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IATROS_SERVER__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="refusing to serve without authentication"):
        load_settings()
    monkeypatch.setenv("IATROS_ADMIN_KEY", "sk-admin-0123456789abcdefghijklmnop")
    assert load_settings().server.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("providers", "fragment"),
    [
        (
            {"p": {"type": "telepathy"}},
            "providers.p.type: unknown provider type 'telepathy' (registered: ",
        ),
        ({"p": {"type": "openai"}}, "providers.p.base_url: Field required"),
        (
            {"p": {"type": "openai", "base_url": "http://x", "timeout_s": -1}},
            "providers.p.timeout_s: Input should be greater than 0",
        ),
        (
            {"p": {"type": "openai", "base_url": "http://x", "colour": 1}},
            "providers.p.colour: unknown setting",
        ),
        (
            {"p": {"type": "azure", "base_url": "http://x"}},
            "providers.p.api_version: required for Azure OpenAI",
        ),
        (
            {"p": {"type": "local", "n_ctx": 2}},
            "providers.p.n_ctx: Input should be greater than or equal to 128",
        ),
    ],
)
def test_provider_options_are_validated_at_start(
    providers: dict[str, object], fragment: str
) -> None:
    settings = load_settings(
        overrides={"providers": providers, "deployments": {}, "models": {}, "embeddings": {}}
    )
    with pytest.raises(ConfigError) as info:
        Gateway.from_settings(settings)
    assert fragment in str(info.value)
