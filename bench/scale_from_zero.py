"""Scale from zero on the real local stack: a LiveKit room is created -> the operator's pod.

A pool with minReplicas 0 and no warm pool has no pods. A room is created through LiveKit's
RoomService with metadata naming the pool's agent; livekit-server posts `room_started` to the
operator's webhook (signed; verified with livekit-api), and the operator creates a pod.
Measured per sample: from just before the CreateRoom call to the pod's ADDED event in a
watch (room API -> livekit-server -> webhook -> plan -> create -> apiserver -> our watch).
The room is then deleted and the pool scales back to zero before the next sample.

    python bench/scale_from_zero.py [--samples 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kubernetes import client, config
from livekit import api as lkapi
from operator_reaction import PodWatch, pct
from voicepool_contract import ROOM_AGENT_KEY
from voicepool_devstack.livekit import LiveKitInfo
from voicepool_devstack.testing import create_namespace, environment, wait_for

from tests.integration.operator_harness import (
    Cluster,
    OperatorProcess,
    install_crds,
    zero_pool_manifest,
)

AGENT = "zero-bench"


async def room(lk: LiveKitInfo, name: str, create: bool) -> None:
    async with lkapi.LiveKitAPI(lk.http_url, lk.api_key, lk.api_secret) as api:
        if create:
            meta = json.dumps({ROOM_AGENT_KEY: AGENT})
            await api.room.create_room(lkapi.CreateRoomRequest(name=name, metadata=meta))
        else:
            await api.room.delete_room(lkapi.DeleteRoomRequest(room=name))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=10)
    args = ap.parse_args()
    print("[bench] starting the local stack (apiserver, kwok, livekit-server) ...", flush=True)
    with environment() as env:
        if not env.livekit.webhook_port:
            print("this LiveKit server posts no webhooks to the operator (external?)")
            return 1
        cfg = client.Configuration()
        config.load_kube_config(config_file=env.kubeconfig, client_configuration=cfg)
        api = client.ApiClient(cfg)
        core = client.CoreV1Api(api)
        install_crds(api)
        ns = "zero"
        create_namespace(core, ns)
        op = OperatorProcess(env.kubeconfig, livekit=env.livekit)
        op.start()
        try:
            cl = Cluster(api, ns)
            cl.livekit_secret(env.livekit)  # the pool's own key signs the webhook events
            cl.create_pool(zero_pool_manifest("zero", AGENT))
            watcher = PodWatch(core, ns)
            watcher.start()
            times: list[float] = []
            for i in range(args.samples):
                wait_for(lambda: not cl.pods("zero", include_terminating=True), timeout=60)
                known = set(watcher.added)
                name = f"call-{i}"
                t0 = time.monotonic()
                asyncio.run(room(env.livekit, name, create=True))
                new = wait_for(
                    lambda known=known, t0=t0: watcher.new_added(known, t0),
                    timeout=30,
                    interval=0.005,
                    what="the operator to create a pod for the waiting room",
                )
                times.append(watcher.added[new] - t0)
                asyncio.run(room(env.livekit, name, create=False))
            watcher.stop.set()
        finally:
            op.stop()
    ms = [t * 1000 for t in times]
    print()
    print(f"Scale from zero, {len(ms)} samples (minReplicas 0, no warm pool, kwok nodes)")
    print(f"{'metric':44} {'p50':>9} {'p90':>9} {'max':>9}")
    print(
        f"{'room created -> pod created (ms)':44} {pct(ms, 0.5):9.1f} {pct(ms, 0.9):9.1f}"
        f" {max(ms):9.1f}"
    )
    print(
        "  taken from just before CreateRoom (LiveKit RoomService) to the pod's ADDED event in"
        " a pod watch; the path is livekit-server's signed room_started webhook -> operator"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
