"""Operational logging: structlog JSON, one event per line, never personal data.

Log ids, link tokens, counts and reason codes. Never an identifier, a name, a
narrative or any summary content: those belong only in the encrypted payload
and the node's audit log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import orjson
import structlog

from linkage.refusals import bounded

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


_generation = 0  # bumped by configure(): loggers built before it are rebuilt


def configure(level: str = "info", stream: TextIO | None = None, **context: str) -> None:
    """JSON lines on `stream` (stderr by default), with `context` bound to every event."""
    global _generation
    _generation += 1
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _render_json,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _AsJson)]:
        root.removeHandler(handler)
    root.addHandler(_AsJson(logging.WARNING))


class _AsJson(logging.Handler):
    """What Python and its libraries say through `logging` (asyncio, gRPC), as JSON lines like
    the rest, at their own level, the message cut short: without it they reach standard error
    as plain text, a traceback over many lines, which no reader of JSON lines can take."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            said = get(record.name)
            method = getattr(said, record.levelname.lower(), said.error)
            method("python.log", logger=record.name, message=bounded(record.getMessage()), exc_info=record.exc_info)
        except Exception:
            self.handleError(record)


def _render_json(_logger: object, _method: str, event: MutableMapping[str, Any]) -> str:
    """One JSON line with sorted keys. orjson takes a third of the json module's time, paid
    on each message's log line; what it cannot write (an integer past 64 bits, say) falls
    back to the json module, so that logging never raises."""
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(event, default=repr, sort_keys=True)


class _Logger:
    """A module's logger, built once per configuration. structlog's own lazy proxy
    rebuilds the bound logger on every call, a cost paid per message on hot paths
    even for filtered-out debug lines."""

    __slots__ = ("_bound", "_generation", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._generation = -1
        self._bound: structlog.typing.FilteringBoundLogger | None = None

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):  # not a logging method (and never recurse on an unset slot)
            raise AttributeError(method)
        if self._bound is None or self._generation != _generation:
            self._bound = structlog.get_logger(self._name).bind()
            self._generation = _generation
        return getattr(self._bound, method)


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return cast(structlog.typing.FilteringBoundLogger, _Logger(name))
