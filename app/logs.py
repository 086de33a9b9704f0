"""Log formatting for every logger in the process (the app's access and error logs, uvicorn's, asyncio's): text lines
or JSON lines. A client writes some of what is logged (the path, the model name, text in an error message), so
every control character it could use to forge a line or fool a terminal (CR, LF, other C0 and C1 controls, U+2028/9,
lone surrogates) is written escaped, in both formats; a record is always exactly one line, apart from a text-format
traceback, whose structure is the code's and whose exception messages are escaped too."""

from __future__ import annotations

import json
import logging
import re
import traceback
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# C0, DEL, C1, the Unicode line and paragraph separators, and lone surrogates (not text, and unwritable as UTF-8)
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
FIELDS = "fields"  # `extra={"fields": {...}}`: a record's structured fields (the access log's), for JSON lines
CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """`\\n` for a newline, `\\x1b` for ESC, `\\ud800` for a lone surrogate: visible, and never a line break."""
    return UNSAFE.sub(_escaped, text)


def logfmt(fields: dict[str, Any]) -> str:
    """`key=value ...`, a value quoted (backslash and quote escaped) when it holds a space, a quote, a backslash or
    `=`, so a client's `/a status=200` path cannot pass for a field of its own. Controls are escaped by `escape`."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if not text or any(c in text for c in ' "=\\'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def format_exception(exc: BaseException) -> str:
    """Python's traceback, chained exceptions included, with each exception's message escaped: the stack is the code's
    own text, the message may carry a client's."""
    te: traceback.TracebackException | None = traceback.TracebackException.from_exception(exc)
    parts = []
    while te is not None:
        stack = "Traceback (most recent call last):\n" + "".join(te.stack.format()) if te.stack else ""
        parts.append(stack + "".join(escape(line.rstrip("\n")) + "\n" for line in te.format_exception_only()))
        if te.__cause__ is not None:
            parts.append(CAUSE)
            te = te.__cause__
        elif te.__context__ is not None and not te.__suppress_context__:
            parts.append(CONTEXT)
            te = te.__context__
        else:
            te = None
    return "".join(reversed(parts)).rstrip("\n")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802
        return format_exception(ei[1]) if ei[1] is not None else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return escape(stack_info)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, then the record's fields (or its message) and any traceback.
    ASCII-only JSON: every control character, separator and surrogate is a `\\u` escape."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        fields = getattr(record, FIELDS, None)
        if fields is not None:
            out.update({k: v for k, v in fields.items() if v is not None})
        else:
            out["message"] = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            out["exception"] = "".join(traceback.format_exception(record.exc_info[1]))
        return json.dumps(out, ensure_ascii=True, default=str)


def configure(json_lines: bool) -> None:
    """The root handler on stderr, with our formatter; every library's logger propagates to it."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
