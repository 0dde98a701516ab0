"""Logs that cannot be forged and carry no keys or e-mail addresses (`takeback api`'s log config).

Every record of the API process goes through `SafeLogFilter`: control characters (CR, LF, ESC,
NUL, U+2028 ...) in a message or its arguments are escaped, so a path with `%0d%0a` cannot start a
line of its own; API keys, bearer tokens, webhook signatures and e-mail addresses are masked; and
a traceback's lines are indented under their record, so none of them reads as a record.
"""

from __future__ import annotations

import copy
import logging
import re

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
SECRETS = (
    (re.compile(r"\b(tbk_[a-z]{2,8})_[A-Za-z0-9_\-]{8,}"), r"\1_<redacted>"),  # our API keys
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), r"\1<redacted>"),
    (re.compile(r"\b(v1=)[0-9a-fA-F]{16,}"), r"\1<redacted>"),  # webhook signatures
    (re.compile(r"(?i)\b(SG\.)[A-Za-z0-9_\-.]{16,}"), r"\1<redacted>"),  # SendGrid keys
    (re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"), "<email>"),
)
# One cheap search says whether a text needs any of the above (most log lines do not).
SUSPECT = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029@]|tbk_|[Bb][Ee][Aa][Rr][Ee][Rr]|v1=|SG\.")
TRACEBACK_INDENT = "    | "


def _escape(match: re.Match) -> str:
    char = match.group()
    return {"\r": "\\r", "\n": "\\n", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def clean(text: str) -> str:
    """One line, nothing secret or personal."""
    if not SUSPECT.search(text):
        return text
    for pattern, replacement in SECRETS:
        text = pattern.sub(replacement, text)
    return CONTROL.sub(_escape, text)


def _clean_arg(value):
    if isinstance(value, (int, float)) or value is None:
        return value  # %d and %f keep their numbers (uvicorn's access log formats the status with %d)
    return clean(str(value))


class SafeLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = clean(record.msg)
        else:
            record.msg = clean(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(_clean_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {name: _clean_arg(arg) for name, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = "\n".join(TRACEBACK_INDENT + clean(line) for line in record.exc_text.splitlines())
        if record.stack_info:
            record.stack_info = "\n".join(TRACEBACK_INDENT + clean(line) for line in record.stack_info.splitlines())
        return True


class RateLimitedAccessFilter(logging.Filter):
    """At most one access-log line a second for 429 answers: a flood that is refused does not also
    flood the log (the suppressed count goes with the next one logged)."""

    def __init__(self, name: str = "", clock=None):
        super().__init__(name)
        import time

        self.clock = clock or time.monotonic
        self.last = float("-inf")
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5 and args[4] == 429):
            return True
        now = self.clock()
        if now - self.last < 1.0:
            self.suppressed += 1
            return False
        self.last = now
        if self.suppressed:
            record.args = (*args[:2], f"{args[2]} (and {self.suppressed} more 429s not logged)", *args[3:])
            self.suppressed = 0
        return True


def log_config() -> dict:
    """uvicorn's own logging config, with the filter on every handler and the application's loggers
    (takeback, temporalio, the root) sent through the same handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["safe"] = {"()": "api.logsafe.SafeLogFilter"}
    config["filters"]["access_429"] = {"()": "api.logsafe.RateLimitedAccessFilter"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "safe"]
    config["handlers"]["access"]["filters"].insert(0, "access_429")
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    config["loggers"]["takeback"] = {"level": "INFO"}
    return config
