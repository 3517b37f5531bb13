"""Who may do what: the control service's bearer tokens.

The tokens live in a Secret mounted as a directory (one file per key, as the kubelet mounts
it, updated in place when the Secret changes). A key names a role and, after a dot, who holds
the tokens, which is what the Events say did an action:

- ``read`` / ``read.<who>``: list a pool's calls, show a call, follow its events;
- ``control`` / ``control.<who>``: all of that, and act: hang up, transfer, say, instruct,
  mute, unmute, listen, take over, dial.

A file holds one token per line (so a token can be rotated by adding the new one first). A
token shorter than ``MIN_TOKEN_CHARS`` is ignored with a warning. No token or an unknown one:
401; a read token that acts: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("voicepool.control.tokens")

READ, CONTROL = "read", "control"
MIN_TOKEN_CHARS = 16
KEY = re.compile(r"^(read|control)(\.([A-Za-z0-9][A-Za-z0-9_.@-]{0,62}))?$")
#: The mounted directory is looked at again at most this often.
RELOAD_S = 5.0


@dataclass(frozen=True)
class Principal:
    who: str
    role: str  # read | control

    @property
    def may_act(self) -> bool:
        return self.role == CONTROL


def parse(files: Mapping[str, str]) -> dict[bytes, Principal]:
    """{sha256(token): holder} from the Secret's keys and values; other keys are ignored."""
    out: dict[bytes, Principal] = {}
    for key, text in sorted(files.items()):
        m = KEY.match(key)
        if m is None:
            continue
        who = m.group(3) or m.group(1)
        for line in text.splitlines():
            token = line.strip()
            if not token:
                continue
            if len(token) < MIN_TOKEN_CHARS:
                log.warning(
                    "token ignored: shorter than %d characters (key %s)", MIN_TOKEN_CHARS, key
                )
                continue
            out[hashlib.sha256(token.encode()).digest()] = Principal(who, m.group(1))
    return out


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def lookup(known: Mapping[bytes, Principal], header: str | None) -> Principal | None:
    """The holder of the request's bearer token, compared in constant time; None: 401."""
    token = bearer(header)
    if token is None:
        return None
    digest = hashlib.sha256(token.encode()).digest()
    found = None
    for candidate, principal in known.items():
        if hmac.compare_digest(candidate, digest):
            found = principal
    return found


class Tokens:
    """The mounted tokens directory, re-read when it changes (at most every ``RELOAD_S``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._known: dict[bytes, Principal] = {}
        self._stamp: tuple[float, ...] | None = None
        self._checked = 0.0
        self.reload()

    def _stamps(self) -> tuple[float, ...]:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
            return tuple(e.stat().st_mtime for e in entries)
        except OSError:
            return ()

    def reload(self) -> None:
        files: dict[str, str] = {}
        try:
            for entry in self.directory.iterdir():
                if entry.is_file() and not entry.name.startswith("."):
                    files[entry.name] = entry.read_text(errors="replace")
        except OSError as e:
            log.error("tokens directory %s unreadable: %s", self.directory, e)
        self._known = parse(files)
        self._stamp = self._stamps()
        self._checked = time.monotonic()
        if not self._known:
            log.warning("no tokens in %s: every request gets 401", self.directory)

    def who(self, header: str | None) -> Principal | None:
        if time.monotonic() - self._checked > RELOAD_S:
            self._checked = time.monotonic()
            if self._stamps() != self._stamp:
                self.reload()
        return lookup(self._known, header)
