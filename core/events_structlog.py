"""The configurable event path: a structlog processor chain.

:func:`mmugather.core.events.make_emit` uses it for the console format and
for processors beyond observers; :func:`make_structlog_emit` builds it for
JSON Lines too, the reference the direct writer is measured and tested
against (the same bytes).  Imported only when needed: structlog takes about
a tenth of a second to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any, Literal

import orjson
import structlog
from mmugather.core.events import EventDict, Processor, json_default


class JsonLinesLogger:
    """A structlog logger writing rendered lines (the JSON renderer ends each
    with its newline), unflushed.

    structlog's own BytesLogger flushes per line; a replay writes millions of
    lines, so this one leaves buffering to the file object, and its methods
    are the file's ``write`` itself.
    """

    __slots__ = ("info", "msg")

    def __init__(self, file: IO[bytes]) -> None:
        self.info = self.msg = file.write


class TextLogger:
    """A structlog logger writing rendered text lines (the console format)."""

    __slots__ = ("_write",)

    def __init__(self, file: IO[str]) -> None:
        self._write = file.write

    def msg(self, message: str) -> None:
        self._write(message + "\n")

    info = msg


class JsonLineRenderer(structlog.processors.JSONRenderer):
    """``JSONRenderer(serializer=orjson.dumps, option=OPT_APPEND_NEWLINE)``
    that calls orjson directly instead of spreading its keyword arguments
    again for every event; objects orjson cannot serialize go through the
    same fallback as structlog's (``__structlog__()``, else ``repr()``)."""

    def __init__(self) -> None:
        super().__init__(serializer=orjson.dumps, option=orjson.OPT_APPEND_NEWLINE,
                         default=json_default)

    def __call__(self, logger: Any, name: str, event_dict: EventDict) -> bytes:
        return orjson.dumps(event_dict, json_default, orjson.OPT_APPEND_NEWLINE)


def console_renderer(colors: bool) -> Processor:
    """structlog's console renderer, handed a copy of each event: it pops
    keys from the dict it renders, and observers may keep the original (the
    checker quotes recent events in its reports)."""
    renderer = structlog.dev.ConsoleRenderer(colors=colors, pad_event_to=24, sort_keys=False)

    def render(logger: Any, name: str, event_dict: EventDict) -> Any:
        return renderer(logger, name, dict(event_dict))

    return render


class EventLogger(structlog.BoundLoggerBase):
    """The bound logger of the event stream, the wrapper class of
    :func:`make_structlog_emit`.

    ``info(event, **fields)`` does what structlog's filtering bound logger
    does for an enabled level: the event dict is the bound context, then the
    fields, then ``event``; the processors run in order (one may raise
    ``DropEvent``); the last one's result goes to the wrapped logger's
    ``info``.  It leaves out what events never use and what would cost a
    replay most of its time per event: level filtering (every event is
    wanted), ``%``-interpolation of positional arguments, the logger method
    lookup by name, and the dispatch on the result's type (the renderers here
    return ``bytes`` or ``str``).
    """

    def __init__(self, logger: Any, processors: Iterable[Any], context: dict[str, Any]) -> None:
        super().__init__(logger, processors, context)
        #: the processor chain, fixed for this logger
        self._chain: tuple[Processor, ...] = tuple(processors)
        #: the chain's only processor (the renderer of a plain replay), or None
        self._only: Processor | None = self._chain[0] if len(self._chain) == 1 else None

    def info(self, event: str, **fields: Any) -> Any:
        event_dict: Any = fields
        if self._context:
            event_dict = self._context.copy()
            event_dict.update(fields)
        event_dict["event"] = event
        logger = self._logger
        only = self._only
        try:
            if only is not None:
                return logger.info(only(logger, "info", event_dict))
            for processor in self._chain:
                event_dict = processor(logger, "info", event_dict)
        except structlog.DropEvent:
            return None
        return logger.info(event_dict)

    msg = info


def make_structlog_emit(
    *,
    file: IO[bytes] | IO[str],
    observers: list[Processor] | None = None,
    processors: list[Processor] | None = None,
    fmt: Literal["json", "console"] = "json",
) -> Any:
    """``emit`` through a structlog chain: ``observers``, then ``processors``
    (any structlog processors: they may change, add or drop events), then
    the renderer of ``fmt`` and the logger writing to ``file``."""
    chain: list[Processor] = [*(observers or ()), *(processors or ())]
    logger: Any
    if fmt == "json":
        chain.append(JsonLineRenderer())
        logger = JsonLinesLogger(file)  # type: ignore[arg-type]
    else:
        colors = bool(getattr(file, "isatty", lambda: False)())
        chain.append(console_renderer(colors))
        logger = TextLogger(file)  # type: ignore[arg-type]
    bound = structlog.wrap_logger(
        logger,
        processors=chain,
        wrapper_class=EventLogger,
        cache_logger_on_first_use=True,
    )
    return bound.info
