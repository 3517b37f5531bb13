"""Structured JSON logs: one object per line with room, session (job id) and participant.

Job processes attach those three through ``JobContext.log_context_fields``; livekit-agents
ships their records to the main process, which renders every line here. Lines that belong to
no call (worker lifecycle) carry the keys with ``null`` so every line has the same shape.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

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


def setup(level: str, static: dict[str, str] | None = None) -> None:
    """Replace any handlers with one JSON handler on stdout."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(static))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("asyncio", "urllib3", "kubernetes_asyncio", "aiohttp.access", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("livekit").setLevel(level)
    logging.getLogger("livekit.agents").setLevel(level)
