"""Structured JSON logs: one object per line with room, session (job id) and participant.

Job processes attach those three through ``JobContext.log_context_fields``; livekit-agents
ships their records to the main process, which renders every line here. Lines that belong to
no call (worker lifecycle) carry the keys with ``null`` so every line has the same shape.

With ``maskPhoneNumbers`` on, one filter on that one handler masks every number in every
record: the message, every extra (nested ones too), the exception text, and the framework's
own records (livekit-agents logs each job's room name, ``call-_+15550100001_...`` for SIP
calls). Numbers as numbers (durations, unix times) are left alone: only text is masked.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from voicepool_contract.phone import mask_numbers_in

CONTEXT_KEYS = ("room", "session", "participant")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, str] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            out[key] = getattr(record, key, None)
        out.update(self._static)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_numbers_in(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_masked(v) for v in value)
    return value


class MaskNumbers(logging.Filter):
    """Masks phone numbers in a record before any handler formats it (see the module doc)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_numbers_in(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _masked(value))
        if record.exc_info:
            record.exc_text = mask_numbers_in(self._formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask_numbers_in(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_numbers_in(record.stack_info)
        return True


def setup(level: str, static: dict[str, str] | None = None, *, mask_numbers: bool = True) -> None:
    """Replace any handlers with one JSON handler on stdout (masking numbers unless told not)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(static))
    if mask_numbers:
        handler.addFilter(MaskNumbers())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("asyncio", "urllib3", "kubernetes_asyncio", "aiohttp.access", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("livekit").setLevel(level)
    logging.getLogger("livekit.agents").setLevel(level)
