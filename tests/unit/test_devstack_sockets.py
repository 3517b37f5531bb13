"""Reading /proc/net's socket tables, and which sockets talk to an address off loopback.

Rows are real /proc/net lines (little-endian machine), so the test pins the byte order too.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

import pytest
from voicepool_devstack import sockets

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1
   1: 0100007F:A786 0100007F:1F90 01 00000000:00000000 02:0000001A 00000000     0        0 1002 2
   2: 020200C0:A787 507100CB:01BB 01 00000000:00000000 02:0000001A 00000000     0        0 1003 2
   3: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1004 1
"""
UDP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
  10: 020200C0:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2001 2
  11: 0100007F:9C41 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2002 2
  12: 00000000:9C42 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2003 2
  13: 0100007F:9C43 0101A8C0:0035 01 00000000:00000000 00:00000000 00000000     0        0 2004 2
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000
   1: 0000000000000000FFFF00000100007F:1F92 0000000000000000FFFF00000100007F:B000 01 00000000
"""

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="sample rows of a LE machine")


def by_inode(rows: list[sockets.Socket]) -> dict[int, sockets.Socket]:
    return {s.inode: s for s in rows}


def test_addresses_and_ports_are_decoded() -> None:
    tcp = by_inode(sockets.parse_table("tcp", TCP))
    assert tcp[1001].local == ("127.0.0.1", 8080) and tcp[1001].listening
    assert tcp[1003].local == ("192.0.2.2", 42887)
    assert tcp[1003].remote == ("203.0.113.80", 443) and tcp[1003].connected
    assert str(tcp[1003]) == "tcp 192.0.2.2:42887 -> 203.0.113.80:443 ESTABLISHED"


def test_only_sockets_that_reach_off_loopback_are_named() -> None:
    rows = by_inode(sockets.parse_table("tcp", TCP) + sockets.parse_table("udp", UDP))
    reasons = {inode: sockets.off_loopback(s) for inode, s in rows.items()}
    assert reasons == {
        1001: None,  # listening on loopback
        1002: None,  # a loopback connection
        1003: "peer 203.0.113.80:443 is not loopback",
        1004: None,  # listening on every interface: reported apart, connects nowhere
        2001: "bound to 192.0.2.2:40000, not loopback",  # e.g. a WebRTC host candidate
        2002: None,
        2003: None,
        2004: "peer 192.168.1.1:53 is not loopback",  # a connected UDP socket (DNS)
    }
    assert rows[1004].wildcard and rows[2003].wildcard and not rows[2001].wildcard


def test_ipv6_loopback_and_v4_mapped_loopback_are_loopback() -> None:
    rows = sockets.parse_table("tcp6", TCP6.replace("00000000\n", "00000000 0 0 0 0 0 3001\n"))
    locals_ = [ipaddress.ip_address(s.local[0]) for s in rows]
    assert locals_ == [ipaddress.ip_address("::1"), ipaddress.ip_address("::ffff:127.0.0.1")]
    assert [sockets.off_loopback(s) for s in rows] == [None, None]


def test_audit_names_this_process_socket_off_loopback() -> None:
    """The /proc walk finds a socket of the calling process by its inode."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        owned = [o for o in sockets.owned_sockets([os.getpid()]) if o.socket.local[1] == port]
    assert len(owned) == 1 and owned[0].socket.proto == "udp"
    assert sockets.off_loopback(owned[0].socket) is None
