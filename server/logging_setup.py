"""The server's log lines: text for people, or JSON lines for log pipelines (``--log-format json``).

A JSON line holds ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, plus the
request fields of the one line per call at debug (``request_id``, ``rpc``, ``status``,
``latency_ms``; ``http_status`` for the PAI JSON API) and ``exception`` when there is one.
Secrets are kept out at the source (nothing logs metadata, tokens, keys or image bytes); as a
second guard every line, in both formats, has ``Bearer``/``Basic`` credentials and
``ak_secret``/``access_key_secret`` values masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes a caller may attach with ``extra=`` that the JSON line carries as fields.
REQUEST_FIELDS = ("request_id", "rpc", "status", "http_status", "latency_ms")
_SECRETS = re.compile(
    r"(?i)((?:bearer|basic)\s+|(?:ak_secret|access_key_secret|secret_access_key|token)\W{0,3}[:=]\W{0,3})"
    r"[A-Za-z0-9+/=._~-]{4,}"
)


def redact(text: str) -> str:
    """Mask credential-looking values (``Bearer abc`` -> ``Bearer ***``); a guard, not the policy."""
    return _SECRETS.sub(lambda m: m.group(1) + "***", text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on odd arguments (a log call must not fail a request)."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # bad %-arguments: keep the template rather than lose the line
            message = str(record.msg)
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(message),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=True, default=str)


def active_settings() -> tuple[str, str]:
    """(level, format) of this process's logging as ``configure_logging`` set it, so that a child process
    (the background embedder) writes its lines alike; ("warning", "text") when it was never called."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_lookalike", False):
            fmt = "json" if isinstance(handler.formatter, JsonFormatter) else "text"
            return logging.getLevelName(root.getEffectiveLevel()).lower(), fmt
    return "warning", "text"


def configure_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) in ``fmt``; replaces handlers set by an earlier call."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_lookalike", False):
            root.removeHandler(old)
    handler._lookalike = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # library warnings become log lines in the same format
    return handler
