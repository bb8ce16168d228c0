"""docker-compose.yml and deploy/Dockerfile name only services, settings, dependencies and files that exist.

Nothing here runs Docker: the files are read as text and YAML and held against the repository, so that a
renamed setting, a removed service or a moved file fails here rather than at `docker compose up`.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from skyport.bus.topology import rabbitmq_definitions, user_from_bus_url
from skyport.settings import CommonSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
RABBITMQ_DEFINITIONS = REPO / "deploy" / "rabbitmq" / "definitions.json"
RABBITMQ_CONF = REPO / "deploy" / "rabbitmq" / "rabbitmq.conf"
ENV_PREFIX = "SKYPORT_"
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# An extension field (x-...) with one of these keys is a template for services, not a mapping of variables.
SERVICE_KEYS = {"image", "build", "command", "entrypoint", "depends_on", "stop_grace_period"}
# Compose's own default when a service sets no stop_grace_period.
DEFAULT_STOP_GRACE_PERIOD = "10s"
# A compose document, or a part of one, as PyYAML reads it.
Document = Mapping[str, Any]


def existing_services(repo: Path) -> set[str]:
    """The services of the repository: the folders of ``services/`` that have an ``app.py``."""
    return {app.parent.name for app in (repo / "services").glob("*/app.py")}


def setting_names(services: set[str]) -> set[str]:
    """Every setting a Skyport container reads: the common ones and those of each service's settings class."""
    names = set(CommonSettings.model_fields)
    for name in sorted(services):
        spec = importlib.import_module(f"services.{name}.app").service
        names |= set(spec.settings_class.model_fields)
    return names


def skyport_variables(node: Any) -> Iterator[str]:
    """Every ``SKYPORT_*`` variable set anywhere in a YAML tree: mapping keys and ``NAME=value`` items."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(key, str) and key.upper().startswith(ENV_PREFIX):
                yield key
            yield from skyport_variables(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and item.upper().startswith(ENV_PREFIX):
                yield item.partition("=")[0]
            else:
                yield from skyport_variables(item)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: object) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    text = str(value).strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def as_argv(value: Any) -> list[str]:
    """A compose command or entrypoint (a string in shell syntax, or a list) as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(word) for word in value]


def environment_value(definition: Document, name: str) -> str | None:
    """The value a service definition gives an environment variable (case-insensitive, like the settings)."""
    environment = definition.get("environment") or {}
    pairs = (
        environment.items()
        if isinstance(environment, Mapping)
        else (str(item).partition("=")[::2] for item in environment)
    )
    for key, value in pairs:
        if str(key).upper() == name:
            return None if value is None else str(value)
    return None


def dockerfile_of(definition: Document, repo: Path) -> Path | None:
    """The Dockerfile a service definition builds from (relative to its build context), if it builds."""
    build = definition.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    return repo / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def bind_sources(definition: Document) -> Iterator[str]:
    """The host paths a service definition bind-mounts (named volumes are not paths)."""
    for volume in definition.get("volumes") or []:
        if isinstance(volume, Mapping):
            if volume.get("type") == "bind":
                yield str(volume["source"])
        elif str(volume).startswith((".", "/", "~")):
            yield str(volume).split(":", 1)[0]


