"""The ``skyport`` command as a new user meets it: help for everything, and the services that are installed."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from skyport.cli import COMMAND_GROUP, SERVICE_GROUP, available_services, build_parser, load_service, main
from skyport.errors import redact

LIBRARY = Path(__file__).resolve().parents[3] / "libs" / "skyport"
# reStructuredText a terminal shows as is: ``literal``, :class:`Name`, :func:`name`.
MARKUP = re.compile(r"``|:(?:class|func|meth|mod|attr):`")


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from commands(subparser, (*path, name))


def test_every_command_says_what_it_does_and_every_argument_has_help() -> None:
    found = list(commands(build_parser()))
    assert len(found) > 10

    for path, parser in found:
        what = "skyport " + " ".join(path)
        assert parser.description, f"{what} --help does not say what it does"
        assert not MARKUP.search(parser.format_help()), f"{what} --help shows raw markup"
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                assert action.help, f"{what}: {action.dest} has no help"


def test_run_offers_the_installed_services_and_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    installed = {entry.name for entry in entry_points(group=SERVICE_GROUP)}
    assert {"monitor", "receiver", "ingestor", "catalog", "gateway", "notifier"} <= installed
    assert set(available_services()) == installed

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name in installed:
        assert name in text
    assert "reprocessor" not in text  # not written yet, so not installed


def test_services_add_their_own_commands_by_entry_point() -> None:
    names = {path[0] for path, _ in commands(build_parser()) if path}
    assert {entry.name for entry in entry_points(group=COMMAND_GROUP)} <= names


def test_an_unknown_service_is_named_with_those_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "reprocessor"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("skyport: unknown service 'reprocessor'; installed: ")
    assert "catalog" in error


def test_a_service_loads_by_name_or_by_import_path() -> None:
    assert load_service("catalog").name == "catalog"
    assert load_service("services.catalog.app:service") is load_service("catalog")


def test_the_library_names_no_service() -> None:
    """libs/skyport is installed on its own by downstream pipelines: it must not import or name the services."""
    offending = [
        f"{path.relative_to(LIBRARY)}:{number}: {line.strip()}"
        for path in LIBRARY.rglob("*")
        if path.suffix in (".py", ".toml", ".md") and path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"\bservices(\.[a-z]|/)|(import|from) services\b", line)
    ]
    assert offending == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres:s3cret@db.example:5432/skyport", "postgresql://postgres:***@db.example:5432/skyport"),
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("postgresql://postgres@localhost/skyport", "postgresql://postgres@localhost/skyport"),
        ("memory://", "memory://"),
    ],
)
def test_a_url_is_printed_without_its_password(url: str, shown: str) -> None:
    assert redact(url) == shown
