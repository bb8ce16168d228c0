"""The ``skyport`` command: run services, migrate their schemas, inspect and replay dead letters, export schemas."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from skyport import simulator
from skyport.bus import create_bus, topology
from skyport.db.migrations import MigrationChanged, SchemaBehind
from skyport.errors import Unreachable
from skyport.logging import configure_logging
from skyport.runtime import ServiceSpec, migrate, run_services
from skyport.settings import CommonSettings, SettingsError, load_settings

# Services register themselves, so that this library names none: an entry point in this group is a service's
# name and its ServiceSpec (``catalog = "mypackage.catalog.app:service"``), read from the installed packages.
SERVICE_GROUP = "skyport.services"
# An entry point in this group adds a service's own subcommands (``skyport monitor status``): a function that
# takes the ``skyport`` command's subparsers.
COMMAND_GROUP = "skyport.commands"

DESCRIPTION = """\
Skyport's command line: run services, migrate their database schemas, inspect and replay dead letters,
write a simulated observing night, export the event schemas, and the installed services' own commands.
Settings come from SKYPORT_* environment variables (SKYPORT_BUS_URL, SKYPORT_DATABASE_URL, ...)."""


class UsageError(Exception):
    """A mistake in the command line, reported in one line without a traceback."""


def installed_services() -> dict[str, EntryPoint]:
    """The services installed in this environment, by name, in the order their packages declare them."""
    return {entry.name: entry for entry in entry_points(group=SERVICE_GROUP)}


def available_services() -> list[str]:
    return list(installed_services())


def load_service(name: str) -> ServiceSpec[Any]:
    """An installed service by name (``catalog``), or any ServiceSpec by import path (``package.module:attribute``)."""
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        try:
            spec = getattr(importlib.import_module(module_name), attribute, None)
        except ModuleNotFoundError as exc:
            raise UsageError(f"cannot import {module_name}: {exc}") from exc
    else:
        entry = installed_services().get(name)
        if entry is None:
            raise UsageError(f"unknown service {name!r}; installed: {', '.join(available_services()) or 'none'}")
        spec = entry.load()
    if not isinstance(spec, ServiceSpec):
        raise UsageError(f"{name} is not a ServiceSpec")
    return spec


def _cmd_run(args: argparse.Namespace) -> int:
    names = available_services() if args.services == ["all"] else args.services
    if not names:
        raise UsageError("no service exists in this repository yet: nothing to run")
    specs = [load_service(name) for name in names]
    asyncio.run(run_services(specs))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    names = args.services or available_services()
    loaded = [load_service(name) for name in names]
    specs = [spec for spec in loaded if spec.migrations is not None]
    settings = CommonSettings()

    async def main() -> None:
        for spec in specs:
            applied = await migrate(spec, settings)
            print(f"{spec.name}: {len(applied)} migration(s) applied" + (f" ({', '.join(applied)})" if applied else ""))
        # The bus too: a command published before its consumer first starts waits in its queue instead of vanishing.
        queues = await topology.apply_topology(settings.bus_url, {spec.name for spec in loaded})
        print(f"bus: exchanges, dead letters and {len(queues)} work queue(s) declared")

    asyncio.run(main())
    return 0


def _cmd_dlq(args: argparse.Namespace) -> int:
    settings = CommonSettings()

    async def main() -> int:
        bus = create_bus(settings.bus_url, service="skyport-cli")
        await bus.start()
        try:
            if args.dlq_command == "list":
                letters = await bus.dead_letters(limit=args.limit)
                if args.json:
                    for letter in letters:
                        print(
                            json.dumps(
                                {
                                    "message_id": letter.message_id,
                                    "queue": letter.queue,
                                    "routing_key": letter.routing_key,
                                    "event_type": letter.event_type,
                                    "reason": letter.reason,
                                    "attempts": letter.attempts,
                                    "dead_lettered_at": letter.dead_lettered_at.isoformat()
                                    if letter.dead_lettered_at
                                    else None,
                                    "body": letter.body.decode(errors="replace"),
                                }
                            )
                        )
                else:
                    for letter in letters:
                        when = letter.dead_lettered_at.isoformat(timespec="seconds") if letter.dead_lettered_at else "?"
                        print(
                            f"{letter.message_id}  {when}  queue={letter.queue}  type={letter.event_type}  "
                            f"attempts={letter.attempts}\n    reason: {letter.reason}"
                        )
                    print(f"{len(letters)} dead letter(s)" + (" shown (--limit)" if len(letters) == args.limit else ""))
                return 0
            if args.dlq_command == "replay":
                if not args.ids and not args.all:
                    raise UsageError("name the message ids to replay, or --all")
                count = await bus.replay_dead_letters(None if args.all else set(args.ids))
                print(f"{count} dead letter(s) replayed to the queues that failed them")
                return 0 if args.all or count == len(set(args.ids)) else 1
            count = await bus.drop_dead_letters(set(args.ids))
            print(f"{count} dead letter(s) dropped")
            return 0 if count == len(set(args.ids)) else 1
        finally:
            await bus.close()

    return asyncio.run(main())


def _cmd_schemas(args: argparse.Namespace) -> int:
    from skyport.events.schemas import export_schemas, schema_differences

    directory = Path(args.out)
    if args.check:
        problems = schema_differences(directory)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run `make schemas` and commit the result", file=sys.stderr)
        return 1 if problems else 0
    for path in export_schemas(directory):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyport", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    installed = ", ".join(available_services()) or "none"
    run = commands.add_parser(
        "run",
        help="run one or several services in this process",
        description="Run services in this process until SIGTERM or Ctrl-C; they share one bus connection and "
        "one /healthz, /readyz and /metrics server.",
    )
    run.add_argument(
        "services",
        nargs="+",
        metavar="NAME",
        help=f"installed services ({installed}), 'all', or module:attribute of a ServiceSpec",
    )
    run.set_defaults(func=_cmd_run)

    mig = commands.add_parser(
        "migrate",
        help="apply pending database migrations and declare the bus topology",
        description="Apply each service's pending database migrations (a release step: services refuse to "
        "start on a schema that is behind).",
    )
    mig.add_argument("services", nargs="*", metavar="NAME", help=f"services to migrate (default: all: {installed})")
    mig.set_defaults(func=_cmd_migrate)

    dlq = commands.add_parser(
        "dlq",
        help="inspect, replay or drop dead-lettered messages",
        description="Messages a consumer refused, or failed too often, wait in the dead-letter queue with the "
        "reason: list them, send them back to the queue that failed them once the cause is fixed, or drop them.",
    )
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = dlq_commands.add_parser("list", help="list dead letters with the reason each failed")
    listing.add_argument("--limit", type=int, default=100, help="show at most this many (default: 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line, with the message body")
    replay = dlq_commands.add_parser("replay", help="send dead letters back to the queue that failed them")
    replay.add_argument("ids", nargs="*", metavar="MESSAGE_ID", help="the dead letters to replay (from `dlq list`)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    drop = dlq_commands.add_parser("drop", help="delete dead letters for good")
    drop.add_argument("ids", nargs="+", metavar="MESSAGE_ID", help="the dead letters to delete (from `dlq list`)")
    dlq.set_defaults(func=_cmd_dlq)

    for entry in entry_points(group=COMMAND_GROUP):  # `skyport monitor status`, `skyport catalog add-user`, ...
        add_commands: Callable[[Any], None] = entry.load()
        add_commands(commands)

    simulate = commands.add_parser(
        "simulate",
        help="write a simulated observing night of FITS files",
        description="Write a simulated observing night into the folders a monitor watches: FITS files named, "
        "written and completed as each configured instrument does, with optional bad files. Started again over "
        "the same folders, the night continues where the files stop.",
    )
    simulator.add_arguments(simulate)
    simulate.set_defaults(func=simulator.main)

    schemas = commands.add_parser(
        "schemas",
        help="export the event JSON Schemas (or --check them)",
        description="Write the JSON Schema of every event type and of the CloudEvents envelope, generated from "
        "the event models; --check compares the files with the models instead.",
    )
    schemas.add_argument("--out", default="schemas/v1", help="the folder of the schema files (default: schemas/v1)")
    schemas.add_argument("--check", action="store_true", help="fail when the files and the models disagree")
    schemas.set_defaults(func=_cmd_schemas)

    definitions = commands.add_parser("topology", help="print the bus topology as RabbitMQ definitions (JSON)")
    topology.add_arguments(definitions)
    definitions.set_defaults(func=topology.main)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description of its own its one-line help, so that its --help says what it
    does, whoever added it."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, subparser in action.choices.items():
            if not subparser.description and helps.get(name):
                text = str(helps[name])
                subparser.description = text[0].upper() + text[1:] + "."
            _describe(subparser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "run":
            settings = load_settings(CommonSettings)
            configure_logging("console" if sys.stderr.isatty() else settings.log_format, settings.log_level)
        result: int = args.func(args)
    except UsageError as exc:
        print(f"skyport: {exc}", file=sys.stderr)
        return 2
    except (SchemaBehind, MigrationChanged, Unreachable, SettingsError) as exc:
        print(f"skyport: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