def compose_problems(compose: Document, *, repo: Path, services: set[str], settings: set[str]) -> list[str]:
    """What in a compose document does not match the repository, one sentence per problem.

    ``services`` are the services that exist (``services/<name>/app.py``) and ``settings`` the names of
    every setting field they read, lower-case and without the ``SKYPORT_`` prefix.
    """
    problems: list[str] = []
    containers: Document = compose.get("services") or {}
    templates = {
        key: value
        for key, value in compose.items()
        if str(key).startswith("x-") and isinstance(value, Mapping) and SERVICE_KEYS & value.keys()
    }
    definitions = {**{f"service {name!r}": c for name, c in containers.items()}, **templates}

    skyport_dockerfile = (repo / "deploy" / "Dockerfile").resolve()

    def builds_skyport(definition: Document) -> bool:
        dockerfile = dockerfile_of(definition, repo)
        return dockerfile is not None and dockerfile.resolve() == skyport_dockerfile

    skyport_images = {d.get("image") for d in definitions.values() if builds_skyport(d)} - {None}

    def runs_skyport_image(definition: Document) -> bool:
        return builds_skyport(definition) or definition.get("image") in skyport_images

    def skyport_run_targets(definition: Document) -> list[str] | None:
        """The services a definition runs with `skyport run`, or None when it does not run `skyport run`."""
        if "entrypoint" in definition:
            argv = as_argv(definition["entrypoint"]) + as_argv(definition.get("command"))
        elif runs_skyport_image(definition):
            argv = ["skyport", *as_argv(definition.get("command"))]
        else:
            argv = as_argv(definition.get("command"))
        if len(argv) < 2 or PurePosixPath(argv[0]).name != "skyport" or argv[1] != "run":
            return None
        return [word for word in argv[2:] if not word.startswith("-")]

    def has_healthcheck(definition: Document) -> bool:
        healthcheck = definition.get("healthcheck")
        if healthcheck is not None:
            return not healthcheck.get("disable", False) and healthcheck.get("test") != ["NONE"]
        # The Skyport image declares a HEALTHCHECK (test_dockerfile_agrees_with_the_repository keeps it so).
        return runs_skyport_image(definition)

    # Services run, both ways round.
    run_somewhere: set[str] = set()
    for where, definition in definitions.items():
        targets = skyport_run_targets(definition)
        if targets is None:
            continue
        if not targets:
            problems.append(f"{where} runs `skyport run` without naming a service")
        for target in targets:
            run_somewhere.add(target)
            if target not in services:
                problems.append(
                    f"{where} runs unknown service {target!r}: there is no services/{target}/app.py "
                    f"(services: {', '.join(sorted(services)) or 'none'})"
                )
    for name in sorted(services - run_somewhere):
        problems.append(f"service {name!r} exists (services/{name}/app.py) but no container runs it")

    # Settings: every SKYPORT_* variable, wherever it is set, is a field of some settings class.
    for variable in sorted(set(skyport_variables(compose))):
        if variable[len(ENV_PREFIX) :].lower() not in settings:
            problems.append(f"{variable} is not a Skyport setting (no settings class has that field)")

    for where, definition in definitions.items():
        # Dependencies exist, and a container waited on for health has a health check.
        depends_on = definition.get("depends_on") or {}
        if not isinstance(depends_on, Mapping):
            depends_on = {name: {"condition": "service_started"} for name in depends_on}
        for target, options in depends_on.items():
            condition = (options or {}).get("condition", "service_started")
            if target not in containers:
                problems.append(f"{where} depends on {target!r}, which is not a service of this file")
            elif condition not in DEPENDS_ON_CONDITIONS:
                problems.append(f"{where} waits for {target!r} with unknown condition {condition!r}")
            elif condition == "service_healthy" and not has_healthcheck(containers[target]):
                problems.append(f"{where} waits for {target!r} to be healthy, but it has no health check")

        # Files named exist.
        dockerfile = dockerfile_of(definition, repo)
        if dockerfile is not None and not dockerfile.is_file():
            problems.append(f"{where} builds from {dockerfile.relative_to(repo)}, which does not exist")
        for source in bind_sources(definition):
            if not source.startswith(("/", "~")) and not (repo / source).exists():
                problems.append(f"{where} mounts {source}, which does not exist")

        # A Skyport service gets the time its shutdown needs before Docker sends SIGKILL.
        long_running = skyport_run_targets(definition) is not None or (
            where in templates and "stop_grace_period" in definition
        )
        if runs_skyport_image(definition) and long_running:
            timeout = environment_value(definition, "SKYPORT_SHUTDOWN_TIMEOUT")
            shutdown = float(timeout) if timeout else CommonSettings.model_fields["shutdown_timeout"].default
            grace = definition.get("stop_grace_period", DEFAULT_STOP_GRACE_PERIOD)
            if duration_seconds(grace) <= shutdown:
                problems.append(
                    f"{where} has stop_grace_period {grace}, not more than its shutdown timeout of "
                    f"{shutdown:g} s: Docker would kill it while in-flight work is still finishing"
                )
    return problems


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore ``patterns`` leave ``path`` (or a folder holding it) out of the build context.

    Close to Docker's rules (the last matching line wins, ``!`` re-includes, ``**/`` matches any depth) but
    ``*`` may also cross ``/`` here, so it errs on the side of reporting.
    """
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in patterns:
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        alternatives = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in alternatives):
            ignored = not negated
    return ignored


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """The instructions of a Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        instruction, _, arguments = line.strip().partition(" ")
        if instruction:
            yield instruction.upper(), arguments.strip()


