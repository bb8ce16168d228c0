"""The demo composes the services' settings without writing into the environment, and the caller's values win."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.demo import ServiceSettings, common_settings, service_settings, signing_secret


def settings_of(home: Path) -> ServiceSettings:
    return service_settings(
        home,
        8099,
        site_token="site-secret",
        gateway_token="gateway-secret",
        notifier_token="notifier-secret",
        signing_secret="x" * 40,
        smtp_port=2525,
    )


@pytest.fixture(autouse=True)
def _no_skyport_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SKYPORT_")]:
        monkeypatch.delenv(name)


def test_the_composition_leaves_the_environment_unchanged(tmp_path: Path) -> None:
    before = dict(os.environ)

    common = common_settings(tmp_path)
    settings = settings_of(tmp_path)

    assert dict(os.environ) == before
    assert common.bus_url == "memory://"
    assert common.database_url == f"embedded://{(tmp_path / 'postgres').resolve()}"
    assert set(settings.by_name()) == {"receiver", "ingestor", "catalog", "notifier", "gateway", "monitor"}
    assert all(s.migrate_on_start for s in settings.by_name().values())
    assert settings.monitor.site_token.get_secret_value() == "site-secret"
    assert settings.monitor.receiver_url == "http://127.0.0.1:8081"
    assert settings.monitor.watch_root == tmp_path / "observatory"
    assert settings.gateway.gateway_catalog_token.get_secret_value() == "gateway-secret"
    assert settings.gateway.gateway_port == 8099
    assert settings.gateway.gateway_catalog_url == settings.catalog.catalog_public_url == "http://127.0.0.1:8082"
    assert settings.ingestor.storage_dir == settings.catalog.storage_dir == tmp_path / "archive"
    # The notifier asks the demo's catalog and sends to the demo's mailbox, in plain text on 127.0.0.1.
    assert settings.notifier.notifier_catalog_url == settings.catalog.catalog_public_url
    assert settings.notifier.notifier_catalog_token.get_secret_value() == "notifier-secret"
    assert (settings.notifier.smtp_host, settings.notifier.smtp_port) == ("127.0.0.1", 2525)
    assert settings.notifier.smtp_security == "none"
    # Its links go through the gateway's one address, which forwards them to it.
    assert settings.notifier.notifier_public_url == "http://127.0.0.1:8099"
    assert settings.gateway.gateway_notifier_url == "http://127.0.0.1:8084"


def test_what_the_caller_set_in_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYPORT_BUS_URL", "amqp://guest:guest@rabbit:5672/")
    monkeypatch.setenv("SKYPORT_DATABASE_URL", "postgresql://postgres@db:5432/skyport")
    monkeypatch.setenv("SKYPORT_CATALOG_PORT", "9182")
    monkeypatch.setenv("SKYPORT_RECEIVER_PORT", "9181")
    monkeypatch.setenv("SKYPORT_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SKYPORT_NOTIFIER_PORT", "9184")

    common = common_settings(tmp_path)
    settings = settings_of(tmp_path)

    assert common.bus_url == "amqp://guest:guest@rabbit:5672/"
    assert common.log_level == "DEBUG"
    assert settings.catalog.database_url == "postgresql://postgres@db:5432/skyport"
    # What follows from a chosen port follows the caller's port.
    assert settings.catalog.catalog_public_url == settings.gateway.gateway_catalog_url == "http://127.0.0.1:9182"
    assert settings.monitor.receiver_url == "http://127.0.0.1:9181"
    assert settings.gateway.gateway_notifier_url == "http://127.0.0.1:9184"
    assert settings.notifier.notifier_catalog_url == "http://127.0.0.1:9182"


def test_the_credentials_made_at_start_win_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A credential in the environment belongs to another archive: the demo's receiver knows only its own.
    monkeypatch.setenv("SKYPORT_SITE_TOKEN", "")
    monkeypatch.setenv("SKYPORT_GATEWAY_CATALOG_TOKEN", "someone-elses")
    # A mail server in the environment is not the demo's mailbox: the demo's email never leaves the machine.
    monkeypatch.setenv("SKYPORT_SMTP_HOST", "smtp.example.org")
    monkeypatch.setenv("SKYPORT_SMTP_SECURITY", "tls")
    monkeypatch.setenv("SKYPORT_NOTIFIER_CATALOG_TOKEN", "someone-elses")

    settings = settings_of(tmp_path)

    assert settings.monitor.site_token.get_secret_value() == "site-secret"
    assert settings.gateway.gateway_catalog_token.get_secret_value() == "gateway-secret"
    assert settings.notifier.notifier_catalog_token.get_secret_value() == "notifier-secret"
    assert (settings.notifier.smtp_host, settings.notifier.smtp_port) == ("127.0.0.1", 2525)
    assert settings.notifier.smtp_security == "none"


def test_the_signing_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    first = signing_secret(tmp_path)

    assert len(first) >= 32
    assert signing_secret(tmp_path) == first  # a restarted demo's unsubscribe links still verify
    assert (tmp_path / "notifier" / "signing-secret").stat().st_mode & 0o077 == 0
