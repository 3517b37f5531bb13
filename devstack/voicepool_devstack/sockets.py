"""Which sockets of the local stack talk to an address off loopback.

The stack is meant to talk to itself on 127.0.0.1 only. ``audit`` reads what ``ss -tunp``
would show, straight from /proc: the processes of the given process groups (every server, the
workers and the phone run in their own), their sockets (``/proc/<pid>/fd``) and those sockets'
rows in ``/proc/net/{tcp,tcp6,udp,udp6}``. A socket is off loopback when its peer is not a
loopback address (a TCP connection, a connected UDP socket) or when it is bound to one
specific address that is not loopback (an unconnected UDP socket that sends from it, as WebRTC
candidates do). Sockets bound to every interface (0.0.0.0, ::) connect nowhere by themselves;
they are listed apart (``Socket.wildcard``).

``parse_table`` and ``off_loopback`` are pure (tested on sample /proc lines).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: /proc/net/tcp's state column: 0A is LISTEN, 01 ESTABLISHED (include/net/tcp_states.h).
TCP_LISTEN = "0A"
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}
TABLES = ("tcp", "tcp6", "udp", "udp6")


@dataclass(frozen=True)
class Socket:
    proto: str  # tcp, tcp6, udp, udp6
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str  # /proc's hex state
    inode: int

    @property
    def listening(self) -> bool:
        return self.proto.startswith("tcp") and self.state == TCP_LISTEN

    @property
    def connected(self) -> bool:
        """A peer is set: a TCP socket that is not listening, or a connect()ed UDP socket."""
        if self.proto.startswith("tcp"):
            return not self.listening
        return self.remote[1] != 0

    @property
    def wildcard(self) -> bool:
        """Bound to every interface (it reaches nothing by itself; a listener is reachable)."""
        return ipaddress.ip_address(self.local[0]).is_unspecified

    def __str__(self) -> str:
        state = TCP_STATES.get(self.state, self.state) if self.proto.startswith("tcp") else ""
        peer = f" -> {_join(self.remote)}" if self.connected else ""
        return f"{self.proto} {_join(self.local)}{peer} {state}".rstrip()


def _join(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def decode_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080): the address is printed as 32-bit words in
    the host's byte order, the port as a plain number."""
    hex_ip, hex_port = text.split(":")
    raw = bytes.fromhex(hex_ip)
    if sys.byteorder == "little":  # network order is big-endian: turn every word around
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    packed = raw
    ip = ipaddress.ip_address(packed)
    return str(ip), int(hex_port, 16)


def parse_table(proto: str, text: str) -> list[Socket]:
    """The rows of one /proc/net/<proto> table."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        out.append(
            Socket(
                proto=proto,
                local=decode_address(fields[1]),
                remote=decode_address(fields[2]),
                state=fields[3],
                inode=int(fields[9]),
            )
        )
    return out


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def off_loopback(sock: Socket) -> str | None:
    """Why ``sock`` talks to an address off loopback, or None when it does not."""
    if sock.connected and not _loopback(sock.remote[0]):
        return f"peer {_join(sock.remote)} is not loopback"
    if not sock.wildcard and not _loopback(sock.local[0]):
        return f"bound to {_join(sock.local)}, not loopback"
    return None


# -- /proc -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owned:
    """A socket and the process that holds it."""

    pid: int
    command: str
    socket: Socket

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid}): {self.socket}"


@dataclass(frozen=True)
class Finding:
    owned: Owned
    reason: str

    def __str__(self) -> str:
        return f"{self.owned}: {self.reason}"


def _stat_groups(pid: int) -> tuple[int, int] | None:
    """(process group, session) of ``pid``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3])


def command(pid: int) -> str:
    """The process's command line, short (what ``ps`` would show)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    words[0] = os.path.basename(words[0])
    return " ".join(words)[:120]


def group_members(groups: Iterable[int]) -> list[int]:
    """Every process whose process group or session is one of ``groups``."""
    wanted = set(groups)
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        ids = _stat_groups(int(entry.name))
        if ids is not None and (ids[0] in wanted or ids[1] in wanted):
            members.append(int(entry.name))
    return sorted(members)


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tables(pid: int) -> dict[int, Socket]:
    """The sockets of ``pid``'s network namespace, by inode."""
    by_inode = {}
    for proto in TABLES:
        try:
            text = Path(f"/proc/{pid}/net/{proto}").read_text()
        except OSError:
            continue
        for sock in parse_table(proto, text):
            by_inode[sock.inode] = sock
    return by_inode


def owned_sockets(pids: Iterable[int]) -> Iterator[Owned]:
    """The TCP and UDP sockets each of ``pids`` holds."""
    tables: dict[int, Socket] | None = None
    for pid in pids:
        inodes = _socket_inodes(pid)
        if not inodes:
            continue
        if tables is None:
            tables = _tables(pid)
        name = command(pid)
        for inode in sorted(inodes):
            sock = tables.get(inode)
            if sock is not None:
                yield Owned(pid, name, sock)


@dataclass
class Audit:
    """Every socket of the audited processes, and which of them reach off loopback."""

    owned: list[Owned]
    findings: list[Finding]

    @property
    def wildcard(self) -> list[Owned]:
        """Sockets bound to every interface (listed apart: they connect nowhere by themselves)."""
        return [o for o in self.owned if o.socket.wildcard]


def audit(groups: Iterable[int], pids: Iterable[int] = ()) -> Audit:
    """The sockets of the processes in ``groups`` (process groups or sessions) and ``pids``."""
    members = sorted({*group_members(groups), *pids})
    owned = list(owned_sockets(members))
    findings = []
    for o in owned:
        reason = off_loopback(o.socket)
        if reason is not None:
            findings.append(Finding(o, reason))
    return Audit(owned, findings)