def dockerfile_problems(text: str, *, repo: Path, settings: set[str], ignored: list[str]) -> list[str]:
    """What in a Dockerfile does not match the repository, one sentence per problem."""
    problems: list[str] = []
    for variable in sorted(set(re.findall(r"\bSKYPORT_[A-Z0-9_]+", text))):
        if variable[len(ENV_PREFIX) :].lower() not in settings:
            problems.append(f"{variable} is not a Skyport setting (no settings class has that field)")

    instructions = list(dockerfile_instructions(text))
    for instruction, arguments in instructions:
        if instruction not in {"COPY", "ADD"}:
            continue
        words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
        if any(word.startswith("--from") for word in words):
            continue
        for source in [word for word in words if not word.startswith("--")][:-1]:
            if not (repo / source).exists():
                problems.append(f"{instruction} {source}: no such file in the repository")
            elif dockerignored(source, ignored):
                problems.append(f"{instruction} {source}: left out of the build context by .dockerignore")

    entrypoints = [json.loads(arguments) for name, arguments in instructions if name == "ENTRYPOINT"]
    if not entrypoints or entrypoints[-1] != ["skyport"]:
        problems.append(f'the entrypoint is {entrypoints[-1] if entrypoints else None}, not ["skyport"]')

    health_port = str(CommonSettings.model_fields["health_port"].default)
    healthchecks = [arguments for instruction, arguments in instructions if instruction == "HEALTHCHECK"]
    if not healthchecks or "/healthz" not in healthchecks[-1] or health_port not in healthchecks[-1]:
        problems.append(f"no HEALTHCHECK asks /healthz on the default health port {health_port}")
    return problems


def read_ignore_patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def repo_settings() -> set[str]:
    return setting_names(existing_services(REPO))


def test_compose_file_agrees_with_the_repository(repo_settings: set[str]) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())

    problems = compose_problems(compose, repo=REPO, services=existing_services(REPO), settings=repo_settings)

    assert problems == []


