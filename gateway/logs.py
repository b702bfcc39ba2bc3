"""Logging set-up shared by the gateway's processes.

Why a formatter of our own: log lines may carry text that came from a client (a model name in an error,
an exception message). Escaping control characters keeps one event on one line, so a client cannot
forge log entries with embedded newlines or terminal escape sequences. Traceback lines keep their own
line breaks; only the characters inside them are escaped.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(text: str, keep_newlines: bool) -> str:
    def one(match: re.Match[str]) -> str:
        ch = match.group()
        if keep_newlines and ch == "\n":
            return ch
        return repr(ch)[1:-1]

    return _CONTROL.sub(one, text)


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return _escape(super().formatMessage(record), keep_newlines=False)

    def formatException(self, ei: object) -> str:
        return _escape(super().formatException(ei), keep_newlines=True)  # type: ignore[arg-type]


def configure(level: str, tag: str = "") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
