"""Settings come from SKYPORT_ variables; the retry policy backs off within its bounds."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from skyport.bus import RetryPolicy, create_bus
from skyport.cli import main
from skyport.settings import CommonSettings, SettingsError, load_settings


def test_settings_read_the_skyport_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_BUS_URL", "memory://demo")
    monkeypatch.setenv("SKYPORT_HEALTH_PORT", "9100")
    monkeypatch.setenv("BUS_URL", "amqp://wrong")
    settings = CommonSettings()
    assert settings.bus_url == "memory://demo"
    assert settings.health_port == 9100


def test_a_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        CommonSettings()


class _NeedsASite(CommonSettings):
    site_name: str = Field(description="required: no default")


def test_a_missing_or_wrong_setting_names_its_variable_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_SHUTDOWN_TIMEOUT", "soon")
    monkeypatch.delenv("SKYPORT_SITE_NAME", raising=False)
    with pytest.raises(SettingsError) as caught:
        load_settings(_NeedsASite)
    message = str(caught.value)
    assert "\n" not in message
    assert "SKYPORT_SITE_NAME: Field required" in message
    assert "SKYPORT_SHUTDOWN_TIMEOUT: " in message


def test_the_command_line_says_a_wrong_setting_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKYPORT_LOG_LEVEL", "LOUD")
    assert main(["dlq", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("skyport: CommonSettings: SKYPORT_LOG_LEVEL: ")
    assert "\n" not in err


def test_every_setting_is_described() -> None:
    assert all(field.description for field in CommonSettings.model_fields.values())


def test_the_bus_url_chooses_the_implementation() -> None:
    assert type(create_bus("memory://x")).__name__ == "MemoryBus"
    assert type(create_bus("amqp://guest:guest@localhost/")).__name__ == "AmqpBus"
    with pytest.raises(ValueError, match="unsupported bus URL scheme 'kafka'"):
        create_bus("kafka://localhost")


def test_retry_delays_grow_and_stay_under_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=0.5, max_delay=30, multiplier=3)
    delays = [policy.delay(attempt) for attempt in range(1, 10)]
    assert 0.4 <= delays[0] <= 0.6
    assert 1.2 <= delays[1] <= 1.8
    assert all(d <= 30 * 1.2 for d in delays)
    assert delays[-1] >= 30 * 0.8
