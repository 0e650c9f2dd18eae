"""Settings: sources, precedence, secrets, and their documentation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from concilium.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_need_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.chat.default_model == "qwen2.5-coder-1.5b"
    assert settings.backends["local"].type == "embedded"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.database_url.endswith("concilium.db")
    assert settings.server.host == "127.0.0.1"


def test_toml_file_then_environment_then_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'data_dir = "/srv/concilium"\n'
        '[server]\nport = 9000\nhost = "0.0.0.0"\n'
        '[chat]\ndefault_model = "fast"\n'
        '[backends.groq]\ntype = "openai"\nbase_url = "https://api.groq.com/openai/v1"\n'
        '[models.fast]\ntargets = ["groq/llama-3.1-8b-instant", "local/qwen2.5-coder-0.5b"]\n'
    )
    monkeypatch.setenv("CONCILIUM_SERVER__PORT", "9100")
    settings = load_settings(config, chat={"temperature": 0.1})
    assert settings.server.port == 9100  # env beats file
    assert settings.server.host == "0.0.0.0"  # file beats default
    assert settings.data_dir == Path("/srv/concilium")
    assert settings.chat.default_model == "fast"
    assert settings.chat.temperature == 0.1  # arguments beat everything
    assert settings.models["fast"].targets[0] == "groq/llama-3.1-8b-instant"
    assert settings.backends["groq"].base_url == "https://api.groq.com/openai/v1"

    monkeypatch.setenv("CONCILIUM_CONFIG_FILE", str(config))
    assert load_settings().server.host == "0.0.0.0"


def test_concilium_toml_in_the_working_directory_is_picked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "concilium.toml").write_text("[server]\nport = 9999\n")
    assert load_settings().server.port == 9999


def test_postgres_urls_use_the_async_driver() -> None:
    settings = Settings(database={"url": "postgresql://u@db:5432/x"})
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/x"


def test_api_keys_come_from_env_or_file_and_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-from-env")
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    settings = Settings(
        backends={
            "a": {"type": "openai", "base_url": "http://x", "api_key_env": "MY_KEY"},
            "b": {
                "type": "openai",
                "base_url": "http://y",
                "api_key_file": str(key_file),
                "headers": {"x-api-key": "sk-in-a-header"},
            },
        },
        database={"url": "postgresql://user:db-password@db/x"},
    )
    assert settings.backends["a"].api_key.get_secret_value() == "sk-from-env"  # type: ignore[union-attr]
    assert settings.backends["b"].api_key.get_secret_value() == "sk-from-file"  # type: ignore[union-attr]
    dumped = settings.model_dump_json()
    for secret in ("sk-from-env", "sk-from-file", "sk-in-a-header", "db-password"):
        assert secret not in dumped
        assert secret not in repr(settings)
    assert "user:***@db/x" in dumped
    assert settings.database_url == "postgresql+asyncpg://user:db-password@db/x"


@pytest.mark.parametrize(
    "bad",
    [
        {"server": {"port": 0}},
        {"server": {"max_body_bytes": 10}},
        {"router": {"retries": -1}},
        {"chat": {"temperature": 3}},
        {"unknown_section": {}},
        {"server": {"typo": 1}},
        {"backends": {"a/b": {"type": "openai"}}},
        {"backends": {"x": {"type": "openai", "api_key": "changeme"}}},
        {"backends": {"x": {"type": "openai", "api_key_file": "/nonexistent/key"}}},
        {"models": {"m": {"targets": []}}},
        {"logging": {"level": "LOUD"}},
    ],
)
def test_invalid_settings_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _fields(annotation, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_every_setting_is_documented() -> None:
    from concilium.config import BackendSettings, ModelAlias

    doc = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", doc))
    names = _fields(Settings)
    names += [f"backends.NAME.{n}" for n in _fields(BackendSettings)]
    names += [f"models.NAME.{n}" for n in _fields(ModelAlias)]
    missing = [n for n in names if n not in documented]
    assert not missing, f"undocumented settings: {missing}"


def test_every_backend_option_is_documented() -> None:
    from concilium.llm.registry import backend_types

    doc = (REPO / "docs" / "backends.md").read_text()
    for name, cls in backend_types().items():
        assert f'`type = "{name}"`' in doc, f"backend type {name} undocumented"
        if cls.options_model is not None:
            for option in cls.options_model.model_fields:
                assert f"`options.{option}`" in doc, f"{name}: options.{option} undocumented"


def test_every_setting_has_a_description() -> None:
    from concilium.config import BackendSettings, ModelAlias

    for model in (Settings, BackendSettings, ModelAlias):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                for sub, subfield in annotation.model_fields.items():
                    assert subfield.description, f"{name}.{sub} has no description"
            else:
                assert field.description, f"{model.__name__}.{name} has no description"


def test_the_tests_use_the_models_folder_the_server_uses_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make run` and `make test` assemble the default model once, in one folder."""
    from tests.conftest import MODELS_DIR

    monkeypatch.delenv("CONCILIUM_DATA_DIR", raising=False)
    monkeypatch.delenv("CONCILIUM_MODELS_DIR", raising=False)
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "--models-dir $(MODELS_DIR)" in makefile
    assert "MODELS_DIR ?= $(or $(XDG_DATA_HOME),$(HOME)/.local/share)/concilium/models" in makefile
    assert Settings().resolved_models_dir == MODELS_DIR


def test_a_renamed_section_is_still_read_under_its_former_name() -> None:
    """``orchestration.router`` became ``orchestration.classifier`` ("router" is the
    model router only): old files keep working, with a warning; both at once is an error."""
    with pytest.warns(DeprecationWarning, match="orchestration.classifier"):
        settings = Settings(orchestration={"router": {"threshold": 0.3}})
    assert settings.orchestration.classifier.threshold == 0.3
    with pytest.raises(ValueError, match="keep one"):
        Settings(orchestration={"router": {}, "classifier": {}})
