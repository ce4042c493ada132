"""Structured logging: JSON lines off a TTY, readable text on one.

Pass context as `extra={...}`; the JSON formatter writes every extra field.
The fields an operator follows an event by: a line about one event carries
`event_id`, `event_type`, `topic`, `partition` and `offset`; a line about a
batch carries `offsets` (`offset_ranges`). tests/integration/test_prometheus.py
checks the relays' and the consumer's lines of a real run.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import sys
from collections.abc import Iterable
from typing import Any

import orjson

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def stderr_handler(fmt: str = "auto") -> logging.Handler:
    """JSON lines (fmt "json", or "auto" off a TTY) or readable text on stderr."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if use_json else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    return handler


def logging_config(level: str = "INFO", fmt: str = "auto") -> dict[str, Any]:
    """The logging setup as a `logging.config.dictConfig` dict (uvicorn applies it in each worker)."""
    root_level = logging.getLevelName(level.upper())
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"()": f"{__name__}.stderr_handler", "fmt": fmt}},
        "root": {"level": root_level, "handlers": ["stderr"]},
        # aiokafka is chatty at INFO about every coordinator hiccup.
        "loggers": {"aiokafka": {"level": max(logging.WARNING, root_level)}},
    }


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    logging.config.dictConfig(logging_config(level, fmt))


def offset_ranges(ranges: Iterable[tuple[str, int, int, int]]) -> dict[str, object]:
    """Log fields naming what a batch holds, from (topic, partition, first offset, last offset):
    `{"offsets": {"order.events[0]": "120-159", ...}}`."""
    return {"offsets": {f"{topic}[{partition}]": f"{first}-{last}" for topic, partition, first, last in ranges}}
