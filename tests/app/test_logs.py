"""No forged log lines: what a client writes (the path, `model`, input text with --log-inputs, an exception's
message) reaches the logs escaped, in the text and the JSON format, access log and error log alike."""

from __future__ import annotations

import json
import logging
import re
import socket

import pytest

from app.logs import JsonFormatter, TextFormatter, escape
from tests.app.conftest import server_process
from tests.conftest import NOMIC

# CR, LF, ESC, NUL, DEL, NEL (C1), U+2028, and a lone surrogate: each ends a line or rewrites a terminal somewhere
HOSTILE = "a\r\nb\x1b[31mc\x00d\x7fe\x85f\u2028g\ud800h"
FORGED = "\n2026-01-01 00:00:00,000 INFO app.access: forged"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
PATH = b"/x%0a2026-01-01%2000:00:00,000%20INFO%20app.access:%20forged%0d%1b[31m%c2%85%e2%80%a8"


def record(msg: str, *args, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("app", logging.ERROR, __file__, 1, msg, args, exc_info)


def raised(message: str) -> BaseException:
    try:
        try:
            raise KeyError(message)
        except KeyError as inner:
            raise ValueError(message) from inner
    except ValueError as exc:
        return exc


def no_raw_controls(text: str) -> bool:
    return not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]", text)


def test_escape_makes_every_control_visible():
    assert escape(HOSTILE) == "a\\r\\nb\\x1b[31mc\\x00d\\x7fe\\x85f\\u2028g\\ud800h"
    assert escape("plain text, é and 漢字") == "plain text, é and 漢字"


def test_text_format_keeps_a_record_on_its_line_and_escapes_exception_messages():
    line = TextFormatter().format(record("request %s failed: %s", "id-1", HOSTILE + FORGED))
    assert "\n" not in line and no_raw_controls(line) and "forged" in line
    with_traceback = TextFormatter().format(record("request failed", exc=raised(HOSTILE + FORGED)))
    lines = with_traceback.splitlines()
    assert no_raw_controls(with_traceback)
    assert lines[1] == "Traceback (most recent call last):" and "direct cause" in with_traceback
    assert not any(line.startswith(("2026-01-01", "b\x1b")) for line in lines)
    assert sum("forged" in line for line in lines) == 2  # the KeyError's message and the ValueError's, each on its line
    assert all(line.startswith(("KeyError: ", "ValueError: ")) for line in lines if "forged" in line)


def test_json_format_is_one_ascii_object_per_record():
    for rec in (record("%s", HOSTILE + FORGED), record("failed", exc=raised(HOSTILE))):
        line = JsonFormatter().format(rec)
        assert "\n" not in line and line.isascii()
        parsed = json.loads(line)
        assert parsed["level"] == "ERROR" and parsed["logger"] == "app"
    assert parsed["exception"].splitlines()[0] == "Traceback (most recent call last):"


def send(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def hostile_requests(port: int) -> list[bytes]:
    """A forged line in the path (a 404, logged without any key), and in `model` and `input` as JSON escapes."""
    answers = [send(port, b"GET " + PATH + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")]
    for field in ("model", "input"):
        body = json.dumps({"input": "x", field: HOSTILE + FORGED}).encode()  # ensure_ascii: \ud800 as an escape
        head = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        answers.append(send(port, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body))
    return answers


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_forged_line_from_a_real_server(log_format):
    flags = ["--log-json"] if log_format == "json" else []
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--log-inputs", *flags) as server:
        answers = hostile_requests(server.port)
        log = server.output_containing("forged")
        server.stop()
        log = server.output()
    assert answers[0].startswith(b"HTTP/1.1 404")
    assert no_raw_controls(log), [line for line in log.splitlines() if not no_raw_controls(line)]
    lines = log.splitlines()
    assert not any(line.startswith(("2026-01-01", "FORGED", "b\\x1b")) for line in lines)
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line, errors and uvicorn's included, is JSON
        paths = [r["path"] for r in records if r.get("logger") == "app.access" and r["path"].startswith("/x")]
        assert paths == ["/x" + FORGED + "\r\x1b[31m\x85\u2028"]  # the exact path, decodable
        assert all(line.isascii() for line in lines)
    else:  # each line is a record, or a line of a traceback (frames indented, exception lines escaped)
        traceback_line = re.compile(r"^( |Traceback |During handling|The above exception|[\w.]+(: |$)|$)")
        assert all(TIMESTAMP.match(line) or traceback_line.match(line) for line in lines)
        (access,) = [line for line in lines if "app.access" in line and "path=\"/x" in line]
        assert r'path="/x\n2026-01-01 00:00:00,000 INFO app.access: forged\r\x1b[31m\x85\u2028"' in access
