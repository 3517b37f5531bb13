"""Loopback ports for the stack's servers, handed out once per machine.

Asking the kernel for port 0 and passing the number on to a server that binds it seconds
later races every other socket on the machine: the kernel hands the same ephemeral ports to
outgoing connections and to other ``bind(0)`` callers (two test lanes starting stacks side by
side, a worker's HTTP server). CI saw it: kwok failed "bind: address already in use" on a port
``free_port`` had returned moments before.

So ports come from a band below the kernel's ephemeral range (``ip_local_port_range``), which
the kernel never picks on its own, and each one handed out is claimed for the life of the
claiming process with a byte-range lock on a per-user file: the lock goes when the process
does (a killed test run leaves nothing behind), and no other process using this module gets
the port while it holds it. ``VOICEPOOL_PORT_RANGE=first-last`` sets the band by hand.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

from .errors import DevstackError

PORT_RANGE_ENV = "VOICEPOOL_PORT_RANGE"
DEFAULT_BAND = (15000, 30000)  # below Linux's default ephemeral 32768 and NodePorts (30000+)
MIN_BAND = 2000
ATTEMPTS = 400

_lock = threading.Lock()
_claimed: set[int] = set()
_claims_fd: int | None = None


def band(ephemeral: tuple[int, int], wanted: str | None = None) -> tuple[int, int]:
    """The ports ``[first, last)`` to hand out: ``wanted`` ("first-last", inclusive) when
    given, else the default band cut to end where the kernel's ephemeral range starts (or,
    if that leaves too few, the ports above it)."""
    if wanted:
        try:
            first_s, last_s = wanted.split("-")
            first, last = int(first_s), int(last_s)
        except ValueError:
            raise DevstackError(
                f"{PORT_RANGE_ENV}={wanted!r}: want two port numbers, e.g. 15000-30000"
            ) from None
        if not 1024 <= first <= last <= 65535:
            raise DevstackError(f"{PORT_RANGE_ENV}={wanted!r}: want 1024 <= first <= last <= 65535")
        return first, last + 1
    low, high = ephemeral
    first, last = DEFAULT_BAND[0], min(DEFAULT_BAND[1], low)
    if last - first >= MIN_BAND:
        return first, last
    if 65535 - high >= MIN_BAND:
        return high + 1, 65536
    raise DevstackError(
        f"the kernel's ephemeral port range {low}-{high} leaves no band of {MIN_BAND} ports "
        f"for the stack's servers; set {PORT_RANGE_ENV}=first-last"
    )


def _ephemeral() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _claim(port: int) -> bool:
    """Lock byte ``port`` of the per-user claims file for this process; False if another
    process holds it. (POSIX record locks: one fd kept open, released when the process ends.)"""
    global _claims_fd
    if _claims_fd is None:
        path = Path(tempfile.gettempdir()) / f"voicepool-ports-{os.getuid()}.lock"
        _claims_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(_claims_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False
    return True


def _release(ports: list[int]) -> None:
    for port in ports:
        if _claims_fd is not None:
            fcntl.lockf(_claims_fd, fcntl.LOCK_UN, 1, port)


def port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` on loopback now (SO_REUSEADDR, like Go's:
    TIME_WAIT is ok): for a fixed port a server wants (the apiserver on 443)."""
    return _bindable(port, udp=False, reuse=True)


def _bindable(port: int, udp: bool, reuse: bool = False) -> bool:
    """Whether nothing holds ``port`` now: TCP on loopback (without ``reuse`` a port in
    TIME_WAIT counts as taken), and UDP on every interface when ``udp``."""
    kinds = [(socket.SOCK_STREAM, "127.0.0.1")] + ([(socket.SOCK_DGRAM, "0.0.0.0")] if udp else [])
    for kind, host in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(count: int = 1, *, udp: bool = False) -> int:
    """The first of ``count`` consecutive ports, free now and claimed for this process.

    ``udp``: free for UDP too (SIP listens on both; RTP and WebRTC media ranges are UDP).
    """
    first, last = band(_ephemeral(), os.environ.get(PORT_RANGE_ENV))
    if last - first < count:
        raise DevstackError(f"port band {first}-{last - 1} is smaller than {count} ports")
    with _lock:
        for _ in range(ATTEMPTS):
            start = random.randrange(first, last - count + 1)
            run = range(start, start + count)
            if any(p in _claimed for p in run):
                continue
            got: list[int] = []
            for port in run:
                if not _claim(port):
                    break
                got.append(port)
                if not _bindable(port, udp):
                    break
            else:
                _claimed.update(got)
                return start
            _release(got)
        raise DevstackError(
            f"found no {count} free port(s) in {first}-{last - 1} after {ATTEMPTS} tries "
            f"({len(_claimed)} claimed by this process); set {PORT_RANGE_ENV} to a wider band"
        )


def free_port(*, udp: bool = False) -> int:
    """A loopback port nobody listens on, that no other stack process will be handed."""
    return free_ports(1, udp=udp)
