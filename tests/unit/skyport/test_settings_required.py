"""Required settings are required at start, said in one line naming the variable; defaults never beat the caller."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr

from services.gateway.settings import GatewaySettings
from services.monitor.settings import MonitorJournalSettings, MonitorSettings
from skyport.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _no_skyport_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SKYPORT_")]:
        monkeypatch.delenv(name)


def test_the_gateway_without_its_catalog_token_is_refused_naming_the_variable_and_what_to_do() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(GatewaySettings)
    message = str(caught.value)
    assert "\n" not in message
    assert "SKYPORT_GATEWAY_CATALOG_TOKEN: Field required" in message
    assert "skyport catalog issue-token gateway" in message


def test_the_monitor_needs_the_archives_address_and_its_site_credential() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(MonitorSettings)
    message = str(caught.value)
    assert "SKYPORT_RECEIVER_URL: Field required" in message
    assert "SKYPORT_SITE_TOKEN: Field required" in message


def test_an_empty_credential_is_no_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    # docker-compose's ${SKYPORT_SITE_TOKEN:-} gives the empty string when the operator set nothing.
    monkeypatch.setenv("SKYPORT_SITE_TOKEN", " ")
    monkeypatch.setenv("SKYPORT_RECEIVER_URL", "http://receiver:8081/")
    monkeypatch.setenv("SKYPORT_GATEWAY_CATALOG_TOKEN", "")
    with pytest.raises(SettingsError, match="SKYPORT_SITE_TOKEN: Value error, must not be empty"):
        load_settings(MonitorSettings)
    with pytest.raises(SettingsError, match="SKYPORT_GATEWAY_CATALOG_TOKEN: Value error, must not be empty"):
        load_settings(GatewaySettings)


def test_the_monitors_commands_need_only_the_journal() -> None:
    # `skyport monitor status` at the observatory, where the site credential is the running monitor's business.
    assert load_settings(MonitorJournalSettings).journal_path.name == "journal.sqlite3"


def test_defaults_give_way_to_the_environment_and_overrides_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_RECEIVER_URL", "https://archive.example.org")
    monkeypatch.setenv("SKYPORT_SITE_TOKEN", "from-the-environment")
    monkeypatch.setenv("SKYPORT_RESCAN_INTERVAL", "7")

    settings = load_settings(
        MonitorSettings,
        {"receiver_url": "http://127.0.0.1:8081", "rescan_interval": 1.0, "follow_interval": 0.25},
        overrides={"site_token": SecretStr("made-here")},
    )

    assert settings.receiver_url == "https://archive.example.org"
    assert settings.rescan_interval == 7.0
    assert settings.follow_interval == 0.25
    assert settings.site_token.get_secret_value() == "made-here"


def test_a_default_for_a_setting_that_does_not_exist_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="MonitorSettings has no setting reciever_url"):
        load_settings(MonitorSettings, {"reciever_url": "http://x"})
