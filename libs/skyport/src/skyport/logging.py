"""structlog configured once per process: JSON lines in production, readable lines in development."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(log_format: str = "json", level: str = "INFO") -> None:
    """Route structlog and the standard library's logging through one renderer.

    Safe to call more than once: the last call wins, which lets tests switch formats.
    """
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # aio-pika and aiormq are chatty at INFO about every reconnect attempt, watchfiles about every change;
    # their warnings still show.
    for noisy in ("aio_pika", "aiormq", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # aiormq logs a failed connect as an error, then raises it: the bus reports it once, in one line, at start
    # (skyport.errors.Unreachable), and aio-pika warns about each failed reconnect.
    transport = logging.getLogger("aiormq.connection")
    if not any(isinstance(f, _TransportErrorFilter) for f in transport.filters):
        transport.addFilter(_TransportErrorFilter())
    _configured = True


class _TransportErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A logger with optional bound fields; configures a console default if nothing did yet."""
    if not _configured:
        configure_logging("console", "INFO")
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger.bind(**initial) if initial else logger
