"""The check that the stack talks to itself on loopback, for the tests that run a call.

``check`` audits the sockets of the given process groups (``voicepool_devstack.sockets``) and
fails naming every socket that reaches an address off 127.0.0.1 -- except where the library
that opened it offers no way to keep it on loopback (``EXCUSED``, each with its reason).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from voicepool_devstack import sockets

#: (command pattern, why its unconnected sockets are bound to the machine's own address):
#: WebRTC clients whose libraries gather host candidates on every non-loopback interface (UDP
#: sockets, and libwebrtc's passive ICE-TCP listeners) and let no caller filter them. Their
#: peer is livekit-server on 127.0.0.1; a connected socket off loopback is never excused.
EXCUSED: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"python|pytest|voicepool-worker"),
        "libwebrtc (livekit's Python SDK: the worker, the test caller) gathers host candidates "
        "(UDP, and passive ICE-TCP listeners) on every interface but loopback; the SDK exposes "
        "no network filter",
    ),
    (
        re.compile(r"^livekit-sip\b"),
        "livekit-sip's WebRTC leg: server-sdk-go gives pion its default interfaces "
        "(loopback excluded), with no setting to change them",
    ),
)


@dataclass
class Verdict:
    audit: sockets.Audit
    failures: list[sockets.Finding]
    excused: list[tuple[sockets.Finding, str]]

    def report(self) -> str:
        lines = [f"{len(self.audit.owned)} sockets of {len(self.processes())} processes"]
        lines += [f"  off loopback: {f}" for f in self.failures]
        lines += [f"  excused: {f} -- {why}" for f, why in self.excused]
        lines += [f"  every interface: {o}" for o in self.audit.wildcard]
        return "\n".join(lines)

    def processes(self) -> set[str]:
        return {o.command for o in self.audit.owned}

    def sockets_of(self, pattern: str) -> list[sockets.Owned]:
        return [o for o in self.audit.owned if re.search(pattern, o.command)]


def _excuse(finding: sockets.Finding) -> str | None:
    sock = finding.owned.socket
    if sock.connected:  # a TCP socket that is not listening, or a connect()ed UDP socket
        return None
    for pattern, why in EXCUSED:
        if pattern.search(finding.owned.command):
            return why
    return None


def check(groups: Iterable[int], pids: Iterable[int] = ()) -> Verdict:
    """Audit now; the caller asserts ``not verdict.failures`` (and prints ``report()``)."""
    result = sockets.audit(groups, pids)
    failures, excused = [], []
    for finding in result.findings:
        why = _excuse(finding)
        if why is None:
            failures.append(finding)
        else:
            excused.append((finding, why))
    return Verdict(result, failures, excused)
