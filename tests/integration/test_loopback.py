"""The stack talks to itself on loopback: while a call runs, no socket of its processes reaches
an address off 127.0.0.1.

The whole local stack (etcd, kube-apiserver, controller-manager, scheduler, kwok,
livekit-server, redis, livekit-sip, Prometheus), a real worker and a WebRTC caller in this
process; the sockets are read from /proc (``voicepool_devstack.sockets``) in the middle of the
call. Where a library offers no way to stay on loopback the socket is excused with the reason
(``loopback.EXCUSED``), and listed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from voicepool_devstack.testing import Environment

from . import loopback
from .voice_scenarios import caller
from .worker_harness import WorkerProcess, agent_name

pytestmark = [pytest.mark.cluster, pytest.mark.livekit]


@pytest.mark.timeout(300)
async def test_a_call_keeps_every_socket_of_the_stack_on_loopback(
    stack_env: Environment, tmp_path: Path
) -> None:
    if not stack_env.pids:
        pytest.skip("needs the local stack's own processes (not an external cluster/LiveKit)")
    lk = stack_env.livekit
    w = WorkerProcess(lk, tmp_path, agent=agent_name())
    try:
        w.wait_ready(timeout=120)
        c = caller(w, lk.url, lk.api_key, lk.api_secret, "loopback")
        try:
            await c.start(join_within=60)
            assert await c.wait_greeting(within=60), f"no greeting\n{w.tail()}"
            groups = [*stack_env.pids.values(), w.proc.pid]
            verdict = await asyncio.to_thread(loopback.check, groups, [os.getpid()])
        finally:
            await c.hangup()
    finally:
        w.stop()
    print("\n" + verdict.report())
    # The audit saw the call: livekit-server's media sockets and the caller's, and the servers.
    for server in ("livekit-server", "kube-apiserver", "etcd", "redis-server", "livekit-sip"):
        assert verdict.sockets_of(server), f"no socket of {server} seen:\n{verdict.report()}"
    media = [o for o in verdict.sockets_of("livekit-server") if o.socket.proto == "udp"]
    assert media, f"livekit-server holds no UDP (media) socket during the call:\n{verdict.report()}"
    assert not verdict.failures, "sockets off loopback:\n" + verdict.report()
