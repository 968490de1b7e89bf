"""Standard logging, one line per event, with a JSON option for log shippers."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc when present)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single JSON line."""
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


#: The levels ``--log-level`` takes (any case).
LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_level(level: str) -> str:
    """``level`` upper-cased, or a :class:`ConfigError` naming the levels there are."""
    from mlsignal.errors import ConfigError

    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ConfigError(f"--log-level {level!r} is not a level; use one of {', '.join(LEVELS)}")
    return name


def configure_logging(level: str = "WARNING", json_format: bool = False) -> None:
    """Configure the root logger to stderr, replacing earlier handlers.

    An unknown ``level`` is a :class:`~mlsignal.errors.ConfigError` (nothing is changed).
    """
    level = check_level(level)
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx/httpcore log every request at INFO: one line per bar is not an event.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
