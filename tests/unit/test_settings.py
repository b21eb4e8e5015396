"""Settings: environment over config file over defaults; bad values name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings


def test_defaults_point_at_the_native_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SWITCHBOARD_CONFIG", "SWITCHBOARD_KAFKA_BOOTSTRAP", "SWITCHBOARD_PARTITIONS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.schema_registry_url == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert settings.processing_guarantee == "exactly_once"


def test_environment_overrides_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text('partitions = 12\ntopic_prefix = "acme."\n')
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    monkeypatch.setenv("SWITCHBOARD_PARTITIONS", "24")
    settings = Settings()
    assert settings.partitions == 24
    assert settings.topic_prefix == "acme."


def test_a_missing_config_file_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_CONFIG", "/nonexistent/switchboard.toml")
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/switchboard\.toml"):
        Settings()


def test_unknown_keys_in_the_config_file_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text("partitons = 12\n")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(config))
    with pytest.raises(ValidationError, match="partitons"):
        Settings()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kafka_bootstrap", "localhost", "expected host:port"),
        ("partitions", 0, "greater than or equal to 1"),
        ("processing_guarantee", "maybe", "exactly_once"),
    ],
)
def test_bad_values_name_the_setting(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({field: value})
    assert field in str(caught.value)
    assert message in str(caught.value)


def test_min_insync_replicas_cannot_exceed_replication() -> None:
    with pytest.raises(ValidationError, match=r"min_insync_replicas \(2\) exceeds"):
        Settings(replication_factor=1, min_insync_replicas=2)


def test_a_body_limit_a_dead_letter_could_not_carry_is_refused() -> None:
    """Issue 20, item 14: a refused body is dead-lettered whole, so the body limit must
    leave room under the largest record a producer may send."""
    defaults = Settings()
    assert defaults.gateway_max_body_bytes + 16_384 <= defaults.kafka_max_message_bytes
    with pytest.raises(ValidationError, match=r"gateway_max_body_bytes \(1048576\) must be at"):
        Settings(gateway_max_body_bytes=1_048_576)
    Settings(gateway_max_body_bytes=1_048_576, kafka_max_message_bytes=1_100_000)