def test_compose_file_runs_the_broker_the_database_and_the_migrations() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]

    assert {"rabbitmq", "postgres", "migrate"} <= services.keys()
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # `migrate` declares the bus topology too.
    assert services["migrate"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_the_rabbitmq_definitions_are_the_topology_for_the_services_user() -> None:
    """Fails when skyport.bus.topology changed and `make schemas` was not run (or the file was edited by hand)."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    user, vhost = user_from_bus_url(compose["x-skyport-environment"]["SKYPORT_BUS_URL"])

    assert json.loads(RABBITMQ_DEFINITIONS.read_text()) == rabbitmq_definitions(vhost=vhost, users=[user])


def test_the_broker_container_loads_the_definitions_at_boot() -> None:
    rabbitmq = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["rabbitmq"]
    mounts = {source: target for source, target, *_ in (str(v).split(":") for v in rabbitmq["volumes"])}
    lines = [line.split("=", 1) for line in RABBITMQ_CONF.read_text().splitlines() if "=" in line and line[0] != "#"]
    settings = {key.strip(): value.strip() for key, value in lines}

    assert settings["load_definitions"] == mounts["./deploy/rabbitmq/definitions.json"]


def test_a_service_container_made_from_the_template_passes(repo_settings: set[str]) -> None:
    # What a service's container will look like when it lands: the template plus `skyport run <name>`.
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    template = compose["x-skyport-service"]
    compose["services"]["notifier"] = {**template, "command": ["run", "notifier"]}
    pretend_existing = existing_services(REPO) | {"notifier"}

    assert compose_problems(compose, repo=REPO, services=pretend_existing, settings=repo_settings) == []
    del compose["services"]["notifier"]
    assert compose_problems(compose, repo=REPO, services=pretend_existing, settings=repo_settings) == [
        "service 'notifier' exists (services/notifier/app.py) but no container runs it"
    ]


BAD_COMPOSE = """
x-variables: &variables
  - SKYPORT_BUS_URL=amqp://rabbitmq/
  - SKYPORT_NOT_A_SETTING=1
x-logging: &logging
  SKYPORT_LOG_LEVEL: INFO
  SKYPORT_LOG_LEVLE: DEBUG
x-base: &base
  image: skyport:test
  build: {context: ., dockerfile: deploy/Dockerfile}
  environment: *variables
services:
  ghost:
    <<: *base
    command: run ghost --verbose
    depends_on:
      nowhere: {condition: service_started}
      postgres: {condition: service_healthy}
    stop_grace_period: 5s
  relay:
    <<: *base
    command: ["run", "relay"]
    environment: {<<: *logging, SKYPORT_SHUTDOWN_TIMEOUT: "5"}
    stop_grace_period: 1m
    volumes: ["./deploy/no-such.conf:/etc/relay.conf:ro"]
  postgres:
    image: postgres:16
  tools:
    build: {context: ., dockerfile: deploy/Missing.Dockerfile}
"""


def test_compose_checker_reports_what_does_not_exist() -> None:
    compose = yaml.safe_load(BAD_COMPOSE)

    problems = compose_problems(
        compose, repo=REPO, services={"catalog", "relay"}, settings=set(CommonSettings.model_fields)
    )

    expected = [
        "runs unknown service 'ghost'",
        "service 'catalog' exists (services/catalog/app.py) but no container runs it",
        "SKYPORT_NOT_A_SETTING is not a Skyport setting",  # list form, through an anchor
        "SKYPORT_LOG_LEVLE is not a Skyport setting",  # mapping form, through a << merge
        "depends on 'nowhere', which is not a service",
        "waits for 'postgres' to be healthy, but it has no health check",
        "builds from deploy/Missing.Dockerfile, which does not exist",
        "mounts ./deploy/no-such.conf, which does not exist",
        "service 'ghost' has stop_grace_period 5s, not more than its shutdown timeout of 20 s",
    ]
    for fragment in expected:
        assert any(fragment in problem for problem in problems), (fragment, problems)
    # Real settings, the service that exists and runs, and a grace period that is long enough are not.
    not_expected = [
        "SKYPORT_BUS_URL",
        "SKYPORT_LOG_LEVEL ",
        "SKYPORT_SHUTDOWN_TIMEOUT",
        "unknown service 'relay'",
        "'relay' has stop_grace_period",
    ]
    for fragment in not_expected:
        assert not any(fragment in problem for problem in problems), (fragment, problems)
    assert len(problems) == len(expected), problems


def test_dockerfile_agrees_with_the_repository(repo_settings: set[str]) -> None:
    problems = dockerfile_problems(
        DOCKERFILE.read_text(),
        repo=REPO,
        settings=repo_settings,
        ignored=read_ignore_patterns(DOCKERIGNORE),
    )

    assert problems == []


def test_dockerfile_checker_reports_what_does_not_exist() -> None:
    dockerfile = """
FROM python:3.11-slim
COPY pyproject.toml uv.lock ./
COPY --from=builder /app/.venv /app/.venv
COPY libs/skyport/no-such-folder \\
     libs/skyport/
ENV SKYPORT_HEALTH_PORTT=8001
ENTRYPOINT ["python", "-m", "skyport"]
"""

    problems = dockerfile_problems(
        dockerfile,
        repo=REPO,
        settings=set(CommonSettings.model_fields),
        ignored=["*.lock", "!pyproject.toml"],
    )

    assert problems == [
        "SKYPORT_HEALTH_PORTT is not a Skyport setting (no settings class has that field)",
        "COPY uv.lock: left out of the build context by .dockerignore",
        "COPY libs/skyport/no-such-folder: no such file in the repository",
        "the entrypoint is ['python', '-m', 'skyport'], not [\"skyport\"]",
        "no HEALTHCHECK asks /healthz on the default health port 8000",
    ]


@pytest.mark.parametrize(
    ("pattern", "path", "ignored"),
    [
        ("**/__pycache__", "__pycache__", True),
        ("**/__pycache__", "libs/skyport/src/skyport/__pycache__", True),
        ("tests", "tests/unit/data/frame.fits", True),
        ("tests", "libs/skyport/src", False),
    ],
)
def test_dockerignore_matching(pattern: str, path: str, ignored: bool) -> None:
    assert dockerignored(path, [pattern]) is ignored


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m30s", 90), ("1h", 3600), ("500ms", 0.5)])
def test_compose_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


def test_a_malformed_duration_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError, match="not a compose duration"):
        duration_seconds("30 seconds")
